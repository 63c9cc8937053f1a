#!/usr/bin/env bash
# Install the peer proxies the warm-path benchmark compares against, idempotently:
#   nginx (Debian package), vllm-router and LiteLLM's proxy (PyPI, pinned, each in its own venv
#   under bench/.venvs/ so their dependencies never touch slurmless's).
# Usage: bash bench/peers/install.sh [nginx|vllm-router|litellm ...]   (default: all)
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
venvs="$here/.venvs"
py="${PYTHON:-python3}"
VLLM_ROUTER_VERSION="0.1.17"
LITELLM_VERSION="1.106.2"
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(nginx vllm-router litellm)

install_venv() {  # name, pip requirement, marker command
  local name="$1" req="$2"
  local venv="$venvs/$name" marker="$venvs/$name/.installed-$3"
  if [ -f "$marker" ]; then echo "$name: already installed ($req)"; return; fi
  rm -rf "$venv"
  "$py" -m venv "$venv"
  timeout 900 "$venv/bin/pip" install --quiet --disable-pip-version-check "$req"
  touch "$marker"
  echo "$name: installed $req"
}

for t in "${targets[@]}"; do
  case "$t" in
    nginx)
      if command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ]; then
        echo "nginx: already installed"
      else
        export DEBIAN_FRONTEND=noninteractive
        timeout 300 apt-get update -qq
        timeout 600 apt-get install -y -qq nginx-light >/dev/null 2>&1 || timeout 600 apt-get install -y -qq nginx >/dev/null
        # The package enables a system service on port 80; the benchmark runs its own instance.
        (command -v systemctl >/dev/null && systemctl disable --now nginx) >/dev/null 2>&1 || true
        pkill -F /run/nginx.pid >/dev/null 2>&1 || true
        echo "nginx: installed"
      fi
      ;;
    vllm-router) install_venv vllm-router "vllm-router==$VLLM_ROUTER_VERSION" "$VLLM_ROUTER_VERSION" ;;
    litellm) install_venv litellm "litellm[proxy]==$LITELLM_VERSION" "$LITELLM_VERSION" ;;
    *) echo "unknown peer: $t" >&2; exit 2 ;;
  esac
done
