#!/usr/bin/env bash
# Install what the browser tests (pytest -m browser) need, when it is missing:
#   - Debian's `chromium` (Playwright's own browser download does not work
#     here; tests launch /usr/bin/chromium through executable_path);
#   - the Python `playwright` package in the project's venv.
# Idempotent and quiet when everything is already there.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
CHROMIUM="${RAYFLOW_CHROMIUM:-/usr/bin/chromium}"

if [ ! -x "$CHROMIUM" ]; then
  echo "browser.sh: installing Debian chromium" >&2
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    chromium fonts-dejavu-core >/dev/null
fi

if ! "$PY" -c "import playwright" 2>/dev/null; then
  echo "browser.sh: installing Python playwright into $("$PY" -c 'import sys; print(sys.prefix)')" >&2
  "$PY" -m pip install -q "playwright>=1.44"
fi

"$CHROMIUM" --version
"$PY" -c "import playwright, importlib.metadata as m; print('playwright', m.version('playwright'))"
