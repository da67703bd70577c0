"""Named streams: streams that no run owns, named by a path.

The Durable Streams endpoint (`/durable-streams/v1/stream/{path}`) and
sessions (`sessions/<id>/in`, `sessions/<id>/out`, their side channels) keep
their streams here. A named stream has a content type, an optional sliding
TTL or absolute expiry, a closed flag (durable, monotonic), a size limit,
idempotent producers (id + epoch + seq, Kafka style: they survive retries
and restarts because their state commits with the data), a per-stream
`Stream-Seq` watermark, and forks (a new stream that starts as a copy of a
prefix of another).

Positions. A stream's data is a sequence of positions: bytes for a byte
stream, messages for a JSON stream (`application/json`: each message one
position, an append of a JSON array one message per element). `length` is
the tail position. Rows are stored per append unit (a byte stream: one row
per append; a JSON stream: one row per message, each carrying the end of
the batch it came in, `span_end`), keyed by their end position.

Outcomes, not exceptions: a write or create answers a `NamedOutcome` per
request, because one transaction carries many requests (group commit) and
each fails or succeeds alone.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Protocol


class NamedOutcome(str, enum.Enum):
    """What the Store did with one create, write or delete."""

    OK = "ok"  # created / appended / closed / deleted
    EXISTS = "exists"  # create: a stream with this configuration is already there
    DUPLICATE = "duplicate"  # a producer's retry of a stored write: nothing stored
    MISSING = "missing"  # no such stream (or it expired)
    GONE = "gone"  # deleted while forks of it live: 410 for it until they go
    CLOSED = "closed"  # the stream is closed: it takes no more data
    CONFLICT = "conflict"  # create: the path holds a stream configured otherwise
    CONTENT_TYPE = "content_type"  # the write's content type is not the stream's
    STREAM_SEQ = "stream_seq"  # Stream-Seq not above the stream's last one
    STALE_EPOCH = "stale_epoch"  # a producer's epoch below the stored one (fenced)
    EPOCH_SEQ = "epoch_seq"  # a producer's new epoch not starting at seq 0
    SEQ_GAP = "seq_gap"  # a producer's seq past the next expected one
    TOO_LARGE = "too_large"  # the stream would grow past its size limit
    SOURCE_MISSING = "source_missing"  # fork: the source does not exist
    SOURCE_GONE = "source_gone"  # fork: the source was deleted (forks keep it)
    BAD_OFFSET = "bad_offset"  # fork: offset or sub-offset past the source's data


@dataclass(frozen=True)
class Producer:
    """An idempotent producer's stamp on one request (a batch)."""

    id: str
    epoch: int
    seq: int


@dataclass
class NamedStreamInfo:
    path: str
    #: this incarnation of the path (a stream deleted and created again gets a new one)
    stream_id: str
    content_type: str
    length: int  # tail position: bytes, or messages for JSON
    size_bytes: int
    closed: bool
    #: the producer whose write closed the stream (its retry answers DUPLICATE)
    closed_by: Producer | None
    ttl_s: int | None  # sliding: expires ttl_s after the last read or write
    expires_at: int | None  # absolute, ms
    touched_at: int  # last read or write, ms
    last_stream_seq: str | None
    forked_from: str | None
    fork_offset: int | None  # the source position forked at, sub-offset excluded
    fork_sub_offset: int
    #: deleted while forks of it live: every direct access answers GONE
    deleted: bool
    created_at: int
    updated_at: int
    #: until when (ms) a reader in some process follows it (`named_follow`):
    #: till then a commit that changes it tells the other processes
    followed_until: int | None = None

    def followed(self, now: int) -> bool:
        return self.followed_until is not None and self.followed_until > now

    @property
    def json(self) -> bool:
        return is_json(self.content_type)

    def deadline(self) -> int | None:
        """When it expires (ms), or None."""
        ends = [t for t in (self.expires_at, self._ttl_end()) if t is not None]
        return min(ends) if ends else None

    def expired(self, now: int) -> bool:
        deadline = self.deadline()
        return deadline is not None and deadline <= now

    def _ttl_end(self) -> int | None:
        return None if self.ttl_s is None else self.touched_at + self.ttl_s * 1000


@dataclass
class NamedStreamSpec:
    """A stream to create (`Store.named_create`)."""

    path: str
    #: None: `application/octet-stream`, or the source's type for a fork
    content_type: str | None = None
    ttl_s: int | None = None
    expires_at: int | None = None  # ms
    closed: bool = False  # created closed: its initial data is all it ever holds
    forked_from: str | None = None
    fork_offset: int | None = None  # None: the source's tail
    fork_sub_offset: int = 0


@dataclass
class NamedWrite:
    """One append request (one HTTP POST). `messages`: for a JSON stream each
    element is one message (its JSON text, UTF-8); for any other stream the
    elements are concatenated into one append."""

    path: str
    messages: list[bytes]
    #: checked against the stream's when there is data (None: not checked)
    content_type: str | None = None
    close: bool = False
    producer: Producer | None = None
    stream_seq: str | None = None
    #: the producer's seqs may skip numbers (a run's session writer numbers
    #: a write the Store refused too): a higher seq is stored, a lower one
    #: is still a duplicate. Never for the Durable Streams protocol's producers
    producer_gaps: bool = False
    #: the stream's readers in other processes lease it before they wait
    #: (`Store.named_follow`; the Durable Streams endpoint's do): its commit
    #: tells other processes only while one does. False: always
    leased: bool = False


@dataclass
class NamedWriteResult:
    outcome: NamedOutcome
    #: the stream after the request (None when it is missing)
    stream: NamedStreamInfo | None = None
    #: where the request's data starts (OK with data)
    start: int | None = None
    #: producer answers: the epoch now stored (OK, DUPLICATE, STALE_EPOCH), the
    #: highest seq accepted in it (OK, DUPLICATE), the seq expected (SEQ_GAP)
    producer_epoch: int | None = None
    producer_seq: int | None = None
    expected_seq: int | None = None
    #: TOO_LARGE: the size it would have grown to
    size: int | None = None


@dataclass
class NamedChunk:
    pos: int  # first position
    end: int  # position after it
    data: bytes  # the bytes, or one message's JSON text
    created_at: int


@dataclass
class NamedRead:
    """A read: the stream as of the read (None: missing or expired) and its
    chunks from the position asked for, in order."""

    stream: NamedStreamInfo | None
    chunks: list[NamedChunk] = field(default_factory=list)

    @property
    def end(self) -> int | None:
        """The position after the last chunk read (None when nothing was)."""
        return self.chunks[-1].end if self.chunks else None


def normalize_content_type(content_type: str) -> str:
    """The media type alone, lower case (`Text/Plain; charset=utf-8` -> `text/plain`)."""
    return content_type.split(";", 1)[0].strip().lower()


def is_json(content_type: str) -> bool:
    """Whether a stream of this type is a JSON stream (messages, not bytes)."""
    return normalize_content_type(content_type) == "application/json"


DEFAULT_CONTENT_TYPE = "application/octet-stream"
#: the Store's paths of the Durable Streams endpoint's streams (`ds/<path>`)
DURABLE_STREAMS_PREFIX = "ds/"
#: session streams' paths start with this (`sessions/<id>/in`, …)
SESSIONS_PREFIX = "sessions/"


class NamedStreamStore(Protocol):
    """The Store's named streams (`Store` has these methods too)."""

    def named_create(
        self, spec: NamedStreamSpec, messages: list[bytes], max_bytes: int
    ) -> NamedWriteResult:
        """Create the stream at `spec.path` with `messages` as its first data
        (closed at once when `spec.closed`), or a fork of `spec.forked_from`.
        OK when created; EXISTS when the path holds a stream of the same
        configuration (content type, expiry, closed, fork), CONFLICT when it
        holds another or a tombstone; SOURCE_MISSING / SOURCE_GONE /
        BAD_OFFSET / CONFLICT (content type) for a fork; TOO_LARGE stores
        nothing. An expired stream at the path is replaced."""

    def named_write(self, write: NamedWrite, max_bytes: int) -> NamedWriteResult:
        """`named_write_many` of one write."""

    def named_write_many(self, writes: list[NamedWrite], max_bytes: int) -> list[NamedWriteResult]:
        """Check and apply each write in order, in one transaction (one
        commit for all): each gets its own outcome — OK (stored and/or
        closed), DUPLICATE (a producer's retry: nothing stored), MISSING,
        GONE, CLOSED, CONTENT_TYPE, STALE_EPOCH, EPOCH_SEQ, SEQ_GAP,
        STREAM_SEQ, TOO_LARGE — and the stream as it left it. Producer state
        commits with the data, so a retry after a crash or a lost answer is
        recognised."""

    def named_read(self, path: str, start: int, limit: int, max_bytes: int) -> NamedRead:
        """The stream and at most `limit` chunks from position `start` (about
        `max_bytes` of data, at least one chunk), from one snapshot. The
        stream is None when missing or expired; a tombstone has no chunks."""

    def named_info(self, path: str) -> NamedStreamInfo | None:
        """The stream, None when missing or expired (a tombstone: `deleted`)."""

    def named_list(
        self, prefix: str = "", after: str | None = None, limit: int = 100
    ) -> list[NamedStreamInfo]:
        """Live streams whose path starts with `prefix`, by path, after `after`."""

    def named_follow(self, path: str, until: int, renew_before: int) -> bool:
        """A reader in some process waits for changes of `path`: commits
        that change it (`NamedWrite.leased` ones too) tell other processes
        (`on_named_change`'s second list) until at least `renew_before` (ms;
        the lease is set to `until`). True when it wrote the lease. Either
        way the caller reads the stream again before it waits: that read
        sees every commit that did not see the lease. False when the lease
        was already long enough, or there is no such stream."""

    def named_expire_producers(self, prefix: str, before: int, limit: int = 500) -> int:
        """Forget the idempotence state of producers of the streams under
        `prefix` whose last write was before `before` (ms), at most `limit`;
        how many. Such a producer is new again: its next write must be seq 0
        (a retry of an older one is a gap, not a duplicate)."""

    def named_touch(self, paths: list[str]) -> None:
        """The streams were read: their sliding TTLs start again."""

    def named_delete(self, path: str) -> NamedOutcome:
        """OK (deleted; kept as a tombstone while forks of it live), MISSING,
        or GONE (already a tombstone)."""

    def named_delete_expired(self, now: int | None = None, limit: int = 500) -> int:
        """Delete up to `limit` streams past their expiry; how many."""

    def named_trim(self, write: NamedWrite, earliest: int, max_bytes: int) -> NamedWriteResult:
        """Append `write` (one message, the trim record) and delete the
        messages before min(`earliest`, its position) in one transaction."""
