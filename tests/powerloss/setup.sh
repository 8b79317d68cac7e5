#!/usr/bin/env bash
# Installs what the power-loss test needs: Debian's fuse3 (fusermount3, and
# libfuse3, which lossyfs.py drives) and a Python venv holding the pinned
# FUSE binding (mfusepy, pure ctypes: no compiler). The test then runs
#   $HOME/.cache/mindoo-replica/powerloss-venv/bin/python tests/powerloss/lossyfs.py BACKING MOUNTPOINT
# Idempotent; prints nothing when everything is already there.
set -euo pipefail

MFUSEPY_VERSION=3.1.1
venv="$HOME/.cache/mindoo-replica/powerloss-venv"
python=${PYTHON:-python3}

need=()
command -v fusermount3 >/dev/null 2>&1 || need+=(fuse3)
ls /usr/lib/*/libfuse3.so.3 /lib/*/libfuse3.so.3 >/dev/null 2>&1 || need+=(libfuse3-3)
command -v "$python" >/dev/null 2>&1 || { need+=(python3); python=python3; }
# Debian's python3 creates venvs only with python3-venv (it carries ensurepip).
if ! [[ -x $venv/bin/python ]] && ! "$python" -c 'import ensurepip, venv' >/dev/null 2>&1; then
  need+=(python3-venv)
fi

if ((${#need[@]})); then
  sudo=""
  [[ $(id -u) -ne 0 ]] && sudo=sudo
  echo "installing: ${need[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

have_binding() {
  "$venv/bin/python" - "$MFUSEPY_VERSION" >/dev/null 2>&1 <<'EOF'
import sys
from importlib.metadata import version
sys.exit(version("mfusepy") != sys.argv[1])
EOF
}

if ! have_binding; then
  # A venv whose interpreter moved or vanished is rebuilt from scratch.
  "$venv/bin/python" -c '' >/dev/null 2>&1 || rm -rf "$venv"
  mkdir -p "$(dirname "$venv")"
  [[ -x $venv/bin/python ]] || "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check "mfusepy==$MFUSEPY_VERSION"
  have_binding || { echo "setup.sh: mfusepy==$MFUSEPY_VERSION did not install into $venv" >&2; exit 1; }
fi

if [[ ! -e /dev/fuse ]]; then
  echo "setup.sh: /dev/fuse is missing: the power-loss test needs the fuse kernel module" >&2
fi
