#!/usr/bin/env bash
# A virtualenv inside the Slurm 24.11 root (/opt/slurmless-venv, with the root's site-packages, so
# pyslurm is importable) holding slurmless's runtime dependencies, so a launcher can run there:
#   scripts/rootfs-venv.sh
# The host's pip downloads the wheels (same versions as .venv, for the root's CPython 3.13) into
# ${SLURMLESS_ROOTFS_CACHE:-/var/cache/slurmless/rootfs}/../wheels-cp313; the root installs them
# offline. slurmless itself is not installed there: it runs from the clone (PYTHONPATH=/host<clone>).
# Idempotent: a stamp names the pinned requirements' hash.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$(bash scripts/slurm-rootfs.sh 24.11)"
cache="$(realpath -m "$(dirname "$root")/../wheels-cp313")"
venv=/opt/slurmless-venv
log() { printf '[rootfs-venv] %s\n' "$*" >&2; }
[ -x .venv/bin/python ] || { echo "rootfs-venv: run scripts/setup.sh first (needs .venv)" >&2; exit 1; }

# The runtime dependency closure of pyproject.toml, pinned to what .venv holds.
req="$(mktemp)"
trap 'rm -f "$req"' EXIT
.venv/bin/python - >"$req" <<'PY'
import importlib.metadata as md, re, tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
def name(req): return re.split(r"[\[<>=!~; ]", req, maxsplit=1)[0].lower().replace("_", "-")
seen, stack = {}, list(deps)
while stack:
    req = stack.pop()
    head, _, marker = req.partition(";")
    extras = [e for group in re.findall(r"\[([^\]]+)\]", head) for e in group.split(",")]
    n = name(head)
    if n in seen and not extras:
        continue
    try:
        dist = md.distribution(n)
    except md.PackageNotFoundError:
        continue
    seen[n] = dist.version
    for r in dist.requires or []:
        h, _, m = r.partition(";")
        if "extra" in m and not any(f'"{e.strip()}"' in m for e in extras):
            continue
        if "win32" in m or "Windows" in m or 'python_version < "3.11"' in m:
            continue
        stack.append(h)
print("\n".join(f"{n}=={v}" for n, v in sorted(seen.items())))
PY
want="$(sha256sum "$req" | cut -c1-16)"
stamp="$root$venv/.ready"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "$root"
  exit 0
fi
started=$(date +%s)
mkdir -p "$cache"
log "downloading $(wc -l <"$req") wheels for CPython 3.13 into $cache"
plat=()
for p in manylinux_2_28_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux_2_5_x86_64 manylinux1_x86_64 any; do
  plat+=(--platform "$p")
done
.venv/bin/python -m pip download -q --no-deps -r "$req" -d "$cache" --python-version 3.13 --implementation cp \
  --abi cp313 --abi abi3 --abi none "${plat[@]}" --only-binary=:all:
prefix="$(.venv/bin/python -c 'from slurm.rootfs import SlurmRuntime; import shlex; print(shlex.join(SlurmRuntime.for_version("24.11").command_prefix))')"
cp "$req" "$root/opt/slurmless-requirements.txt"
log "installing them into $venv inside the root"
eval "$prefix" /bin/sh -ec "'
  [ -x $venv/bin/python ] || python3 -m venv --system-site-packages $venv
  PIP_FIND_LINKS= $venv/bin/pip install -q --no-index --find-links /host$(realpath "$cache") -r /opt/slurmless-requirements.txt
'"
echo "$want" >"$stamp"
log "ready in $(($(date +%s) - started)) s"
echo "$root"
