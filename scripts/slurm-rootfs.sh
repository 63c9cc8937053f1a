#!/usr/bin/env bash
# Build (once) a Debian root filesystem carrying a newer Slurm for the local test cluster, cached
# outside the clone:  scripts/slurm-rootfs.sh 24.11|26.05 [DEST]
#
#   24.11 -> Debian 13 "trixie", 26.05 -> Debian "sid"; DEST defaults to
#   ${SLURMLESS_ROOTFS_CACHE:-/var/cache/slurmless/rootfs}/<version>.
#
# Idempotent: a finished root carries a stamp naming its suite and package list; a second run with
# the same list only checks the stamp. A half-built root (interrupted run) is removed and rebuilt.
# Runs as root (debootstrap). Prints the root's path on stdout, progress on stderr.
set -euo pipefail

version="${1:?usage: slurm-rootfs.sh 24.11|26.05 [DEST]}"
case "$version" in
  24.11) suite=trixie ;;
  26.05) suite=sid ;;
  *) echo "slurm-rootfs: no root filesystem recipe for Slurm $version (known: 24.11, 26.05)" >&2; exit 2 ;;
esac
dest="${2:-${SLURMLESS_ROOTFS_CACHE:-/var/cache/slurmless/rootfs}/$version}"
mirror="${SLURMLESS_DEBIAN_MIRROR:-http://deb.debian.org/debian}"

# Daemons and clients, slurmrestd with JWT auth, python3 for the job scripts' helpers; the
# compilers and cython3 build pyslurm inside the root (scripts/pyslurm-build.sh).
packages=(slurmctld slurmd slurm-client munge libslurm-dev slurmrestd slurm-wlm-jwt-plugin python3 procps)
if [ "$version" = 24.11 ]; then
  packages+=(python3-dev python3-venv gcc cython3 python3-setuptools python3-wheel python3-pip ca-certificates)
fi
want="suite=$suite packages=${packages[*]}"
stamp="$dest/.slurmless-rootfs"

log() { printf '[slurm-rootfs %s] %s\n' "$version" "$*" >&2; }

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "$dest"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "slurm-rootfs: building the Slurm $version root needs root (debootstrap)" >&2
  exit 1
fi
if ! command -v debootstrap >/dev/null 2>&1; then
  log "installing debootstrap"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null 2>&1 ||
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null; }
fi

# Build next to the destination and move it in place only when complete.
mkdir -p "$(dirname "$dest")"
work="$dest.partial"
if [ -e "$work" ]; then
  # A previous run died half-way; nothing may still be mounted below it (we never mount there).
  if grep -q " $work/" /proc/self/mountinfo; then
    echo "slurm-rootfs: $work has mounts below it; unmount them first" >&2
    exit 1
  fi
  rm -rf "$work"
fi
started=$(date +%s)
log "debootstrap --variant=minbase $suite (${#packages[@]} packages) into $work"
debootstrap --variant=minbase --include="$(IFS=,; echo "${packages[*]}")" "$suite" "$work" "$mirror" \
  >"$work.log" 2>&1 || { tail -n 30 "$work.log" >&2; exit 1; }
# The packages' own daemons never run here: slurmless starts them with its own config.
rm -f "$work/etc/slurm/slurm.conf" "$work/etc/munge/munge.key"
chroot "$work" apt-get clean
echo "$want" >"$work/.slurmless-rootfs"
[ -e "$dest" ] && rm -rf "$dest"
mv "$work" "$dest"
mv "$work.log" "$dest.log"
log "built in $(($(date +%s) - started)) s: $(chroot "$dest" dpkg-query -W -f='${Version}' slurmctld)"
echo "$dest"
