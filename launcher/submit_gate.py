"""The launcher's side of the cap on failed submissions across models (`policies.submit_cap`).

It remembers when starts failed (in memory: a new leader starts with an empty window, which at
worst lets one more window of refusals through) and tells the events stream once per model it
holds back, until the window has room again.
"""

from __future__ import annotations

from launcher.history import HistoryStore
from launcher.settings import LauncherSettings
from policies.submit_cap import may_submit, recent_failures
from warmpool.events import EventLog


class SubmitGate:
    def __init__(self, history: HistoryStore, events: EventLog, settings: LauncherSettings) -> None:
        self.history = history
        self.events = events
        self.settings = settings
        self.failed_at_s: list[float] = []
        """When starts failed (over all models), within the window."""
        self.held_back: set[str] = set()
        """Models held back since the window filled (each told once in the events)."""

    def failed(self, now_s: float, *, start: bool = True) -> None:
        """An instance failed: counted if it was a start (its submission was refused, or it never served)."""
        if start:
            self.failed_at_s.append(now_s)

    async def allows(self, model: str, now_s: float) -> bool:
        """False while the window is full and the model is unproven (failing, or it never served)."""
        cap, window_s = self.settings.failed_submissions_cap, self.settings.failed_submissions_window_s
        self.failed_at_s = recent_failures(self.failed_at_s, now_s, window_s)
        if len(self.failed_at_s) < cap:
            self.held_back.clear()
            return True
        hist = await self.history.get(model)
        proven = hist.start_failures == 0 and bool(hist.load_times_s)
        if may_submit(self.failed_at_s, now_s, window_s=window_s, cap=cap, proven=proven):
            return True
        if model not in self.held_back:
            self.held_back.add(model)
            await self.events.record(
                "submission.held_back", now_s=now_s, model=model, failed=len(self.failed_at_s), window_s=window_s
            )
        return False
