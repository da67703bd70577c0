"""rayflow's configuration: one pydantic-settings model, `RAYFLOW_*` env vars.

Read once by `rayflow.init()` and passed down (to the Controller and every
RunActor) so that all processes of one deployment agree.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MiB = 1024 * 1024
#: the host names that listen on this machine only
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RAYFLOW_", extra="ignore")

    #: Ray address to connect to; None starts (or joins) a local Ray on loopback.
    address: str | None = None
    #: Store URL: `sqlite:///path.db` or `postgresql://…`; empty = SQLite in data_dir.
    store: str = ""
    data_dir: Path = Path(".rayflow")
    namespace: str = "rayflow"
    #: Secret API key for backends; signs public access tokens. Generated and
    #: kept in data_dir when unset.
    secret_key: str | None = None
    http_host: str = "127.0.0.1"
    #: origins (`https://api.example.com`) besides its own that the dashboard
    #: may use as its API (`?api=`); it sends the secret key or token there
    dashboard_api_origins: list[str] = []
    http_port: int = 8000
    #: who listens on `http_host:http_port` when the process that serves the
    #: API also started the local Ray (`rayflow.init(serve=True)`, `rayflow
    #: dev`; one replica): "rayflow" — rayflow's own HTTP server (uvicorn) in
    #: the Serve replica, on the replica's event loop, with none of Serve's
    #: per-request path; "serve" — Ray Serve's direct ingress (that path costs
    #: about half a replica's CPU per small request: benchmarks/README.md).
    #: Elsewhere (a cluster, several replicas) Serve's proxy listens on it
    http_ingress: Literal["rayflow", "serve"] = "rayflow"
    #: finished runs, and sessions closed or expired, are deleted this long
    #: after they ended (with their streams, journals, inputs)
    retention_days: float = 28.0
    #: how long a send to a session stream with a part id (`X-Part-Id`, the
    #: SDK's per-send idempotency key) dedupes a retry of it; later the same
    #: id stores a new record. A part id guards one send's retries (seconds);
    #: a day keeps the keys table to a day of sends
    session_send_key_ttl_s: float = Field(default=86_400.0, gt=0)
    max_stream_bytes: int = 300 * MiB
    max_input_bytes: int = 1 * MiB
    #: messages one run's input streams keep, all streams together; a send
    #: past it over HTTP is refused with 429 (a browser token cannot fill the Store)
    max_input_messages_per_run: int = 10_000
    #: characters of JSON one run's input streams keep; past it: 413
    max_input_log_bytes_per_run: int = 64 * MiB
    #: SSE bodies and live run subscriptions one public token may hold open
    #: at once on one Serve replica; past it: 429 (the secret key: no limit).
    #: Every viewer of a run that shares one run token counts
    max_streams_per_token: int = Field(default=500, ge=1)
    #: warm RunActors kept ready (the pool's minimum) so a trigger or revival
    #: skips actor start-up; each idle actor costs ~50 MB
    pool_size: int = 2
    #: most RunActor processes the pool holds (idle + busy, all shapes); a
    #: process costs ~50-60 MB, so this bounds the memory of the runs that
    #: need a process each (`runs_per_actor=1`, resources)
    pool_max_size: int = 100
    #: an idle RunActor beyond the minimum is stopped after this many seconds
    pool_idle_s: float = 60.0
    #: a RunActor whose runs suspended or ended takes the next runs (False:
    #: an actor is retired as soon as a run leaves it)
    pool_recycle: bool = True
    #: a RunActor is retired after this many runs (like a web server's
    #: max-requests: bounds what leaks from run to run)
    max_runs_per_actor: int = 1000
    #: runs of an `async def` task one RunActor executes at once (they share
    #: its event loop); a task overrides it with `@task(runs_per_actor=...)`
    runs_per_actor: int = 1000
    #: a RunActor whose event loop runs a timer this late (seconds) takes no
    #: new run until it is back under half that; a run that holds the loop
    #: this long is reported (a warning and `loop_blocked_ms` on the run)
    loop_lag_s: float = 0.1
    #: runs executing at once per deployment; more wait QUEUED (suspended
    #: runs count none). Memory-bounded: a live async run costs a coroutine
    #: and its buffers (docs/scaling.md, "Sizing"), a run with a process of
    #: its own ~55 MB (bounded by `pool_max_size` too)
    max_live_runs: int = 10_000
    #: PostgreSQL connections a RunActor process may hold (opened when used,
    #: closed after a minute idle), however many runs it hosts: their streams
    #: commit together on one. Times the RunActors (at most `pool_max_size`)
    #: that is the worst case; keep it under the server's `max_connections`
    #: (100 by default) or put PgBouncer in front (docs/deploying.md)
    run_actor_store_connections: int = 2
    #: PostgreSQL connections of the Controller, an Inbox, a Serve replica, a driver
    store_connections: int = 8
    #: SQLite `synchronous` pragma: FULL survives power loss, NORMAL a crash
    sqlite_synchronous: str = "FULL"
    #: extra wait before a writer outside the run sends when nothing is in
    #: flight; 0 sends at once (writes made meanwhile still share the next call)
    flush_interval_s: float = 0.0
    #: a Serve replica's SSE readers take the rows writers outside the run
    #: push to it after their commit (one process crossing, not two through
    #: the RunActor: `_runtime/push_inbox.py`); false: the RunActor only
    push_rows: bool = True
    #: chunks kept in a RunActor's memory per stream before sealing a segment;
    #: large enough that a segment of small chunks passes Ray's 100 KB inline
    #: limit and lands in the shared object store, not the actor's heap
    tail_chunks: int = 4096
    #: sealed segments per stream kept in the Ray object store (older: Store)
    object_store_segments: int = 64
    #: how long a token minted by rayflow is valid (the secret key mints them)
    token_ttl_s: int = 3600
    #: ... a session's public access token (`sessions.start`, `POST
    #: /api/v1/sessions`): Trigger.dev's 60 minutes; a client gets a fresh one
    #: by starting the session again
    session_token_ttl_s: int = Field(default=3600, ge=60)
    #: Inbox actors (on the head node) taking every send; a (run, input
    #: stream) always goes to the same one, by a hash of both
    inbox_shards: int = Field(default=2, ge=1, le=256)
    #: the Durable Streams endpoint (`/durable-streams/v1/stream/…`) takes
    #: requests without a key or token: for local development and the
    #: protocol's conformance suite; refused unless `http_host` is loopback
    durable_streams_anonymous: bool = False
    #: a Durable Streams producer (Producer-Id) that has not written to a
    #: stream for this long is forgotten there (its epoch and seq; the
    #: reference server's 7 days): idempotence holds for retries within it,
    #: and per-stream state stays bounded when clients use a fresh id per
    #: session. Producer state also goes with its stream
    durable_streams_producer_ttl_s: float = Field(default=7 * 86_400.0, gt=0)
    #: how long a Durable Streams long poll waits for data before its 204
    durable_streams_long_poll_s: float = 20.0
    #: how long a live run subscription (`/realtime/v1/runs…?live=true`)
    #: waits for a change before it answers "up-to-date" with the same offset
    run_shape_live_s: float = Field(default=20.0, gt=0)
    #: how long one Durable Streams SSE response lasts; the client reconnects
    #: from its offset (PROTOCOL.md: about a minute lets CDNs collapse readers)
    durable_streams_sse_s: float = 60.0
    #: how often the Controller looks for waitpoints past their deadline
    timer_interval_s: float = 0.5
    #: level of Ray's and Ray Serve's own logs (rayflow/_logging.py): ERROR
    #: keeps them quiet; INFO brings back Ray's notices and Serve's access log
    log_level: str = "ERROR"

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.strip().upper()
        if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):  # _logging.LEVELS
            raise ValueError(
                f"RAYFLOW_LOG_LEVEL must be DEBUG, INFO, WARNING, ERROR or CRITICAL, not {value!r}"
            )
        return level

    #: a directory for per-chunk hop timestamps (the latency breakdown of
    #: benchmarks/http_sse.py --breakdown); None = off
    trace_hops_dir: Path | None = None

    def store_url(self) -> str:
        return self.store or f"sqlite:///{(self.data_dir / 'rayflow.db').resolve()}"
