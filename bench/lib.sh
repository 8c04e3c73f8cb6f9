# shellcheck shell=bash
# bench/lib.sh: the test bed shared by bench/run.sh, bench/latency.sh and bench/memory.sh.
#
# Sourced, not run. Provides: PgBouncer install, pgshift build, a throwaway PostgreSQL 15 cluster
# (scripts/pgbed.sh) in a temp dir, pgshift and PgBouncer started in front of its primary with the
# same pool settings, process CPU/RSS readers, host facts for RESULTS.md, and one cleanup trap that
# stops everything it started. Nothing here touches ports 15432-15434 (another bed's).
#
# Settings read from the environment (defaults in brackets):
#   POOL_SIZE [20]        server connections per pool, both poolers, toward the primary
#   WORKERS [0]           pgshift runtime threads (0 = one per core)
#   MAX_CLIENTS [12000]   max_client_conn of both poolers
#   REPLICAS [0]          streaming replicas (pgshift sends reads there; PgBouncer has only the primary)
#   PGSHIFT_BIN           run this pgshift binary instead of building target/release/pgshift
#   PGSHIFT_LOG [info]    pgshift's log filter (its default level)
#   PGBOUNCER_BIN         PgBouncer binary [pgbouncer on PATH, else /usr/sbin/pgbouncer]
#   KEEP [0]              1: keep the temp dir (cluster, configs, logs) on exit
#   NOFILE [65536]        open-files limit to raise this shell (and so the poolers) to

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$BENCH_DIR/.." && pwd)"
PGBED="$ROOT/scripts/pgbed.sh"

POOL_SIZE=${POOL_SIZE:-20}
WORKERS=${WORKERS:-0}
MAX_CLIENTS=${MAX_CLIENTS:-12000}
REPLICAS=${REPLICAS:-0}
KEEP=${KEEP:-0}
export PGHOST=127.0.0.1 PGUSER=app PGPASSWORD=app PGDATABASE=app
CLK_TCK=$(getconf CLK_TCK)
BENCH_NAME=${BENCH_NAME:-bench}

WORK=""
OUTDIR=${OUTDIR:-}
PRIMARY_PORT=""
REPLICA_PORTS=""
PGSHIFT_PORT=""
PGSHIFT_PID=""
PGBOUNCER_PORT=""
PGBOUNCER_PID=""
PGSHIFT=""
BG_PIDS=()

say() { printf '[%s] %s\n' "$BENCH_NAME" "$*" >&2; }
die() { printf '[%s] error: %s\n' "$BENCH_NAME" "$*" >&2; exit 1; }
as_root() { if ((EUID == 0)); then "$@"; else sudo -n -- "$@"; fi; }

# ---- ports -------------------------------------------------------------------------------------

port_in_use() {
  if command -v ss >/dev/null 2>&1; then
    [[ -n "$(ss -Htln "sport = :$1" 2>/dev/null)" ]]
  else
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
  fi
}

# A free port in 20000-32767 (below the ephemeral range), never 15432-15434 nor one in "$1".
pick_port() {
  local taken=" ${1:-} 15432 15433 15434 " p i
  for ((i = 0; i < 500; i++)); do
    p=$((20000 + (RANDOM * 32768 + RANDOM) % 12768))
    [[ "$taken" == *" $p "* ]] && continue
    port_in_use "$p" && continue
    printf '%s' "$p"
    return 0
  done
  die "no free TCP port found on 127.0.0.1"
}

taken_ports() { printf '%s' "$PRIMARY_PORT $REPLICA_PORTS $PGSHIFT_PORT $PGBOUNCER_PORT"; }

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
  PGBOUNCER_BIN=${PGBOUNCER_BIN:-$(command -v pgbouncer || echo /usr/sbin/pgbouncer)}
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
}

# pgbench tables at SCALE on the primary.
init_pgbench() {
  say "pgbench -i -s $1 on the primary"
  pgbench -i -q -s "$1" -p "$PRIMARY_PORT" >"$WORK/pgbench-init.log" 2>&1 ||
    { cat "$WORK/pgbench-init.log" >&2; die "pgbench -i failed"; }
  psql -X -q -p "$PRIMARY_PORT" -c 'VACUUM ANALYZE' >/dev/null 2>&1 || true
}

start_pgshift() {
  local cfg="$WORK/pgshift.toml" log="$WORK/pgshift.log" r
  PGSHIFT_PORT=$(pick_port "$(taken_ports)")
  {
    cat <<EOF
# Written by bench/lib.sh
[proxy]
listen = "127.0.0.1:$PGSHIFT_PORT"
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
read_write_split = $( ((REPLICAS > 0)) && echo true || echo false)

[admin]
listen = ""
EOF
    for r in $REPLICA_PORTS; do printf '\n[[replicas]]\nhost = "127.0.0.1"\nport = %s\n' "$r"; done
  } >"$cfg"
  PGSHIFT_LOG=${PGSHIFT_LOG:-info} "$PGSHIFT" --config "$cfg" >>"$log" 2>&1 &
  PGSHIFT_PID=$!
  wait_ready pgshift "$PGSHIFT_PORT" "$PGSHIFT_PID" "$log"
  say "pgshift up on port $PGSHIFT_PORT (pid $PGSHIFT_PID, workers $WORKERS, pool $POOL_SIZE)"
}

# PgBouncer in transaction mode, same pool size, SCRAM with the verifier of user app read from
# pg_authid (so it can log in to PostgreSQL with the client's SCRAM keys), its unix socket in the
# temp dir. It refuses to run as root: -u drops to the postgres OS user.
start_pgbouncer() {
  local dir="$WORK/pgbouncer" verifier
  mkdir -p "$dir"
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
EOF
  chmod 0600 "$dir/userlist.txt"
  if ((EUID == 0)); then
    chown -R postgres: "$dir"
    "$PGBOUNCER_BIN" -u postgres "$dir/pgbouncer.ini" >>"$dir/stderr.log" 2>&1 &
  else
    "$PGBOUNCER_BIN" "$dir/pgbouncer.ini" >>"$dir/stderr.log" 2>&1 &
  fi
  PGBOUNCER_PID=$!
  wait_ready pgbouncer "$PGBOUNCER_PORT" "$PGBOUNCER_PID" "$dir/pgbouncer.log"
  say "PgBouncer up on port $PGBOUNCER_PORT (pid $PGBOUNCER_PID, pool $POOL_SIZE, open files $(nofile_of "$PGBOUNCER_PID"))"
}

stop_pgshift() { stop_pid "$PGSHIFT_PID" TERM; PGSHIFT_PID=""; }
stop_pgbouncer() { stop_pid "$PGBOUNCER_PID" TERM; PGBOUNCER_PID=""; }

# Cleanup for the EXIT trap: background helpers, poolers, the cluster, the temp dir. Pooler logs
# are copied to OUTDIR first.
# shellcheck disable=SC2317 # invoked by the trap
bench_cleanup() {
  local rc=$? p
  trap - EXIT INT TERM
  for p in "${BG_PIDS[@]}"; do stop_pid "$p" TERM; done
  stop_pgshift
  stop_pgbouncer
  if [[ -n "$WORK" && -d "$WORK" ]]; then
    if [[ -n "$OUTDIR" && -d "$OUTDIR" ]]; then
      cp "$WORK/pgshift.log" "$OUTDIR/pgshift.log" 2>/dev/null || true
      cp "$WORK/pgbouncer/pgbouncer.log" "$OUTDIR/pgbouncer.log" 2>/dev/null || true
    fi
    if ((KEEP)); then
      "$PGBED" stop "$WORK/cluster" >/dev/null 2>&1 || rc=1
      say "kept $WORK (cluster stopped)"
    else
      "$PGBED" destroy "$WORK/cluster" >/dev/null 2>&1 || { say "pgbed destroy failed"; rc=1; }
      rm -rf "$WORK"
    fi
  fi
  exit "$rc"
}

install_trap() {
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

# Port and pid of a target name (direct | pgbouncer | pgshift).
target_port() {
  case $1 in
    direct) echo "$PRIMARY_PORT" ;;
    pgbouncer) echo "$PGBOUNCER_PORT" ;;
    pgshift) echo "$PGSHIFT_PORT" ;;
    *) return 1 ;;
  esac
}
target_pid() {
  case $1 in
    direct) echo "" ;;
    pgbouncer) echo "$PGBOUNCER_PID" ;;
    pgshift) echo "$PGSHIFT_PID" ;;
    *) return 1 ;;
  esac
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
  bv=$("$PGBOUNCER_BIN" --version 2>/dev/null | head -1 | awk '{print $2}')
  printf -- '- host: %s cores (nproc), CPU %s, kernel %s, %s GiB RAM; load average at start %s\n' \
    "$(nproc)" "${cpu:-unknown}" "$(uname -r)" "$(awk '/^MemTotal/{printf "%.0f", $2/1048576}' /proc/meminfo)" \
    "${LOAD_AT_START:-?}"
  printf -- '- PostgreSQL %s, PgBouncer %s, %s, pgshift %s\n' "$pgv" "${bv:-?}" \
    "$(pgbench --version | awk '{print "pgbench " $3}')" "$(pgshift_commit)"
}

LOAD_AT_START=$(cut -d' ' -f1-3 /proc/loadavg)
