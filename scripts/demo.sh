#!/usr/bin/env bash
# demo.sh: pgshift in front of a throwaway PostgreSQL 15 primary + 1 streaming
# replica, on this machine. Prints the DATABASE_URL; Ctrl-C stops everything.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PGBED="$ROOT/scripts/pgbed.sh"
# shellcheck source=scripts/ports.sh
source "$ROOT/scripts/ports.sh"

usage() {
  cat <<'EOF'
Usage: scripts/demo.sh [--port 6432] [--admin-port 6480] [--keep]

Builds pgshift (cargo build --release), starts a throwaway PostgreSQL 15
primary with one streaming replica (scripts/pgbed.sh), runs pgshift in front
of them and prints the DATABASE_URL to connect to. Ctrl-C stops everything.

  --port P         proxy port (default 6432; a free one is picked if busy)
  --admin-port P   admin/stats HTTP port (default 6480; same rule)
  --keep           keep the temp dir (cluster data, config, logs) on exit

Env: PGSHIFT_BIN=/path/to/binary runs that instead of building
target/release/pgshift (CI, or a stand-in while testing this script).
EOF
}

say() { printf '[demo] %s\n' "$*"; }
die() { printf '[demo] error: %s\n' "$*" >&2; exit 1; }

PORT=6432
ADMIN_PORT=6480
KEEP=0
while (($#)); do
  case "$1" in
    --port) PORT="${2:?--port needs a number}"; shift 2 ;;
    --port=*) PORT="${1#*=}"; shift ;;
    --admin-port) ADMIN_PORT="${2:?--admin-port needs a number}"; shift 2 ;;
    --admin-port=*) ADMIN_PORT="${1#*=}"; shift ;;
    --keep) KEEP=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown option '$1'" ;;
  esac
done
for p in "$PORT" "$ADMIN_PORT"; do
  if ! [[ "$p" =~ ^[0-9]+$ ]] || ((p < 1 || p > 65535)); then die "bad port: $p"; fi
done

# Print PORT if free, else a free port in 20000-32767 (and say so on stderr).
# Never 15432-15434 (reserved for another test bed) nor the ports in $3.
free_or_other() {
  local want="$1" what="$2" avoid=" ${3:-} " p
  if ! port_in_use "$want" && ! port_reserved "$want" && [[ "$avoid" != *" $want "* ]]; then
    printf '%s' "$want"
    return 0
  fi
  p="$(pick_port "$avoid")" || exit 1
  printf '[demo] %s port %s is busy: using %s instead\n' "$what" "$want" "$p" >&2
  printf '%s' "$p"
}

WORK=""
PID=""
# shellcheck disable=SC2317 # invoked by the EXIT trap
cleanup() {
  local rc=$? i
  # A second Ctrl-C or TERM must not cut the teardown short and leave PostgreSQL running.
  trap - EXIT
  trap '' INT TERM
  if [[ -n "$PID" ]] && kill -0 "$PID" 2>/dev/null; then
    say "stopping pgshift (pid $PID)"
    kill -TERM "$PID" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
      kill -0 "$PID" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$PID" 2>/dev/null || true
    wait "$PID" 2>/dev/null || true
  fi
  if [[ -n "$WORK" && -d "$WORK" ]]; then
    if ((KEEP)); then
      "$PGBED" stop "$WORK/cluster" || rc=1
      say "kept $WORK (restart the cluster: scripts/pgbed.sh start $WORK/cluster)"
    else
      "$PGBED" destroy "$WORK/cluster" >/dev/null || rc=1
      rm -rf "$WORK"
      say "stopped and removed everything"
    fi
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [[ -n "${PGSHIFT_BIN:-}" ]]; then
  BIN="$(type -P -- "$PGSHIFT_BIN")" || die "PGSHIFT_BIN=$PGSHIFT_BIN is not an executable"
  [[ "$BIN" == /* ]] || BIN="$PWD/$BIN"
fi
cd "$ROOT"
"$PGBED" install

if [[ -n "${PGSHIFT_BIN:-}" ]]; then
  say "using PGSHIFT_BIN=$BIN (no build)"
else
  say "building pgshift (cargo build --release)"
  cargo build --release
  BIN="$ROOT/target/release/pgshift"
fi
[[ -x "$BIN" ]] || die "$BIN is not an executable"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/pgshift-demo.XXXXXX")"
chmod 0755 "$WORK" # the postgres user must reach the cluster inside
"$PGBED" start "$WORK/cluster" --replicas 1
PRIMARY_PORT="" REPLICA_PORTS=""
# shellcheck source=/dev/null
source "$WORK/cluster/ports.env"
REPLICA_PORT="${REPLICA_PORTS%% *}"

PORT="$(free_or_other "$PORT" proxy "$PRIMARY_PORT $REPLICA_PORTS")"
ADMIN_PORT="$(free_or_other "$ADMIN_PORT" admin "$PRIMARY_PORT $REPLICA_PORTS $PORT")"

CONFIG="$WORK/pgshift.toml"
cat >"$CONFIG" <<EOF
[proxy]
listen = "127.0.0.1:$PORT"
pool_mode = "transaction"
default_pool_size = 20
[auth]
type = "scram-sha-256"
[[auth.users]]
name = "app"
password = "app"
[tls]
mode = "prefer"
cert = "$ROOT/certs/server.crt"
key = "$ROOT/certs/server.key"
[primary]
host = "127.0.0.1"
port = $PRIMARY_PORT
[[replicas]]
host = "127.0.0.1"
port = $REPLICA_PORT
[routing]
read_write_split = true
[admin]
listen = "127.0.0.1:$ADMIN_PORT"
admin_users = ["app"]
EOF

LOG="$WORK/pgshift.log"
say "starting $BIN --config $CONFIG (log: $LOG)"
"$BIN" --config "$CONFIG" >"$LOG" 2>&1 &
PID=$!

# Wait until the proxy answers SELECT 1 (at most 60 s).
deadline=$((SECONDS + 60))
until PGPASSWORD=app PGCONNECT_TIMEOUT=2 psql -X -At -h 127.0.0.1 -p "$PORT" -U app -d app \
  -c 'SELECT 1' 2>/dev/null | grep -qx 1; do
  if ! kill -0 "$PID" 2>/dev/null; then
    tail -n 30 "$LOG" >&2 || true
    die "pgshift exited before accepting connections (log above)"
  fi
  if ((SECONDS >= deadline)); then
    tail -n 30 "$LOG" >&2 || true
    die "pgshift did not answer SELECT 1 on port $PORT within 60 s (log above)"
  fi
  sleep 0.2
done

URL="postgres://app:app@127.0.0.1:$PORT/app"
LINE="======================================================================="
cat <<EOF

$LINE
 pgshift is up (primary 127.0.0.1:$PRIMARY_PORT, replica 127.0.0.1:$REPLICA_PORT)

   DATABASE_URL=$URL

   try:   psql "$URL"
   TLS:   psql "postgres://app:app@localhost:$PORT/app?sslmode=verify-full&sslrootcert=$ROOT/certs/ca.crt"
   stats: http://127.0.0.1:$ADMIN_PORT/stats
   console: psql "postgres://app:app@127.0.0.1:$PORT/pgbouncer" -c "SHOW POOLS"
   logs:  $LOG

 Ctrl-C stops everything.
$LINE

EOF

STATUS=0
wait "$PID" || STATUS=$?
PID=""
say "pgshift exited with status $STATUS (log: $LOG)"
exit "$STATUS"
