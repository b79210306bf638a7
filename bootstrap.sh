#!/usr/bin/env bash
# Set up everything rtnf needs on Debian/Ubuntu, then run the demo or the tests.
#
#   bash bootstrap.sh demo [rtnf demo options]   # full simulated session, end to end
#   bash bootstrap.sh test [pytest options]      # the whole test suite
#
# Idempotent: Debian packages are installed only when missing (with sudo when
# not root), the virtual environment .venv is created once and the Python
# packages are reinstalled only when pyproject.toml changes.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

what="${1:-}"
case "$what" in
  demo|test) shift ;;
  *) echo "usage: bash bootstrap.sh demo|test [options]" >&2; exit 2 ;;
esac

# Debian packages: a virtual X display and the GL/font libraries PsychoPy's
# window needs (xvfb xauth libgl1 libglu1-mesa libegl1 libfontconfig1
# libfreetype6); dcm2niix, the reference the DICOM tests compare against;
# chromium, the real browser the console's tests drive (headless); xdotool,
# which presses real X keys for the screen's trigger and response-key test.
# With these and the Python extras below, only the tests of real scanner data
# skip (with the reason) when ../shared/data is not beside the checkout.
apt_packages=(python3-venv xvfb xauth libgl1 libglu1-mesa libegl1 libfontconfig1 libfreetype6 dcm2niix chromium
              xdotool)
missing=()
for pkg in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "==> installing Debian packages: ${missing[*]}"
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Python 3.11 or newer.
python=""
for candidate in python3.11 python3.12 python3.13 python3; do
  if command -v "$candidate" >/dev/null &&
     "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    python="$candidate"; break
  fi
done
[ -n "$python" ] || { echo "rtnf needs Python >= 3.11 (apt-get install python3)" >&2; exit 1; }

if [ ! -x .venv/bin/python ]; then
  echo "==> creating the virtual environment .venv with $python"
  "$python" -m venv .venv
fi
stamp=.venv/.rtnf-installed
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "==> installing rtnf and its Python packages into .venv (PsychoPy takes a few minutes the first time)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[display,console,roi,lsl,dev]"
  echo "$want" > "$stamp"
fi

if [ "$what" = demo ]; then
  exec .venv/bin/rtnf demo "$@"
else
  exec .venv/bin/python -m pytest "$@"
fi
