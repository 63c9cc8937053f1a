"""The status page (`/ui/` on the gateway): every model's phase, replicas, queue, last cold start, the
warm pool's decisions and plots of the last hours and days, refreshed live.

Server-rendered HTML and SVG with one small inline script that polls the live part; nothing is
built or fetched from elsewhere. Everything it shows is read through `warmpool` (`StatusBoard`,
`Timeline`).
"""

from queue_gateway.ui.app import build_ui_app

__all__ = ["build_ui_app"]
