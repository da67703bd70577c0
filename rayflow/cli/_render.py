"""What the CLI prints: the runs table, chunks as text, progress bars or JSON
lines, and a spinner while something starts. Output goes to `out` (stdout),
messages about it to `err` (stderr), so `rayflow trigger … | jq` works."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from rich.console import Console
from rich.table import Table

from rayflow._status import RunStatus

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

STATUS_STYLE: dict[str, str] = {
    RunStatus.QUEUED: "magenta",
    RunStatus.EXECUTING: "blue",
    RunStatus.WAITING: "yellow",
    RunStatus.COMPLETED: "green",
    RunStatus.FAILED: "red",
    RunStatus.CRASHED: "red",
    RunStatus.TIMED_OUT: "red",
    RunStatus.CANCELED: "dim",
}


@contextlib.contextmanager
def spinner(message: str) -> Iterator[None]:
    """A spinner on a terminal, one line otherwise."""
    if err.is_terminal:
        with err.status(message):
            yield
    else:
        err.print(message + "…")
        yield


def _ago(value: datetime | None) -> str:
    return value.astimezone().strftime("%H:%M:%S") if value else "—"


def _duration(run: Any) -> str:
    start = run.started_at or run.created_at
    if start is None:
        return "—"
    end = run.finished_at or datetime.now(start.tzinfo)
    s = max(0.0, (end - start).total_seconds())
    return f"{s:.1f}s" if s < 60 else f"{int(s // 60)}m{int(s % 60):02d}s"


def runs_table(runs: list[Any]) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False)
    for col in ("RUN", "TASK", "STATUS", "CREATED", "DURATION"):
        table.add_column(col, no_wrap=True)
    for r in runs:
        style = STATUS_STYLE.get(r.status, "")
        status = f"[{style}]{r.status}[/]" if style else str(r.status)
        table.add_row(r.id, r.task_id, status, _ago(r.created_at), _duration(r))
    if not runs:
        table.add_row("(no runs)", "", "", "", "")
    return table


def is_progress(value: Any) -> bool:
    return isinstance(value, dict) and isinstance(value.get("percent"), int | float)


def progress_line(value: dict[str, Any], width: int = 30) -> str:
    pct = max(0.0, min(100.0, float(value["percent"])))
    filled = round(width * pct / 100)
    rest = ", ".join(f"{k}: {v}" for k, v in value.items() if k != "percent")
    return f"[{'#' * filled}{'-' * (width - filled)}] {pct:5.1f}%" + (f"  {rest}" if rest else "")


class ChunkPrinter:
    """Text chunks as they are, `{"percent": …}` chunks as a progress bar, others as JSON lines."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.progress: Any = None
        self.bar: Any = None
        self.mid_line = False

    def __call__(self, index: int, value: Any) -> None:
        if self.as_json:
            out.print_json(json.dumps({"index": index, "data": value}), indent=None)
        elif isinstance(value, str):
            self._write(value)
            self.mid_line = not value.endswith("\n")
        elif is_progress(value):
            self._progress(value)
        else:
            self._line(json.dumps(value))

    def _write(self, text: str) -> None:
        if self.progress is not None:
            self.progress.console.print(text, end="", markup=False, highlight=False)
        else:
            sys.stdout.write(text)
            sys.stdout.flush()

    def _line(self, text: str) -> None:
        if self.mid_line:
            self._write("\n")
            self.mid_line = False
        self._write(text + "\n")

    def _progress(self, value: dict[str, Any]) -> None:
        if not out.is_terminal:
            self._line(progress_line(value))
            return
        from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

        rest = ", ".join(f"{k}: {v}" for k, v in value.items() if k != "percent")
        if self.progress is None:
            if self.mid_line:
                self._write("\n")
                self.mid_line = False
            self.progress = Progress(
                BarColumn(), TaskProgressColumn(), TextColumn("{task.description}"), console=out
            )
            self.progress.start()
            self.bar = self.progress.add_task(rest, total=100)
        self.progress.update(self.bar, completed=float(value["percent"]), description=rest)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
        elif self.mid_line:
            self._write("\n")
