"""The rows a RunActor's runs appended lately to named streams (a session's
`.out`, a channel's), handed to readers in other processes as they commit.

A session's `.out` reader elsewhere (the driver's `session.output.read()`,
a Serve replica's SSE route) would otherwise learn of a record from the
change feed (two actor hops after the commit) and then read the Store. A
run's appends commit in its RunActor's process (`named_appender`), so that
process knows the rows the moment they are durable: it keeps the newest of
them per path here, and a reader following the session's live run polls the
run's RunActor (`follow_many`, key `NAMED_KEY + path`) like a run stream's
reader, which answers from this tail (`run_actor_streams._peek`).

Invariants:
- Only committed rows are learned (after `named_write_many` answered OK), at
  the positions the Store gave them: a pushed row is exactly the Store's.
- A tail knows only what this process wrote: a reader at `start` gets rows
  only when the tail holds `start` and the rows after it; otherwise it
  waits here — and on the change feed, armed before its last Store read,
  which wakes it for a row written by any other process (or dropped from
  this bounded tail): it reads the Store then, and follows on from there.
- Pushed from the commit thread too (`push`): the RunActor remembers which
  reader processes (their loop's `push_inbox`) followed each path lately
  (`followed`, for `push_outbox.KEEP_S`), and sends them a commit's rows
  right after the commit returns — before the loop hears of it and whether
  or not their `follow_many` call is in flight. Only committed rows, at the
  Store's positions (after `named_write_many` answered OK); a shortcut only,
  `follow_many` still hands the same rows on.
- Bounded: at most MAX_ROWS rows and MAX_BYTES bytes per path (always the
  newest row); at most MAX_PATHS paths and MAX_TOTAL_BYTES in all, the
  least recently written dropped first (a dropped row is read from the
  Store, woken by the feed).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from rayflow._runtime import hops, push_outbox
from rayflow._runtime.push_inbox import Address
from rayflow._runtime.stream_rows import ReadReply, Row
from rayflow.store.named import NamedOutcome, NamedWriteResult

log = logging.getLogger("rayflow")

#: a `follow_many` key naming a named stream of this path, not a run's stream
NAMED_KEY = "\x00named:"
MAX_ROWS = 64
MAX_BYTES = 256 * 1024
MAX_PATHS = 1024
MAX_TOTAL_BYTES = 16 * 1024 * 1024
#: reader processes pushed to per path at most (the most recent kept)
MAX_READERS = 64

#: where a commit's rows are pushed: (reader process's inbox, the run id its
#: readers follow the path under)
Target = tuple[Address, str]


def named_key(path: str) -> str:
    return NAMED_KEY + path


def path_of(key: str) -> str | None:
    """The named stream a poll key names, or None for a run's stream key."""
    return key[len(NAMED_KEY) :] if key.startswith(NAMED_KEY) else None


class NamedTail:
    """The newest rows of one named stream this process committed."""

    def __init__(self) -> None:
        self.stream_id: str | None = None
        self.rows: dict[int, Row] = {}
        self.bytes = 0
        #: called when rows arrive (a `follow_many` watching a run's readers)
        self.watchers: set[Callable[[], None]] = set()
        #: reader processes that followed the path lately (`push_outbox.KEEP_S`):
        #: when each was last seen following, by (inbox, run id)
        self.readers: OrderedDict[Target, float] = OrderedDict()

    def followed(self, inbox: Address, run_id: str) -> None:
        """A reader process following the path under `run_id` takes pushed
        rows at `inbox` (seen now: a `follow_many` call began or ended)."""
        target = (inbox, run_id)
        self.readers[target] = time.monotonic()
        self.readers.move_to_end(target)
        while len(self.readers) > MAX_READERS:
            self.readers.popitem(last=False)

    def targets(self) -> list[Target]:
        """The reader processes to push this path's next commit to."""
        if not self.readers:
            return []
        now = time.monotonic()
        for target in [t for t, at in self.readers.items() if now - at >= push_outbox.KEEP_S]:
            del self.readers[target]
        return list(self.readers)

    def learn(self, stream_id: str, start: int, messages: list[bytes], created_at: int) -> None:
        if stream_id != self.stream_id:  # a new incarnation of the path
            self.stream_id, self.rows, self.bytes = stream_id, {}, 0
        for i, data in enumerate(messages):
            self.rows[start + i] = (start + i, data.decode(), created_at, None)
            self.bytes += len(data)
        while len(self.rows) > 1 and (len(self.rows) > MAX_ROWS or self.bytes > MAX_BYTES):
            oldest = min(self.rows)
            self.bytes -= len(self.rows.pop(oldest)[1])
        for watcher in tuple(self.watchers):
            watcher()

    def peek(self, start: int, limit: int) -> ReadReply | None:
        """The rows from `start` (contiguous), or None while this tail does
        not hold `start` (the reader waits; see the module)."""
        if start not in self.rows:
            return None
        rows: list[Row] = []
        pos = start
        while pos in self.rows and len(rows) < limit:
            rows.append(self.rows[pos])
            pos += 1
        return ReadReply(rows=rows, length=max(self.rows) + 1)


class NamedTails:
    """This process's tails, by path."""

    def __init__(self) -> None:
        #: least recently written first
        self._tails: OrderedDict[str, NamedTail] = OrderedDict()
        self._bytes = 0

    def tail(self, path: str) -> NamedTail:
        found = self._tails.get(path)
        if found is None:
            found = self._tails[path] = NamedTail()
            self._trim(keep=path)
        return found

    def learned(self, path: str, result: NamedWriteResult, messages: list[bytes]) -> None:
        """A write of `messages` to `path` committed with `result`."""
        stream = result.stream
        if result.outcome is not NamedOutcome.OK or result.start is None or stream is None:
            return
        tail = self.tail(path)
        self._tails.move_to_end(path)
        self._bytes -= tail.bytes
        # a write's chunks carry the commit's time, which is the stream's
        # `updated_at` in the result (taken after this write)
        tail.learn(stream.stream_id, result.start, messages, stream.updated_at)
        self._bytes += tail.bytes
        if self._bytes > MAX_TOTAL_BYTES:
            self._trim(keep=path)

    def peek(self, path: str, start: int, limit: int) -> ReadReply | None:
        found = self._tails.get(path)
        return None if found is None else found.peek(start, limit)

    def targets(self, path: str) -> list[Target]:
        """Where to push the rows of a commit to `path` (see `push`)."""
        found = self._tails.get(path)
        return [] if found is None else found.targets()

    def _trim(self, keep: str) -> None:
        """Drop the least recently written paths but `keep` until within
        MAX_PATHS and MAX_TOTAL_BYTES; a watched path stays (its readers'
        registration is on it), emptied when bytes are over."""
        for path, tail in list(self._tails.items()):
            over_bytes = self._bytes > MAX_TOTAL_BYTES
            if len(self._tails) <= MAX_PATHS and not over_bytes:
                return
            if path == keep:
                continue
            if not tail.watchers:
                self._bytes -= tail.bytes
                del self._tails[path]
            elif over_bytes:
                self._bytes -= tail.bytes
                tail.rows, tail.bytes = {}, 0


_tails = NamedTails()


def tails() -> NamedTails:
    """This process's tails (a RunActor's: its runs' appends; used from
    its event loop only)."""
    return _tails


def push(targets: list[Target], path: str, result: NamedWriteResult, messages: list[bytes]) -> None:
    """Send the rows a write to `path` committed (`messages` at
    `result.start`) to the reader processes `targets` (`push_outbox`): on
    the commit thread, right after the commit — before the RunActor's loop
    hears of it, and whether or not a `follow_many` call of theirs is in
    flight (a reader between two reads still gets the next reply at once:
    it waits for it on its process's `actor_polls.listen`). A shortcut only:
    `follow_many` still hands the same rows on."""
    stream = result.stream
    if result.outcome is not NamedOutcome.OK or result.start is None or stream is None:
        return
    try:
        key = named_key(path)
        rows = [
            [result.start + i, data.decode(), stream.updated_at, None]
            for i, data in enumerate(messages)
        ]
        by_inbox: dict[Address, list[Any]] = {}
        for inbox, run_id in targets:
            if push_outbox.on_this_node(inbox):
                by_inbox.setdefault(inbox, []).append([run_id, key, rows])
        push_outbox.send(by_inbox)
        if by_inbox and hops.enabled():
            hops.mark("pushed", [hops.named_id(path, result.start + i) for i in range(len(rows))])
    except Exception:  # never in the way of the commit: the reader has `follow_many`
        log.exception("rayflow: pushing the rows of %s to its readers failed", path)
