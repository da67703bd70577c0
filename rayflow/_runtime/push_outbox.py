"""An outside writer's side of `push_inbox`: its commits' rows sent straight
to the processes following their runs, from the commit thread, as soon as
each commit returns.

Which processes follow a run, this process learns from the run's RunActor:
every `published` call answers the inboxes following each run it was told
about (`learn`), and the next commits to that run are pushed there. A new
follower is pushed to from the commit after the one that made the actor
name it; one that left is dropped `KEEP_S` after the last call that
named it (until then its inbox finds no subscription for the rows: it
drops them).

Invariants:
- Never in the way of a commit or of the actor path: a push is one
  non-blocking `send` per inbox and commit; a connection that cannot take
  a whole frame at once (its reader is stalled) or fails is closed, and that
  inbox is left alone for `RETRY_S`. Its readers get the rows from the
  RunActor, which is still told of every commit (`run_appender`).
- Only inboxes on this process's own node (they listen on 127.0.0.1).
- One connection per inbox, used by the commit thread only: frames reach
  an inbox in commit order.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from typing import Any

import ray

from rayflow._runtime import hops
from rayflow._runtime.push_inbox import HEADER, Address
from rayflow._runtime.stream_rows import Row

log = logging.getLogger("rayflow")

#: an inbox that failed is not tried again for this long
RETRY_S = 1.0
#: connecting to an inbox on loopback takes no longer than this
CONNECT_S = 0.5
#: an inbox a RunActor stopped naming is pushed to this long after it last did:
#: a reader process's `follow_many` call ends every `actor_polls.LONG_POLL_S`
#: and the actor does not name it until the next one has come
KEEP_S = 10.0
#: runs whose followers are remembered (oldest forgotten first)
MAX_RUNS = 10_000

#: per run, the inboxes on this node following it, and when a RunActor
#: last named each
_followers: dict[str, dict[Address, float]] = {}
_node_id: str | None = None
#: the commit thread's connections, by inbox
_conns: dict[Address, socket.socket] = {}
#: inboxes that failed: when they may be tried again (monotonic s)
_failed: dict[Address, float] = {}
_lock = threading.Lock()

#: frames this process pushed (tests count them)
frames = 0


def learn(followers: dict[str, list[Address]]) -> None:
    """What a RunActor answered: per run, the inboxes following it now (on
    the telling thread; each run's entry is replaced, never changed, so the
    commit thread reads it without a lock)."""
    global _node_id
    if _node_id is None:
        _node_id = ray.get_runtime_context().get_node_id()
    now = time.monotonic()
    for run_id, inboxes in followers.items():
        named = {a: now for a in inboxes if a[0] == _node_id}
        # an inbox left out is kept a while: its process is between two
        # `follow_many` calls (one ends every few seconds), still reading
        kept = {a: at for a, at in _followers.get(run_id, {}).items() if now - at < KEEP_S}
        merged = {**kept, **named}
        if not merged:
            _followers.pop(run_id, None)
            continue
        if len(_followers) >= MAX_RUNS and run_id not in _followers:
            _followers.pop(next(iter(_followers)))
        _followers[run_id] = merged


def following(run_id: str) -> int:
    """How many inboxes this process pushes the run's commits to (tests count them)."""
    return len(_followers.get(run_id, {}))


def forget(run_id: str) -> None:
    """The run left the actor that named its followers."""
    _followers.pop(run_id, None)


def push(news: dict[str, list[tuple[str, list[Row]]]]) -> None:
    """Send each run's committed rows (per run: (key, rows)) to the inboxes
    following it; on the commit thread, after the commit."""
    by_inbox: dict[Address, list[Any]] = {}
    for run_id, run_news in news.items():
        for inbox in _followers.get(run_id, {}):
            by_inbox.setdefault(inbox, []).extend([run_id, key, rows] for key, rows in run_news)
    send(by_inbox)


def on_this_node(inbox: Address) -> bool:
    """Whether this process can push to `inbox` (it listens on this node's loopback)."""
    global _node_id
    if _node_id is None:
        _node_id = ray.get_runtime_context().get_node_id()
    return inbox[0] == _node_id


def send(by_inbox: dict[Address, list[Any]]) -> None:
    """Send each inbox its frame (`[[run id, key, rows], ...]`, committed
    rows only), one non-blocking send each; on the commit thread."""
    global frames
    if not by_inbox:
        return
    with _lock:
        for inbox, streams in by_inbox.items():
            body = json.dumps(streams, separators=(",", ":")).encode()
            if _send(inbox, HEADER.pack(len(body)) + body):
                frames += 1
                if hops.enabled():
                    ids = [hops.stream_id(r, k, row[0]) for r, k, rows in streams for row in rows]
                    hops.mark("pushed", ids)


def _send(inbox: Address, frame: bytes) -> bool:
    conn = _conns.get(inbox)
    if conn is None:
        if _failed.get(inbox, 0.0) > time.monotonic():
            return False
        conn = _connect(inbox)
        if conn is None:
            return False
        frame = inbox[2].encode() + frame
    try:
        sent = conn.send(frame)
    except OSError:
        sent = -1
    if sent == len(frame):
        return True
    # a partial frame is worthless to the inbox: the connection ends here
    _drop(inbox)
    return False


def _connect(inbox: Address) -> socket.socket | None:
    try:
        conn = socket.create_connection(("127.0.0.1", inbox[1]), timeout=CONNECT_S)
    except OSError as e:
        log.debug("rayflow: no push to %s: %s", inbox[:2], e)
        _drop(inbox)
        return None
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    conn.setblocking(False)
    _conns[inbox] = conn
    return conn


def _drop(inbox: Address) -> None:
    conn = _conns.pop(inbox, None)
    if conn is not None:
        conn.close()
    now = time.monotonic()
    if len(_failed) > 1000:  # inboxes of replicas long gone
        for gone in [a for a, until in _failed.items() if until <= now]:
            del _failed[gone]
    _failed[inbox] = now + RETRY_S
