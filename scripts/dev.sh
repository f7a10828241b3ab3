#!/usr/bin/env bash
# One entry point for set-up on a fresh machine.
#   bash scripts/dev.sh demo   -> create .venv if absent, install the core, run the CPU demo
#   bash scripts/dev.sh test   -> create .venv if absent, install everything (+ apt packages for Xvfb/Qt), run all tests
set -euo pipefail
cd "$(dirname "$0")/.."

PY=.venv/bin/python
APT_PACKAGES="xvfb libgl1 libegl1 libglx-mesa0 libgl1-mesa-dri libfontconfig1 libdbus-1-3 libxkbcommon-x11-0 \
libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1 libxcb-image0 libxcb-randr0 libxcb-render-util0 libxcb-shape0 \
libxcb-xfixes0 libxcb-xkb1 libxcb-glx0 libx11-xcb1"

ensure_venv() {
  if [ ! -x "$PY" ]; then
    python3 -m venv .venv
    "$PY" -m pip install -q --upgrade pip
  fi
  # torch/torchvision pinned as requirement *and* constraint so no later install can swap them.
  "$PY" -m pip install -q -c constraints.txt torch==2.14.1 torchvision==0.29.1
}

ensure_apt() {
  local missing=()
  for pkg in $APT_PACKAGES; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "installing apt packages for Xvfb/Qt: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

case "${1:-}" in
  demo)
    ensure_venv
    "$PY" -m pip install -q -c constraints.txt -e .
    shift
    exec .venv/bin/dinocell-core demo "${@:-demo_output}"
    ;;
  test)
    ensure_apt
    ensure_venv
    "$PY" -m pip install -q -c constraints.txt -e ".[napari,test]"
    shift
    unset QT_QPA_PLATFORM  # viewer tests need xcb on Xvfb (pytest-xvfb starts it); offscreen renders black
    exec "$PY" -m pytest "$@"
    ;;
  *)
    echo "usage: bash scripts/dev.sh demo [OUTDIR] | test [pytest args]" >&2
    exit 2
    ;;
esac
