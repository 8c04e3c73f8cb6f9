# shellcheck shell=bash
# shellcheck disable=SC2034 # variables set here are read by the scripts that source this file
# bench/lib.sh: the test bed shared by the bench/*.sh scripts that start PostgreSQL.
#
# Sourced, not run. Provides: PgBouncer install, pgshift build, throwaway PostgreSQL 15 clusters
# (scripts/pgbed.sh) in a temp dir (the bed, and a second "target" one for migration benchmarks),
# pgshift (one or several named instances, optionally with the admin port) and PgBouncer started in
# front of its primary with the same pool settings, optional client TLS on all of them, one pgbench
# run recorded as a results.tsv row, the admin API, process CPU/RSS readers, host facts for
# RESULTS.md, and one cleanup trap that stops everything it started. Nothing here touches ports
# 15432-15434 (another bed's).
#
# Settings read from the environment (defaults in brackets):
#   POOL_SIZE [20]        server connections per pool, both poolers, toward the primary
#   WORKERS [0]           pgshift runtime threads (0 = one per core)
#   MAX_CLIENTS [12000]   max_client_conn of both poolers
#   REPLICAS [0]          streaming replicas (pgshift sends reads there; PgBouncer has only the primary)
#   PGSHIFT_BIN           run this pgshift binary instead of building target/release/pgshift
#   PGSHIFT_LOG [info]    pgshift's log filter (its default level)
#   PGBOUNCER_BIN         PgBouncer binary [$PGBOUNCER, else ../shared/tools/bin/pgbouncer-1.25.2
#                         beside this checkout when present, else pgbouncer on PATH, else
#                         /usr/sbin/pgbouncer, installed with apt-get when missing]
#   PGBOUNCER             the same (a PgBouncer binary path); PGBOUNCER_BIN wins when both are set
#   KEEP [0]              1: keep the temp dir (cluster, configs, logs) on exit
#   NOFILE [65536]        open-files limit to raise this shell (and so the poolers) to
#   TLS [0]               1: clients talk TLS to the poolers (pgshift [tls] mode = "require", PgBouncer
#                         client_tls_sslmode = require, both with certs/server.{crt,key}; pgbench with
#                         PGSSLMODE=require); toward PostgreSQL both poolers stay plain
#   DIRECT_TLS [=TLS]     1: also turn ssl on in the bed's primary (same certificate) and run direct
#                         pgbench with PGSSLMODE=require; 0: direct stays plain
#   PGSHIFT_ADMIN [0]     1: the default pgshift instance gets an admin port (named instances choose)
#   ADMIN_TOKEN [random]  bearer token of the admin ports
#   PGBOUNCER_EXTRA       lines appended to PgBouncer's [pgbouncer] section (e.g. server_login_retry = 1);
#                         PgBouncer 1.21 and newer also get max_prepared_statements = 200 unless
#                         these lines set it

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$BENCH_DIR/.." && pwd)"
# shellcheck source=scripts/ports.sh
source "$ROOT/scripts/ports.sh"
PGBED="$ROOT/scripts/pgbed.sh"

POOL_SIZE=${POOL_SIZE:-20}
WORKERS=${WORKERS:-0}
MAX_CLIENTS=${MAX_CLIENTS:-12000}
REPLICAS=${REPLICAS:-0}
KEEP=${KEEP:-0}
TLS=${TLS:-0}
DIRECT_TLS=${DIRECT_TLS:-$TLS}
export PGHOST=127.0.0.1 PGUSER=app PGPASSWORD=app PGDATABASE=app
CLK_TCK=$(getconf CLK_TCK)
BENCH_NAME=${BENCH_NAME:-bench}
# Bearer token of the admin port of pgshift instances started with one (POST endpoints).
ADMIN_TOKEN=${ADMIN_TOKEN:-bench-$RANDOM$RANDOM}

WORK=""
OUTDIR=${OUTDIR:-}
PRIMARY_PORT=""
REPLICA_PORTS=""
TARGET_PORT=""
TARGET_REPLICA_PORTS=""
PGSHIFT_PORT=""
PGSHIFT_PID=""
PGBOUNCER_PORT=""
PGBOUNCER_PID=""
PGBOUNCER_BIN=${PGBOUNCER_BIN:-}
PGSHIFT=""
BG_PIDS=()
# pgshift instances by name ("pgshift" is the default one): port, pid, admin port ("" = none).
declare -A PGS_PORT=() PGS_PID=() PGS_ADMIN=()

say() { printf '[%s] %s\n' "$BENCH_NAME" "$*" >&2; }
die() { printf '[%s] error: %s\n' "$BENCH_NAME" "$*" >&2; exit 1; }
as_root() { if ((EUID == 0)); then "$@"; else sudo -n -- "$@"; fi; }

# ---- ports -------------------------------------------------------------------------------------

taken_ports() {
  printf '%s' "$PRIMARY_PORT $REPLICA_PORTS $TARGET_PORT $TARGET_REPLICA_PORTS $PGBOUNCER_PORT"
  printf ' %s' "${PGS_PORT[@]}" "${PGS_ADMIN[@]}"
}

# ---- limits, tools -----------------------------------------------------------------------------

# Raise this shell's open-files limit (children inherit it): 10,000 idle clients need a descriptor
# each in the pooler and in the client process.
raise_nofile() {
  local want=${NOFILE:-65536} cur hard
  cur=$(ulimit -n)
  if [[ "$cur" != unlimited ]] && ((cur < want)); then
    ulimit -n "$want" 2>/dev/null || {
      hard=$(ulimit -Hn)
      if [[ "$hard" == unlimited ]] || ((hard > cur)); then ulimit -n "$hard" 2>/dev/null || true; fi
    }
  fi
  say "open-files limit: $(ulimit -n) (hard $(ulimit -Hn))"
}

ensure_postgres() {
  "$PGBED" install >&2 || die "PostgreSQL 15 install failed"
  command -v pgbench >/dev/null || die "pgbench not found (package postgresql-client-15)"
  command -v psql >/dev/null || die "psql not found (package postgresql-client-15)"
}

# Install PgBouncer with apt-get if missing. Debian's package would start its own service on
# port 6432: a temporary policy-rc.d forbids that (we run the binary ourselves).
ensure_pgbouncer() {
  local beside="$ROOT/../shared/tools/bin/pgbouncer-1.25.2"
  if [[ -z "$PGBOUNCER_BIN" && -n "${PGBOUNCER:-}" ]]; then PGBOUNCER_BIN=$PGBOUNCER; fi
  if [[ -z "$PGBOUNCER_BIN" && -x "$beside" ]]; then
    # The 1.25.2 build links c-ares, which Debian's pgbouncer package would bring.
    if ldd "$beside" 2>/dev/null | grep -q 'libcares.*not found'; then
      say "PgBouncer 1.25.2 needs libc-ares2: apt-get install -y libc-ares2"
      as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libc-ares2 >&2 || true
    fi
    if ldd "$beside" 2>/dev/null | grep -q 'not found'; then
      say "PgBouncer 1.25.2 beside this checkout lacks libraries; using Debian's PgBouncer"
    else
      PGBOUNCER_BIN=$(cd "$(dirname "$beside")" && pwd)/pgbouncer-1.25.2
    fi
  fi
  if [[ -n "$PGBOUNCER_BIN" ]]; then
    [[ -x "$PGBOUNCER_BIN" ]] || die "PgBouncer binary $PGBOUNCER_BIN is not executable"
    return 0
  fi
  PGBOUNCER_BIN=$(command -v pgbouncer || echo /usr/sbin/pgbouncer)
  [[ -x "$PGBOUNCER_BIN" ]] && return 0
  say "PgBouncer not found: apt-get install -y pgbouncer"
  local policy=/usr/sbin/policy-rc.d made=0
  if [[ ! -e "$policy" ]]; then
    printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null && as_root chmod 0755 "$policy" && made=1
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 || true
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbouncer >&2 || {
    ((made)) && as_root rm -f "$policy"
    die "apt-get install pgbouncer failed"
  }
  ((made)) && as_root rm -f "$policy"
  PGBOUNCER_BIN=$(command -v pgbouncer || echo /usr/sbin/pgbouncer)
  [[ -x "$PGBOUNCER_BIN" ]] || die "pgbouncer installed but not found"
}

# ensure_pgbouncer, then say which PgBouncer runs.
find_pgbouncer() {
  ensure_pgbouncer
  say "PgBouncer: $PGBOUNCER_BIN ($("$PGBOUNCER_BIN" --version 2>/dev/null | head -1))"
}

# True when PGBOUNCER_BIN is 1.21 or newer (it can track prepared statements in transaction mode).
pgbouncer_tracks_prepared() {
  local v major minor
  v=$("$PGBOUNCER_BIN" --version 2>/dev/null | head -1 | awk '{print $2}')
  major=${v%%.*} minor=${v#*.} minor=${minor%%.*}
  [[ "$major" =~ ^[0-9]+$ && "$minor" =~ ^[0-9]+$ ]] || return 1
  ((major > 1 || (major == 1 && minor >= 21)))
}

# Build pgshift (release) unless PGSHIFT_BIN names a binary; sets PGSHIFT.
ensure_pgshift() {
  if [[ -n "${PGSHIFT_BIN:-}" ]]; then
    PGSHIFT="$(type -P -- "$PGSHIFT_BIN")" || die "PGSHIFT_BIN=$PGSHIFT_BIN is not an executable"
    [[ "$PGSHIFT" == /* ]] || PGSHIFT="$PWD/$PGSHIFT"
    say "using PGSHIFT_BIN=$PGSHIFT (no build)"
  else
    local target=${CARGO_TARGET_DIR:-target}
    [[ "$target" == /* ]] || target="$ROOT/$target"
    say "building pgshift: cargo build --release (a first build takes minutes)"
    (cd "$ROOT" && cargo build --release --quiet) >&2 || die "cargo build --release failed"
    PGSHIFT="$target/release/pgshift"
  fi
  [[ -x "$PGSHIFT" ]] || die "$PGSHIFT is not an executable"
}

# ---- processes ---------------------------------------------------------------------------------

# utime+stime of a process, all threads, in clock ticks (-1 if gone).
cpu_ticks() {
  local s
  s=$(cat /proc/"$1"/stat 2>/dev/null) || { echo -1; return; }
  s=${s##*) }
  awk '{print $12 + $13}' <<<"$s"
}
# utime and stime of a process in clock ticks: "U S".
ticks_us() { local s; s=$(cat /proc/"$1"/stat) && s=${s##*) } && awk '{print $12, $13}' <<<"$s"; }
rss_kb() { awk '/^VmRSS/{print $2; f=1} END{if (!f) print -1}' /proc/"$1"/status 2>/dev/null || echo -1; }
nofile_of() { awk '/^Max open files/{print $4}' /proc/"$1"/limits 2>/dev/null || echo '?'; }
ticks_to_s() { awk -v t="$1" -v hz="$CLK_TCK" 'BEGIN{printf "%.2f", t/hz}'; }

# Wait until PORT answers SELECT 1 as app (60 s), while PID lives.
wait_ready() {
  local name=$1 port=$2 pid=$3 log=$4 deadline=$((SECONDS + 60))
  until PGCONNECT_TIMEOUT=2 psql -X -At -p "$port" -c 'SELECT 1' 2>/dev/null | grep -qx 1; do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 20 "$log" >&2 || true
      die "$name exited before accepting connections (log: $log)"
    fi
    ((SECONDS < deadline)) || { tail -n 20 "$log" >&2 || true; die "$name did not answer on port $port within 60 s"; }
    sleep 0.2
  done
}

stop_pid() { # pid signal: signal, wait up to 10 s, then SIGKILL
  local pid=$1 sig=${2:-TERM} i
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 0
  kill "-$sig" "$pid" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

# ---- idle clients ------------------------------------------------------------------------------

HP=""
OPENED=0
# Log N clients in on PORT with bench/holdconns.py (startup + SCRAM, one after another) and hold them
# idle; return once all are up or it gave up (CONNECT_LIMIT s, default 600). Sets HP (its pid, also in
# BG_PIDS for the cleanup trap) and OPENED (how many it opened). Its log: OUTDIR/holdconns-TAG.log.
hold_clients() {
  local port=$1 n=$2 tag=$3 ready="$OUTDIR/ready-$3" s0=$SECONDS limit=${CONNECT_LIMIT:-600}
  rm -f "$ready"
  python3 "$BENCH_DIR/holdconns.py" --port "$port" -n "$n" --hold 3600 --max-connect-time "$limit" \
    --ready-file "$ready" >"$OUTDIR/holdconns-$tag.log" 2>&1 &
  HP=$!
  BG_PIDS=("$HP")
  while [[ ! -s "$ready" ]] && kill -0 "$HP" 2>/dev/null && ((SECONDS - s0 < limit + 30)); do sleep 0.1; done
  OPENED=$(awk '{print $2}' "$ready" 2>/dev/null)
  OPENED=${OPENED:-0}
}
release_clients() { stop_pid "$HP" TERM; HP=""; BG_PIDS=(); }

# ---- the bed -----------------------------------------------------------------------------------

# Temp dir + cluster (primary and REPLICAS replicas); sets WORK, PRIMARY_PORT, REPLICA_PORTS.
start_bed() {
  WORK="$(mktemp -d "${TMPDIR:-/tmp}/pgsb.XXXXXX")"
  chmod 0755 "$WORK" # the postgres OS user must reach the cluster and PgBouncer's files
  say "starting PostgreSQL 15 (primary + $REPLICAS replica(s)) in $WORK/cluster"
  "$PGBED" start "$WORK/cluster" --replicas "$REPLICAS" >"$WORK/pgbed.log" 2>&1 ||
    { cat "$WORK/pgbed.log" >&2; die "pgbed.sh start failed"; }
  # shellcheck source=/dev/null
  source "$WORK/cluster/ports.env"
  say "primary on port $PRIMARY_PORT${REPLICA_PORTS:+, replicas on $REPLICA_PORTS}"
  if ((TLS && DIRECT_TLS)); then enable_primary_tls; fi
}

# A second cluster (primary only, plus $1 replicas) in $WORK/target: the new database of a migration.
# Sets TARGET_PORT, TARGET_REPLICA_PORTS. start_bed first (it makes WORK).
start_target_bed() {
  local n=${1:-0}
  say "starting the migration target cluster (primary + $n replica(s)) in $WORK/target"
  "$PGBED" start "$WORK/target" --replicas "$n" >"$WORK/pgbed-target.log" 2>&1 ||
    { cat "$WORK/pgbed-target.log" >&2; die "pgbed.sh start (target) failed"; }
  TARGET_PORT=$(sed -n 's/^PRIMARY_PORT=//p' "$WORK/target/ports.env")
  TARGET_REPLICA_PORTS=$(sed -n 's/^REPLICA_PORTS="\(.*\)"$/\1/p' "$WORK/target/ports.env")
  [[ -n "$TARGET_PORT" ]] || die "no PRIMARY_PORT in $WORK/target/ports.env"
  say "target primary on port $TARGET_PORT${TARGET_REPLICA_PORTS:+, replicas on $TARGET_REPLICA_PORTS}"
}

# The dev certificate (certs/server.crt, .key) copied where the postgres OS user (PostgreSQL,
# PgBouncer) can read it and nobody else can: $WORK/tls. Idempotent.
tls_files() {
  local d="$WORK/tls"
  [[ -f "$d/server.key" ]] && return 0
  [[ -f "$ROOT/certs/server.crt" && -f "$ROOT/certs/server.key" ]] || die "certs/server.crt or .key missing (certs/gen.sh makes them)"
  mkdir -p "$d"
  cp "$ROOT/certs/server.crt" "$ROOT/certs/server.key" "$ROOT/certs/ca.crt" "$d/"
  chmod 0600 "$d/server.key"
  chmod 0644 "$d/server.crt" "$d/ca.crt"
  chmod 0755 "$d"
  if ((EUID == 0)); then chown -R postgres: "$d"; fi
}

# ssl = on in the bed's primary with the dev certificate (a reload is enough since PostgreSQL 10). pg_hba's
# "host" lines accept TLS and plain connections alike; the poolers keep connecting to it in plain.
enable_primary_tls() {
  tls_files
  psql -X -q -p "$PRIMARY_PORT" -U postgres -d postgres \
    -c "ALTER SYSTEM SET ssl_cert_file = '$WORK/tls/server.crt'" \
    -c "ALTER SYSTEM SET ssl_key_file = '$WORK/tls/server.key'" \
    -c "ALTER SYSTEM SET ssl = on" -c 'SELECT pg_reload_conf()' >/dev/null || die "could not turn ssl on in the primary"
  local i
  for ((i = 0; i < 50; i++)); do
    [[ "$(PGSSLMODE=require psql -X -At -p "$PRIMARY_PORT" -c 'SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()' 2>/dev/null)" == t ]] &&
      { say "primary: ssl on (direct pgbench connects with sslmode=require)"; return 0; }
    sleep 0.1
  done
  die "the primary does not accept sslmode=require after ssl = on (see $WORK/cluster/logs/node0.log)"
}

# pgbench tables at SCALE on the primary (or on the server at PORT): init_pgbench SCALE [PORT]
init_pgbench() {
  local port=${2:-$PRIMARY_PORT}
  say "pgbench -i -s $1 on port $port$([[ $port == "$PRIMARY_PORT" ]] && echo " (the primary)")"
  pgbench -i -q -s "$1" -p "$port" >"$WORK/pgbench-init-$port.log" 2>&1 ||
    { cat "$WORK/pgbench-init-$port.log" >&2; die "pgbench -i on port $port failed"; }
  psql -X -q -p "$port" -c 'VACUUM ANALYZE' >/dev/null 2>&1 || true
}

# Start a pgshift instance NAME in front of the bed's primary (and replicas); records PGS_PORT[NAME],
# PGS_PID[NAME], PGS_ADMIN[NAME]. Config $WORK/NAME.toml, log $WORK/NAME.log.
#   SPLIT: [routing] read_write_split, true|false|auto (auto: true when there are replicas)
#   ADMIN: 1 = admin port on a free port of 127.0.0.1 with token ADMIN_TOKEN; 0 = off
#   EXTRA: TOML appended verbatim (e.g. a [migration] section)
# With TLS=1 clients must use TLS ([tls] mode = "require", the dev certificate).
start_pgshift_as() {
  local name=$1 split=${2:-auto} admin=${3:-0} extra=${4:-} cfg="$WORK/$1.toml" log="$WORK/$1.log" r port aport=""
  if [[ $split == auto ]]; then if ((REPLICAS > 0)); then split=true; else split=false; fi; fi
  port=$(pick_port "$(taken_ports)")
  if ((admin)); then aport=$(pick_port "$(taken_ports) $port"); fi
  if ((TLS)); then tls_files; fi
  {
    cat <<EOF
# Written by bench/lib.sh
[proxy]
listen = "127.0.0.1:$port"
pool_mode = "transaction"
default_pool_size = $POOL_SIZE
max_client_conn = $MAX_CLIENTS
workers = $WORKERS

[auth]
type = "scram-sha-256"
[[auth.users]]
name = "app"
password = "app"

[primary]
host = "127.0.0.1"
port = $PRIMARY_PORT

[routing]
read_write_split = $split

[admin]
listen = "${aport:+127.0.0.1:$aport}"
token = "$ADMIN_TOKEN"
EOF
    if ((TLS)); then
      printf '\n[tls]\nmode = "require"\ncert = "%s"\nkey = "%s"\n' "$WORK/tls/server.crt" "$WORK/tls/server.key"
    fi
    for r in $REPLICA_PORTS; do printf '\n[[replicas]]\nhost = "127.0.0.1"\nport = %s\n' "$r"; done
    if [[ -n "$extra" ]]; then printf '\n%s\n' "$extra"; fi
  } >"$cfg"
  PGSHIFT_LOG=${PGSHIFT_LOG:-info} "$PGSHIFT" --config "$cfg" >>"$log" 2>&1 &
  PGS_PID[$name]=$!
  PGS_PORT[$name]=$port
  PGS_ADMIN[$name]=$aport
  wait_ready "$name" "$port" "${PGS_PID[$name]}" "$log"
  say "$name up on port $port${aport:+ (admin $aport)} (pid ${PGS_PID[$name]}, workers $WORKERS, pool $POOL_SIZE," \
    "split $split$( ((TLS)) && echo ", client TLS required"))"
}

stop_pgshift_as() {
  stop_pid "${PGS_PID[$1]:-}" TERM
  unset "PGS_PID[$1]" "PGS_PORT[$1]" "PGS_ADMIN[$1]"
}

# The default instance, "pgshift": admin port off unless PGSHIFT_ADMIN=1.
start_pgshift() {
  start_pgshift_as pgshift auto "${PGSHIFT_ADMIN:-0}"
  PGSHIFT_PORT=${PGS_PORT[pgshift]}
  PGSHIFT_PID=${PGS_PID[pgshift]}
}

# PgBouncer in transaction mode, same pool size, SCRAM with the verifier of user app read from
# pg_authid (so it can log in to PostgreSQL with the client's SCRAM keys), its unix socket in the
# temp dir. It refuses to run as root: -u drops to the postgres OS user. Toward PostgreSQL it is
# plain (server_tls_sslmode = disable, like pgshift's server_mode); with TLS=1 clients must use TLS.
start_pgbouncer() {
  local dir="$WORK/pgbouncer" verifier
  mkdir -p "$dir"
  if ((TLS)); then tls_files; fi
  PGBOUNCER_PORT=$(pick_port "$(taken_ports)")
  verifier=$(psql -X -At -p "$PRIMARY_PORT" -U postgres -d postgres \
    -c "SELECT rolpassword FROM pg_authid WHERE rolname = 'app'") || die "cannot read app's verifier from pg_authid"
  [[ "$verifier" == SCRAM-SHA-256\$* ]] || die "app's password is not a SCRAM verifier: '$verifier'"
  printf '"app" "%s"\n' "$verifier" >"$dir/userlist.txt"
  cat >"$dir/pgbouncer.ini" <<EOF
; Written by bench/lib.sh
[databases]
app = host=127.0.0.1 port=$PRIMARY_PORT dbname=app

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $PGBOUNCER_PORT
unix_socket_dir = $dir
auth_type = scram-sha-256
auth_file = $dir/userlist.txt
pool_mode = transaction
default_pool_size = $POOL_SIZE
max_client_conn = $MAX_CLIENTS
logfile = $dir/pgbouncer.log
pidfile = $dir/pgbouncer.pid
server_tls_sslmode = disable
EOF
  if [[ -n "${PGBOUNCER_EXTRA:-}" ]]; then printf '%s\n' "$PGBOUNCER_EXTRA" >>"$dir/pgbouncer.ini"; fi
  if pgbouncer_tracks_prepared && [[ "${PGBOUNCER_EXTRA:-}" != *max_prepared_statements* ]]; then
    printf 'max_prepared_statements = 200\n' >>"$dir/pgbouncer.ini"
  fi
  if ((TLS)); then
    printf 'client_tls_sslmode = require\nclient_tls_cert_file = %s\nclient_tls_key_file = %s\n' \
      "$WORK/tls/server.crt" "$WORK/tls/server.key" >>"$dir/pgbouncer.ini"
  fi
  chmod 0600 "$dir/userlist.txt"
  if ((EUID == 0)); then
    chown -R postgres: "$dir"
    "$PGBOUNCER_BIN" -u postgres "$dir/pgbouncer.ini" >>"$dir/stderr.log" 2>&1 &
  else
    "$PGBOUNCER_BIN" "$dir/pgbouncer.ini" >>"$dir/stderr.log" 2>&1 &
  fi
  PGBOUNCER_PID=$!
  wait_ready pgbouncer "$PGBOUNCER_PORT" "$PGBOUNCER_PID" "$dir/pgbouncer.log"
  say "PgBouncer up on port $PGBOUNCER_PORT (pid $PGBOUNCER_PID, pool $POOL_SIZE, open files $(nofile_of "$PGBOUNCER_PID")$( ((TLS)) && echo ", client TLS required"))"
}

stop_pgshift() { stop_pgshift_as pgshift; PGSHIFT_PID=""; PGSHIFT_PORT=""; }
stop_pgbouncer() { stop_pid "$PGBOUNCER_PID" TERM; PGBOUNCER_PID=""; }

# Cleanup for the EXIT trap: background helpers, poolers, the cluster, the temp dir. Pooler logs
# are copied to OUTDIR first.
# shellcheck disable=SC2317 # invoked by the trap
bench_cleanup() {
  local rc=$? p
  trap - EXIT INT TERM
  for p in "${BG_PIDS[@]}"; do stop_pid "$p" TERM; done
  for p in "${!PGS_PID[@]}"; do stop_pgshift_as "$p"; done
  PGSHIFT_PID=""
  stop_pgbouncer
  if [[ -n "$WORK" && -d "$WORK" ]]; then
    if [[ -n "$OUTDIR" && -d "$OUTDIR" ]]; then
      for p in "$WORK"/*.log; do
        case ${p##*/} in pgbed*.log | pgbench-init*.log) ;; *) cp "$p" "$OUTDIR/" 2>/dev/null || true ;; esac
      done
      cp "$WORK/pgbouncer/pgbouncer.log" "$OUTDIR/pgbouncer.log" 2>/dev/null || true
    fi
    for p in "$WORK/cluster" "$WORK/target"; do
      [[ -f "$p/.pgbed" ]] || continue
      if ((KEEP)); then
        "$PGBED" stop "$p" >/dev/null 2>&1 || rc=1
      else
        "$PGBED" destroy "$p" >/dev/null 2>&1 || { say "pgbed destroy $p failed"; rc=1; }
      fi
    done
    if ((KEEP)); then say "kept $WORK (clusters stopped)"; else rm -rf "$WORK"; fi
  fi
  [[ -n "${NOTE:-}" ]] && say "NOTE: $NOTE"
  exit "$rc"
}

install_trap() {
  [[ -n "${NOTE:-}" ]] && say "NOTE: $NOTE"
  trap bench_cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
}

# Everything up: tools, limits, cluster, pgbench tables (if SCALE given), both poolers.
setup_all() {
  local scale=${1:-}
  raise_nofile
  ensure_postgres
  ensure_pgbouncer
  ensure_pgshift
  install_trap
  start_bed
  [[ -n "$scale" ]] && init_pgbench "$scale"
  start_pgbouncer
  start_pgshift
}

# Port and pid of a target name (direct | pgbouncer | a pgshift instance's name, "pgshift" the default).
target_port() {
  case $1 in
    direct) echo "$PRIMARY_PORT" ;;
    pgbouncer) echo "$PGBOUNCER_PORT" ;;
    *) [[ -n "${PGS_PORT[$1]:-}" ]] || return 1; echo "${PGS_PORT[$1]}" ;;
  esac
}
target_pid() {
  case $1 in
    direct) echo "" ;;
    pgbouncer) echo "$PGBOUNCER_PID" ;;
    *) [[ -n "${PGS_PID[$1]:-}" ]] || return 1; echo "${PGS_PID[$1]}" ;;
  esac
}

# libpq sslmode for a target: with TLS=1 require (direct: only with DIRECT_TLS=1, else disable);
# empty with TLS=0 (libpq's default, prefer: every server here answers plain).
target_sslmode() {
  ((TLS)) || return 0
  if [[ $1 == direct ]] && ! ((DIRECT_TLS)); then echo disable; else echo require; fi
}

target_sslmode_or_default() {
  local ssl
  ssl=$(target_sslmode "$1")
  echo "${ssl:-${PGSSLMODE:-prefer}}"
}

# pgbench against TARGET (port and sslmode set): target_pgbench TARGET ARGS...
target_pgbench() {
  local t=$1
  shift
  PGSSLMODE=$(target_sslmode_or_default "$t") pgbench -p "$(target_port "$t")" "$@"
}

# "TLSv1.3 TLS_AES_256_GCM_SHA384" as negotiated by OpenSSL's client with TARGET, or "plain".
target_tls_cipher() {
  local out
  [[ "$(target_sslmode "$1")" == require ]] || { echo plain; return 0; }
  out=$(timeout 10 openssl s_client -starttls postgres -connect "127.0.0.1:$(target_port "$1")" </dev/null 2>/dev/null)
  awk '/^New, /{p=$2; sub(",", "", p)} /^ *Protocol *:/{p=$3} /Cipher is /{c=$NF} /^ *Cipher *:/{c=$3}
       END{if (c == "") print "?"; else print p " " c}' <<<"$out"
}

# ---- one pgbench run ---------------------------------------------------------------------------

# pgbench arguments of a mode "<script>-<protocol>": select = -S, tpcb = the built-in TPC-B-like,
# any other script name = -f CUSTOM_SCRIPTS[name] (an associative array the caller fills).
declare -A CUSTOM_SCRIPTS=()
mode_args() {
  local script=${1%-*} proto=${1##*-}
  [[ $1 == *-* ]] || return 1
  case $proto in simple | extended | prepared) ;; *) return 1 ;; esac
  case $script in
    select) echo "-S -M $proto" ;;
    tpcb) echo "-M $proto" ;;
    *) [[ -n "${CUSTOM_SCRIPTS[$script]:-}" ]] || return 1; echo "-f ${CUSTOM_SCRIPTS[$script]} -M $proto" ;;
  esac
}

RES_HEADER=$'rep\ttarget\tmode\tclients\tstatus\ttps\tlat_ms\txacts\tcpu_s\tcpu_s_per_10k\trss_kb_after\terror'
RUN_FMT='%-3s %-16s %-16s %7s %-6s %10s %9s %9s %7s %8s %s\n'
# Column titles of the lines pgbench_run prints.
pgbench_run_title() {
  # shellcheck disable=SC2059
  printf "$RUN_FMT" rep target mode clients status tps lat_ms xacts cpu_s s/10k error
}

# One timed pgbench run: pgbench_run REP TARGET MODE CLIENTS [MORE PGBENCH ARGS]. Uses DURATION, JOBS,
# OUTDIR; appends a row to $RES (RES_HEADER columns) and prints a line. With TXLOG=1 pgbench also
# writes per-transaction logs (-l). A run that exits non-zero, reports failed transactions, aborts or
# outlives DURATION+60 s (HANG) is recorded with its first error line. Sets RUN_STATUS, RUN_TPS,
# RUN_LAT, RUN_XACTS, RUN_CPU, RUN_PER10K, RUN_ERR, RUN_LOG, RUN_TXLOGS (comma-separated -l files)
# and RUN_T0 (the pooler's CPU ticks before the run, -1 for direct).
pgbench_run() {
  local rep=$1 t=$2 mode=$3 c=$4 pid t0=-1 t1=-1 rss=-1 rc failed prefix
  RUN_T0=-1
  shift 4
  pid=$(target_pid "$t")
  RUN_LOG=$OUTDIR/r${rep}-${t}-${mode}-c${c}.log
  prefix=${RUN_LOG%.log}
  rm -f "$prefix".[0-9]*
  if [[ -n "$pid" ]] && ! kill -0 "$pid" 2>/dev/null; then
    say "$t (pid $pid) is gone: see its log"
    pid=""
  fi
  [[ -n "$pid" ]] && t0=$(cpu_ticks "$pid")
  RUN_T0=$t0
  local txlog=()
  ((${TXLOG:-0})) && txlog=(-l "--log-prefix=$prefix")
  # shellcheck disable=SC2046 # mode_args is meant to split
  timeout -k 5 $((DURATION + 60)) env PGSSLMODE="$(target_sslmode_or_default "$t")" pgbench -p "$(target_port "$t")" \
    -n $(mode_args "$mode") -c "$c" -j "$JOBS" -T "$DURATION" "${txlog[@]}" "$@" >"$RUN_LOG" 2>&1
  rc=$?
  [[ -n "$pid" ]] && { t1=$(cpu_ticks "$pid"); rss=$(rss_kb "$pid"); }
  RUN_TPS=$(grep -oP 'tps = \K[0-9.]+(?= \(without initial connection time\))' "$RUN_LOG" | head -1)
  RUN_LAT=$(grep -oP 'latency average = \K[0-9.]+' "$RUN_LOG" | head -1)
  RUN_XACTS=$(grep -oP 'number of transactions actually processed: \K[0-9]+' "$RUN_LOG" | head -1)
  failed=$(grep -oP 'number of failed transactions: \K[0-9]+' "$RUN_LOG" | head -1)
  RUN_ERR=$(grep -m1 -E 'error|ERROR|FATAL|aborted|could not' "$RUN_LOG" | tr '\t' ' ' | cut -c1-220)
  RUN_STATUS=ok
  if ((rc == 124 || rc == 137)); then
    RUN_STATUS=HANG
    RUN_ERR="pgbench killed after $((DURATION + 60))s: $RUN_ERR"
  elif ((rc != 0)) || [[ -z "$RUN_TPS" || "${failed:-0}" != 0 ]] || grep -q 'Run was aborted' "$RUN_LOG"; then
    RUN_STATUS=FAIL
    [[ -n "$RUN_ERR" ]] || RUN_ERR="pgbench exit $rc: $(tail -n 1 "$RUN_LOG" | cut -c1-200)"
  fi
  RUN_CPU=n/a
  RUN_PER10K=n/a
  if [[ -n "$pid" ]] && ((t0 >= 0 && t1 >= 0)); then
    RUN_CPU=$(ticks_to_s $((t1 - t0)))
    if [[ -n "$RUN_XACTS" ]] && ((RUN_XACTS > 0)); then
      RUN_PER10K=$(awk -v s="$RUN_CPU" -v x="$RUN_XACTS" 'BEGIN{printf "%.3f", s/x*10000}')
    fi
  fi
  RUN_TXLOGS=$(compgen -G "$prefix.[0-9]*" | paste -sd, -)
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$rep" "$t" "$mode" "$c" "$RUN_STATUS" "${RUN_TPS:-}" \
    "${RUN_LAT:-}" "${RUN_XACTS:-}" "$RUN_CPU" "$RUN_PER10K" "$rss" "$RUN_ERR" >>"$RES"
  # shellcheck disable=SC2059
  printf "$RUN_FMT" "$rep" "$t" "$mode" "$c" "$RUN_STATUS" "${RUN_TPS:--}" "${RUN_LAT:--}" "${RUN_XACTS:--}" "$RUN_CPU" \
    "$RUN_PER10K" "$([[ $RUN_STATUS == ok ]] || echo "$RUN_ERR")"
}

# WARMUP seconds of pgbench against TARGET, its output in LOG; a failure is said, not fatal:
# warmup TARGET LOG [PGBENCH ARGS] (default: select-only, simple protocol, 16 clients). Uses JOBS.
warmup() {
  local t=$1 log=$2
  shift 2
  ((WARMUP > 0)) || return 0
  (($# > 0)) || set -- -S -M simple -c 16
  target_pgbench "$t" -n -j "$JOBS" -T "$WARMUP" "$@" >"$log" 2>&1 ||
    say "warmup of $t failed: $(grep -m1 -iE 'error|fatal' "$log")"
}

# ---- facts for RESULTS.md ----------------------------------------------------------------------

pgshift_commit() {
  local c
  c=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null) || { echo unknown; return; }
  if [[ -n "$(git -C "$ROOT" status --porcelain --untracked-files=no -- src Cargo.toml Cargo.lock 2>/dev/null)" ]]; then
    c="$c+dirty"
  fi
  echo "$c"
}

# Markdown bullet lines describing the host and the software versions.
host_facts_md() {
  local cpu pgv bv
  cpu=$(awk -F': ' '/^model name/{print $2; exit}' /proc/cpuinfo)
  pgv=$(psql -X -At -p "$PRIMARY_PORT" -c 'SHOW server_version' 2>/dev/null || echo '?')
  bv="(not used)"
  [[ -n "$PGBOUNCER_BIN" ]] && bv=$("$PGBOUNCER_BIN" --version 2>/dev/null | head -1 | awk '{print $2}')
  printf -- '- host: %s cores (nproc), CPU %s, kernel %s, %s GiB RAM; load average at start %s\n' \
    "$(nproc)" "${cpu:-unknown}" "$(uname -r)" "$(awk '/^MemTotal/{printf "%.0f", $2/1048576}' /proc/meminfo)" \
    "${LOAD_AT_START:-?}"
  printf -- '- PostgreSQL %s, PgBouncer %s, %s, pgshift %s\n' "$pgv" "${bv:-?}" \
    "$(pgbench --version | awk '{print "pgbench " $3}')" "$(pgshift_commit)"
}

LOAD_AT_START=$(cut -d' ' -f1-3 /proc/loadavg)

# ---- pgshift's admin port, replicas, the micro-benchmarks --------------------------------------

# GET PATH on instance NAME's admin port: admin_get NAME /stats
admin_get() {
  [[ -n "${PGS_ADMIN[$1]:-}" ]] || die "pgshift instance $1 has no admin port"
  curl -fsS --max-time 30 "http://127.0.0.1:${PGS_ADMIN[$1]}$2"
}
# POST JSON to PATH with the bearer token: admin_post NAME /migration/phase '{"phase":"dual_write"}' [TIMEOUT_S]
admin_post() {
  [[ -n "${PGS_ADMIN[$1]:-}" ]] || die "pgshift instance $1 has no admin port"
  curl -sS --max-time "${4:-120}" -X POST "http://127.0.0.1:${PGS_ADMIN[$1]}$2" -H "Authorization: Bearer $ADMIN_TOKEN" \
    -H 'Content-Type: application/json' -d "${3:-{\}}" -w '\n%{http_code}\n'
}

# Mirror state of a pgshift instance with [migration], from GET /migration:
# "PHASE QUEUE_DEPTH MIRRORED FAILED DIVERGED" (or "? 0 0 0 0" when it does not answer).
migration_state() {
  admin_get "$1" /migration 2>/dev/null | python3 -c 'import json, sys
try:
    d = json.load(sys.stdin); m = d["mirror"]
    print(d["phase"], m["queue_depth"], m["mirrored"], m["failed"], m["diverged"])
except Exception:
    print("? 0 0 0 0")'
}

# Requests routed to each backend so far, from /stats: "primary=N replica0=N replica1=N".
pgshift_routed() {
  admin_get "$1" /stats | python3 -c 'import json, sys
print(" ".join("%s=%d" % (b["name"], b["routed"]) for b in json.load(sys.stdin)["backends"]))'
}

# Wait (up to 120 s) until every replica of the bed has replayed the primary's current WAL position.
wait_replicas_caught_up() {
  local lsn r i
  [[ -n "$REPLICA_PORTS" ]] || return 0
  lsn=$(psql -X -At -p "$PRIMARY_PORT" -U postgres -d postgres -c 'SELECT pg_current_wal_lsn()') || die "no WAL position"
  for r in $REPLICA_PORTS; do
    for ((i = 0; i < 1200; i++)); do
      [[ "$(psql -X -At -p "$r" -U postgres -d postgres -c "SELECT pg_last_wal_replay_lsn() >= '$lsn'::pg_lsn")" == t ]] && break
      sleep 0.1
    done
    ((i < 1200)) || die "replica on port $r did not replay up to $lsn within 120 s"
  done
  say "replicas caught up with the primary (LSN $lsn)"
}

# Build benches/wire.rs (cargo bench --no-run; CARGO_TARGET_DIR honoured) and print its executable.
# Build output goes to $1.
wire_bench_bin() {
  local log=$1 bin
  bin=$(cd "$ROOT" && cargo bench --bench wire --no-run --message-format=json 2>"$log" |
    python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("target", {}).get("name") == "wire" and m.get("executable"):
        print(m["executable"])
' | tail -1)
  [[ -n "$bin" && -x "$bin" ]] || { tail -n 30 "$log" >&2; return 1; }
  echo "$bin"
}

# Median ns/op criterion measured for benchmark NAME under CRITERION_HOME DIR: criterion_ns DIR NAME
criterion_ns() {
  python3 -c 'import json, sys
try:
    print("%.1f" % json.load(open(sys.argv[1]))["median"]["point_estimate"])
except Exception:
    print("-")' "$1/$2/new/estimates.json"
}
