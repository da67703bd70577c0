#!/usr/bin/env bash
# The main job on the embedded default (local Ray on 127.0.0.1 + SQLite in
# ./.rayflow): the research agent example, its stream printed live.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/venv.sh
exec .venv/bin/python examples/research_agent.py "$@"
