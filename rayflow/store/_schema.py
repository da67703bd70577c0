"""The schema, versioned. Both SQL stores apply these in order.

Each migration is a list of statements in the common subset of SQLite and
PostgreSQL (BIGINT, TEXT, BYTEA/BLOB differ: `{blob}` is substituted).
"""

from __future__ import annotations

MIGRATIONS: list[list[str]] = [
    # 1: the initial schema
    [
        """CREATE TABLE IF NOT EXISTS tasks (
            task_id TEXT PRIMARY KEY,
            blob {blob} NOT NULL,
            defaults TEXT NOT NULL,
            updated_at BIGINT NOT NULL
        )""",
        """CREATE TABLE IF NOT EXISTS runs (
            id TEXT PRIMARY KEY,
            task_id TEXT NOT NULL,
            status TEXT NOT NULL,
            payload TEXT NOT NULL,
            output TEXT,
            error TEXT,
            parent_id TEXT,
            root_id TEXT,
            options TEXT NOT NULL,
            tags TEXT NOT NULL,
            idempotency_key TEXT,
            attempt INTEGER NOT NULL,
            created_at BIGINT NOT NULL,
            updated_at BIGINT NOT NULL,
            started_at BIGINT,
            finished_at BIGINT,
            actor_name TEXT
        )""",
        "CREATE INDEX IF NOT EXISTS runs_created ON runs (created_at)",
        "CREATE INDEX IF NOT EXISTS runs_status ON runs (status)",
        "CREATE INDEX IF NOT EXISTS runs_parent ON runs (parent_id)",
        """CREATE UNIQUE INDEX IF NOT EXISTS runs_idempotency
            ON runs (task_id, idempotency_key)""",
        """CREATE TABLE IF NOT EXISTS streams (
            run_id TEXT NOT NULL,
            key TEXT NOT NULL,
            length BIGINT NOT NULL,
            size_bytes BIGINT NOT NULL,
            closed INTEGER NOT NULL,
            created_at BIGINT NOT NULL,
            updated_at BIGINT NOT NULL,
            PRIMARY KEY (run_id, key)
        )""",
        """CREATE TABLE IF NOT EXISTS chunks (
            run_id TEXT NOT NULL,
            key TEXT NOT NULL,
            seq BIGINT NOT NULL,
            data TEXT NOT NULL,
            record_id TEXT,
            created_at BIGINT NOT NULL,
            PRIMARY KEY (run_id, key, seq)
        )""",
        """CREATE TABLE IF NOT EXISTS stream_writers (
            run_id TEXT NOT NULL,
            key TEXT NOT NULL,
            writer_id TEXT NOT NULL,
            last_seq BIGINT NOT NULL,
            PRIMARY KEY (run_id, key, writer_id)
        )""",
        """CREATE TABLE IF NOT EXISTS journal (
            run_id TEXT NOT NULL,
            attempt INTEGER NOT NULL,
            seq INTEGER NOT NULL,
            kind TEXT NOT NULL,
            name TEXT NOT NULL,
            value TEXT NOT NULL,
            PRIMARY KEY (run_id, attempt, seq)
        )""",
        """CREATE TABLE IF NOT EXISTS inbox (
            run_id TEXT NOT NULL,
            stream_id TEXT NOT NULL,
            seq BIGINT NOT NULL,
            data TEXT NOT NULL,
            message_id TEXT,
            created_at BIGINT NOT NULL,
            PRIMARY KEY (run_id, stream_id, seq)
        )""",
        """CREATE UNIQUE INDEX IF NOT EXISTS inbox_message_id
            ON inbox (run_id, stream_id, message_id)""",
        """CREATE TABLE IF NOT EXISTS waitpoints (
            run_id TEXT PRIMARY KEY,
            stream_id TEXT NOT NULL,
            deadline BIGINT,
            idempotency_key TEXT,
            status TEXT NOT NULL,
            inbox_seq BIGINT,
            created_at BIGINT NOT NULL
        )""",
        "CREATE INDEX IF NOT EXISTS waitpoints_deadline ON waitpoints (status, deadline)",
    ],
    # 2: run metadata (JSON object text, set by rayflow.metadata in the task)
    #    and the batch a run was triggered in (subscribeToBatch)
    [
        "ALTER TABLE runs ADD COLUMN metadata TEXT",
        "ALTER TABLE runs ADD COLUMN batch_id TEXT",
        "CREATE INDEX IF NOT EXISTS runs_batch ON runs (batch_id)",
    ],
    # 3: the longest the run's code held its RunActor's event loop (ms), when
    #    it held it past `loop_lag_s` (every run on that actor waited)
    [
        "ALTER TABLE runs ADD COLUMN loop_blocked_ms BIGINT",
    ],
    # 4: named streams, owned by no run (rayflow/store/named.py): Durable
    #    Streams, sessions. Chunks are keyed by their end position (bytes, or
    #    messages for JSON streams); producers hold their idempotence state.
    [
        """CREATE TABLE IF NOT EXISTS named_streams (
            path TEXT PRIMARY KEY,
            stream_id TEXT NOT NULL,
            content_type TEXT NOT NULL,
            length BIGINT NOT NULL,
            size_bytes BIGINT NOT NULL,
            closed INTEGER NOT NULL,
            closed_by TEXT,
            ttl_s BIGINT,
            expires_at BIGINT,
            touched_at BIGINT NOT NULL,
            last_stream_seq TEXT,
            forked_from TEXT,
            fork_offset BIGINT,
            fork_sub_offset BIGINT NOT NULL,
            deleted INTEGER NOT NULL,
            created_at BIGINT NOT NULL,
            updated_at BIGINT NOT NULL
        )""",
        "CREATE INDEX IF NOT EXISTS named_streams_forks ON named_streams (forked_from)",
        """CREATE TABLE IF NOT EXISTS named_chunks (
            path TEXT NOT NULL,
            end_pos BIGINT NOT NULL,
            pos BIGINT NOT NULL,
            span_end BIGINT NOT NULL,
            data {blob} NOT NULL,
            created_at BIGINT NOT NULL,
            PRIMARY KEY (path, end_pos)
        )""",
        """CREATE TABLE IF NOT EXISTS named_producers (
            path TEXT NOT NULL,
            producer_id TEXT NOT NULL,
            epoch BIGINT NOT NULL,
            last_seq BIGINT NOT NULL,
            updated_at BIGINT NOT NULL,
            PRIMARY KEY (path, producer_id)
        )""",
    ],
    # 5: wait tokens (rayflow.wait, /api/v1/waitpoints/tokens): a token runs
    #    wait on (their waitpoint's stream_id is "token:<id>") until someone
    #    completes it or its timeout passes; `idempotency_key` is unique among
    #    tokens whose key has not expired (an expired key is cleared on reuse)
    [
        """CREATE TABLE IF NOT EXISTS wait_tokens (
            id TEXT PRIMARY KEY,
            status TEXT NOT NULL,
            output TEXT,
            output_is_error INTEGER NOT NULL,
            timeout_at BIGINT,
            idempotency_key TEXT,
            idempotency_key_expires_at BIGINT,
            tags TEXT NOT NULL,
            created_at BIGINT NOT NULL,
            completed_at BIGINT
        )""",
        "CREATE UNIQUE INDEX IF NOT EXISTS wait_tokens_key ON wait_tokens (idempotency_key)",
        "CREATE INDEX IF NOT EXISTS wait_tokens_created ON wait_tokens (created_at)",
        "CREATE INDEX IF NOT EXISTS wait_tokens_timeout ON wait_tokens (status, timeout_at)",
        "CREATE INDEX IF NOT EXISTS waitpoints_stream ON waitpoints (stream_id, status)",
    ],
    # 6: sessions (Trigger.dev 4.5): a durable in/out pair keyed by the
    #    user's external id that outlives its runs; `current_run_id` moves
    #    when a record continues a session whose run ended
    [
        """CREATE TABLE IF NOT EXISTS sessions (
            id TEXT PRIMARY KEY,
            external_id TEXT,
            type TEXT NOT NULL,
            task_id TEXT NOT NULL,
            trigger_config TEXT NOT NULL,
            current_run_id TEXT,
            tags TEXT NOT NULL,
            metadata TEXT,
            closed_at BIGINT,
            closed_reason TEXT,
            expires_at BIGINT,
            created_at BIGINT NOT NULL,
            updated_at BIGINT NOT NULL
        )""",
        "CREATE UNIQUE INDEX IF NOT EXISTS sessions_external ON sessions (external_id)",
        "CREATE INDEX IF NOT EXISTS sessions_created ON sessions (created_at)",
    ],
    # 7: what a session's runs consumed of its input streams (`.in` and each
    #    channel's `in`: the next seq to hand out, committed with the journal
    #    entry of the take, so a continuation run starts there), and the keys
    #    that make a retried send to a session stream store one record
    [
        """CREATE TABLE IF NOT EXISTS session_cursors (
            session_id TEXT NOT NULL,
            path TEXT NOT NULL,
            next_seq BIGINT NOT NULL,
            PRIMARY KEY (session_id, path)
        )""",
        """CREATE TABLE IF NOT EXISTS session_sent_keys (
            path TEXT NOT NULL,
            send_key TEXT NOT NULL,
            seq BIGINT NOT NULL,
            created_at BIGINT NOT NULL,
            PRIMARY KEY (path, send_key)
        )""",
    ],
    # 8: named streams' follow leases (`Store.named_follow`: until then a
    #    commit tells other processes' readers), and idle producers found by
    #    index to expire them (`Store.named_expire_producers`)
    [
        "ALTER TABLE named_streams ADD COLUMN followed_until BIGINT",
        "CREATE INDEX IF NOT EXISTS named_producers_updated ON named_producers (updated_at)",
    ],
    # 9: session retention (Store.delete_expired_sessions): sessions closed or
    #    expired long ago, and send keys past their window, found by index
    [
        "CREATE INDEX IF NOT EXISTS sessions_closed ON sessions (closed_at)",
        "CREATE INDEX IF NOT EXISTS sessions_expires ON sessions (expires_at)",
        "CREATE INDEX IF NOT EXISTS session_sent_keys_created ON session_sent_keys (created_at)",
    ],
    # 10: what a session's runs *settled* of each input stream: records from
    #    `settled_seq` to `next_seq` were taken by a run that has not finished
    #    with them yet (its next take, suspension or return settles them); a
    #    run that ends any other way (failed, crashed, cancelled, timed out)
    #    leaves them to the run that continues the session
    [
        "ALTER TABLE session_cursors ADD COLUMN settled_seq BIGINT",
        "UPDATE session_cursors SET settled_seq = next_seq",
    ],
    # 11: where the session's current run began taking each input stream:
    #    records before it (and settled) were taken by runs that have ended,
    #    whose journals no replay reads again, so retention may delete them
    #    while the session is open (`Store.delete_expired_sessions`)
    [
        "ALTER TABLE session_cursors ADD COLUMN run_from_seq BIGINT",
        "UPDATE session_cursors SET run_from_seq = 0",
    ],
]

SCHEMA_VERSION = len(MIGRATIONS)
