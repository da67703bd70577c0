#!/usr/bin/env bash
# The whole test suite, from a fresh clone: venv + deps, a loopback
# PostgreSQL, Debian Chromium + Playwright, npm packages for the Node client
# test, then ruff and pytest (every test runs against SQLite and PostgreSQL).
# Extra arguments go to pytest, e.g. scripts/test.sh -k sqlite -x
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export CI="${CI:-}"
bash scripts/venv.sh
export RAYFLOW_TEST_POSTGRES_URL="${RAYFLOW_TEST_POSTGRES_URL:-$(bash scripts/postgres.sh)}"
bash scripts/browser.sh >/dev/null
# again whenever the lock file changed since the last install (new packages)
if [ ! -d tests/node/node_modules ] \
  || [ tests/node/package-lock.json -nt tests/node/node_modules/.package-lock.json ]; then
  (cd tests/node && npm install --no-audit --no-fund --loglevel=error)
fi
.venv/bin/ruff check rayflow serve tests examples benchmarks
.venv/bin/ruff format --check -q rayflow serve tests examples benchmarks
.venv/bin/mypy rayflow serve
.venv/bin/python -m pytest -q -p no:cacheprovider --durations=15 "$@"
