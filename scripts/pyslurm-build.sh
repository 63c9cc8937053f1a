#!/usr/bin/env bash
# Build pyslurm inside the Slurm 24.11 root filesystem (scripts/slurm-rootfs.sh 24.11), once:
#   scripts/pyslurm-build.sh [TARBALL]   (default: vendor/pyslurm/pyslurm-24.11.0.tar.gz)
# against the root's libslurm-dev with Debian's cython3 (nothing is fetched inside the root), then
# the root's virtualenv for a launcher (scripts/rootfs-venv.sh).
# Idempotent: a stamp in the root names the tarball's sha256. Prints the root's path on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
tarball="$(realpath "${1:-vendor/pyslurm/pyslurm-24.11.0.tar.gz}")"
root="$(bash scripts/slurm-rootfs.sh 24.11)"
sum="$(sha256sum "$tarball" | cut -c1-64)"
stamp="$root/.slurmless-pyslurm"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$sum" ]; then
  bash scripts/rootfs-venv.sh
  exit 0
fi
log() { printf '[pyslurm-build] %s\n' "$*" >&2; }
started=$(date +%s)
src="$root/opt/pyslurm-src"
rm -rf "$src" && mkdir -p "$src"
tar xzf "$tarball" -C "$src" --strip-components=1
log "building $(basename "$tarball") in $root (a few minutes on 2 cores)"
chroot "$root" /bin/sh -ec '
  cd /opt/pyslurm-src
  SLURM_LIB_DIR=/usr/lib/x86_64-linux-gnu/slurm-wlm SLURM_INCLUDE_DIR=/usr/include \
    python3 -m pip install -q --break-system-packages --no-build-isolation --no-deps --no-index .
' >"$root/opt/pyslurm-build.log" 2>&1 || { tail -n 30 "$root/opt/pyslurm-build.log" >&2; exit 1; }
rm -rf "$src"
echo "$sum" >"$stamp"
log "built in $(($(date +%s) - started)) s"
bash scripts/rootfs-venv.sh
