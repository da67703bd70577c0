#!/usr/bin/env bash
# The main job on the embedded default: `rayflow dev` (local Ray on 127.0.0.1,
# SQLite, the HTTP API and the dashboard) with the research agent, driven over
# HTTP like a frontend would (trigger, SSE, follow-up, wrap-up). Exits 0 when
# not attached to a terminal; in one it keeps the dashboard up until Ctrl-C.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/venv.sh
exec .venv/bin/python examples/http_tour.py "$@"
