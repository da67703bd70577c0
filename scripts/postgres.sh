#!/usr/bin/env bash
# Start a throwaway PostgreSQL server for rayflow's tests and local development.
#
#   export RAYFLOW_TEST_POSTGRES_URL="$(scripts/postgres.sh)"      # start (or reuse), print URL
#   scripts/postgres.sh --stop                                     # stop it
#
# - Installs PostgreSQL from the Debian packages when no server binaries are
#   found (apt-get update once, then apt-get install -y postgresql), without
#   creating or starting Debian's own "main" cluster.
# - Initialises a cluster in $RAYFLOW_PG_DIR (default /tmp/rayflow-postgres;
#   or the first argument), listening on 127.0.0.1 ONLY (no other interface,
#   Unix socket inside the data directory), on $RAYFLOW_PG_PORT (default
#   55432; the next free port when that one is taken by something else).
# - Creates the superuser `rayflow` (password `rayflow`, or $RAYFLOW_PG_PASSWORD)
#   and the database `rayflow`.
# - Idempotent: when the server in that directory is already running it just
#   prints the URL again.
# - Only the URL goes to stdout; progress goes to stderr. The URL is also
#   written to $RAYFLOW_PG_DIR/url.
#
# The server is tuned for tests (fsync off): it is a scratch database, never a
# place for data you want to keep. RAYFLOW_PG_DURABLE=1 keeps fsync on.
# Runs as root (initdb/pg_ctl then run as the `postgres` user) or as any
# other user (they run as that user; installing packages then needs sudo).
set -euo pipefail

log() { echo "postgres.sh: $*" >&2; }

STOP=0
if [[ "${1:-}" == "--stop" ]]; then
    STOP=1
    shift
fi
DATA_DIR="${1:-${RAYFLOW_PG_DIR:-/tmp/rayflow-postgres}}"
PORT="${RAYFLOW_PG_PORT:-55432}"
PASSWORD="${RAYFLOW_PG_PASSWORD:-rayflow}"
PGDATA="$DATA_DIR/data"

as_root() {
    if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi
}

find_bindir() {
    local d
    d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    if [[ -n "$d" && -x "$d/initdb" ]]; then
        echo "$d"
    elif command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
        dirname "$(command -v initdb)"
    fi
}

BINDIR=$(find_bindir)
if [[ -z "$BINDIR" ]]; then
    [[ $STOP -eq 1 ]] && exit 0
    log "PostgreSQL not found; installing it from the Debian packages"
    start=$SECONDS
    # Debian would otherwise create and start its own cluster on port 5432.
    as_root mkdir -p /etc/postgresql-common/createcluster.d
    echo "create_main_cluster = false" |
        as_root tee /etc/postgresql-common/createcluster.d/rayflow.conf >/dev/null
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        postgresql >&2
    BINDIR=$(find_bindir)
    [[ -n "$BINDIR" ]] || { log "apt-get installed postgresql but no initdb was found"; exit 1; }
    log "installed PostgreSQL in $((SECONDS - start)) s"
fi

# initdb and the server refuse to run as root: use the `postgres` user then.
if [[ $(id -u) -eq 0 ]]; then
    RUN_USER=postgres
    id -u "$RUN_USER" >/dev/null 2>&1 ||
        useradd --system --home-dir /var/lib/postgresql --shell /bin/bash "$RUN_USER"
    as_pg() { runuser -u "$RUN_USER" -- "$@"; }
else
    RUN_USER=$(id -un)
    as_pg() { "$@"; }
fi

pg_running() {
    [[ -f "$PGDATA/postmaster.pid" ]] && as_pg "$BINDIR/pg_ctl" status -D "$PGDATA" >/dev/null 2>&1
}

running_port() {
    # line 4 of postmaster.pid is the port the server listens on
    sed -n 4p "$PGDATA/postmaster.pid"
}

url_for() {
    echo "postgresql://rayflow:${PASSWORD}@127.0.0.1:$1/rayflow"
}

if [[ $STOP -eq 1 ]]; then
    if pg_running; then
        as_pg "$BINDIR/pg_ctl" stop -D "$PGDATA" -m fast -w >&2
    else
        log "no server running in $PGDATA"
    fi
    exit 0
fi

if pg_running; then
    URL=$(url_for "$(running_port)")
    echo "$URL" >"$DATA_DIR/url"
    echo "$URL"
    exit 0
fi

port_free() {
    ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

start=$SECONDS
mkdir -p "$DATA_DIR"
if [[ $(id -u) -eq 0 ]]; then chown "$RUN_USER" "$DATA_DIR"; fi

if [[ ! -f "$PGDATA/PG_VERSION" ]]; then
    log "initialising a cluster in $PGDATA"
    pwfile="$DATA_DIR/.pwfile"
    printf '%s\n' "$PASSWORD" >"$pwfile"
    chmod 600 "$pwfile"
    if [[ $(id -u) -eq 0 ]]; then chown "$RUN_USER" "$pwfile"; fi
    # TCP: password (scram); Unix socket: only reachable by the server's user
    # (the socket lives in the 0700 data directory), trusted.
    as_pg "$BINDIR/initdb" -D "$PGDATA" -U rayflow --pwfile="$pwfile" \
        --auth-host=scram-sha-256 --auth-local=trust -E UTF8 --locale=C.UTF-8 \
        --no-instructions >/dev/null
    rm -f "$pwfile"
    fsync=off
    [[ "${RAYFLOW_PG_DURABLE:-0}" == "1" ]] && fsync=on
    cat >>"$PGDATA/postgresql.conf" <<EOF

# --- rayflow test server (scripts/postgres.sh) ---
listen_addresses = '127.0.0.1'
unix_socket_directories = '$PGDATA'
max_connections = 500
shared_buffers = 128MB
fsync = $fsync
synchronous_commit = $fsync
full_page_writes = $fsync
log_min_messages = warning
EOF
fi

# The port the cluster was started on before, else the default; move on to
# the next free port when something else holds it.
if [[ -f "$DATA_DIR/port" ]]; then PORT=$(cat "$DATA_DIR/port"); fi
for _ in $(seq 1 50); do
    port_free "$PORT" && break
    log "port $PORT is taken; trying $((PORT + 1))"
    PORT=$((PORT + 1))
done
port_free "$PORT" || { log "no free port found"; exit 1; }
echo "$PORT" >"$DATA_DIR/port"

log "starting PostgreSQL on 127.0.0.1:$PORT"
as_pg "$BINDIR/pg_ctl" start -D "$PGDATA" -w -t 60 -o "-p $PORT" \
    -l "$DATA_DIR/server.log" >/dev/null || {
    log "the server did not start; its log:"
    tail -n 30 "$DATA_DIR/server.log" >&2
    exit 1
}

exists=$(as_pg "$BINDIR/psql" -h "$PGDATA" -p "$PORT" -U rayflow -d postgres -Atq \
    -c "SELECT 1 FROM pg_database WHERE datname = 'rayflow'")
if [[ "$exists" != "1" ]]; then
    as_pg "$BINDIR/createdb" -h "$PGDATA" -p "$PORT" -U rayflow rayflow
fi

URL=$(url_for "$PORT")
echo "$URL" >"$DATA_DIR/url"
log "ready in $((SECONDS - start)) s: $URL"
echo "$URL"
