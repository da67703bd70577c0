"""Per-chunk hop timestamps, for the latency breakdown of benchmarks/http_sse.py.

Off unless `Settings.trace_hops_dir` is set (`RAYFLOW_TRACE_HOPS_DIR`); then
each process that handles a chunk appends one line per hop to its own file
in that directory: `hop<TAB>id<TAB>wall clock ns[<TAB>other id]`. Processes
on one machine share the wall clock, so the benchmark joins the files and
subtracts. A chunk is `writer id:writer seq` until it is committed and
`run id/key/seq` after; the `visible` line names both. When off, `mark`
costs one attribute check.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import IO

_file: IO[str] | None = None
_enabled: bool | None = None
_lock = threading.Lock()


def enabled() -> bool:
    global _enabled, _file
    if _enabled is None:
        from rayflow._runtime import connection

        if not connection.is_connected():
            return False
        directory = connection.current().settings.trace_hops_dir
        if directory is not None:
            Path(directory).mkdir(parents=True, exist_ok=True)
            # line-buffered: a worker killed at shutdown loses nothing written
            _file = open(Path(directory) / f"{os.getpid()}.tsv", "a", buffering=1)  # noqa: SIM115
        _enabled = directory is not None
    return _enabled


def mark(hop: str, ids: list[str], other: list[str] | None = None, at: int | None = None) -> None:
    """Record that the chunks `ids` passed `hop` now (or at `at`, ns)."""
    if not enabled() or _file is None:
        return
    now = time.time_ns() if at is None else at
    if other is None:
        lines = "".join(f"{hop}\t{i}\t{now}\n" for i in ids)
    else:
        lines = "".join(f"{hop}\t{i}\t{now}\t{o}\n" for i, o in zip(ids, other, strict=True))
    with _lock:
        _file.write(lines)


def stream_id(run_id: str, key: str, seq: int) -> str:
    return f"{run_id}/{key}/{seq}"


def named_id(path: str, seq: int) -> str:
    """A record of a named stream (a session's): `path@seq`."""
    return f"{path}@{seq}"


def write_id(writer_id: str | None, writer_seq: int | None) -> str:
    return f"{writer_id}:{writer_seq}"
