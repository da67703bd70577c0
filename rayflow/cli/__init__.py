"""The `rayflow` command: a local deployment to play with, and tools to poke it.

    rayflow dev examples/research_agent.py     # Ray + Store + HTTP API + dashboard
    rayflow trigger research-agent --payload '{"topic": "Ray"}'
    rayflow runs --watch
    rayflow tail RUN_ID ai-output --start-index 0
    rayflow send RUN_ID follow-up '{"question": "and then?"}'
    rayflow token RUN_ID

`rayflow dev` records where its Ray cluster is in `<data dir>/dev.json`; the
other commands join that cluster (or `RAYFLOW_ADDRESS`) as a Ray driver and
use the public Python API. Errors are one line on stderr and a non-zero exit.

The package, by job: `commands` (the typer app, one function per command),
`_connect` (the dev file, joining Ray and rayflow), `_loading` (importing the
user's module), `_render` (tables, progress bars, chunk printing) and
`_failure` (one-line errors, never a traceback).
"""

from __future__ import annotations

from rayflow.cli.commands import app


def main() -> None:
    app()


__all__ = ["app", "main"]
