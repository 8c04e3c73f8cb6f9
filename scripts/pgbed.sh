#!/usr/bin/env bash
# pgbed.sh: throwaway PostgreSQL 15 clusters (one primary + N streaming
# replicas) for pgshift's tests and demo. Run `scripts/pgbed.sh help`.
set -euo pipefail

PROG="$(basename "$0")"
PGBIN="${PGBED_PGBIN:-/usr/lib/postgresql/15/bin}"
MARKER=".pgbed"
# shellcheck source=scripts/ports.sh
source "$(dirname "${BASH_SOURCE[0]}")/ports.sh"

usage() {
  cat <<EOF
Usage: $PROG COMMAND DIR [OPTIONS]

Throwaway PostgreSQL 15 cluster: a primary and N streaming replicas, listening
on 127.0.0.1 only, tuned for speed (fsync=off): never keep data in one.

Commands:
  start DIR [--replicas N] [--base-port P|auto]
        Create (or restart) the cluster in DIR and start every node.
        N: 0-6 (default 0). Ports: auto (default) = free ports on 127.0.0.1.
        With --base-port P the primary listens on P, replica i on P+i.
        Writes DIR/ports.env (PRIMARY_PORT, REPLICA_PORTS, PGBED_DIR).
  stop DIR      Fast stop of every node, replicas first.
  destroy DIR   Stop every node (immediate) and delete DIR. Refuses a DIR
                that pgbed did not create (no DIR/$MARKER).
  status DIR    Show each node's port and state, and replication state.
  node DIR I start|stop|kill|pause|resume
                Act on one node (0 = primary, I = replica I), for fault
                injection: pg_ctl start / pg_ctl stop -m fast; kill = SIGKILL
                to the postmaster (a crash; returns once its children exited);
                pause/resume = SIGSTOP/SIGCONT to the postmaster and children.
  install       Install PostgreSQL 15 (apt-get) if $PGBIN/initdb is missing.
  help          This text.

Roles: 'app' (password 'app', superuser, owns database 'app'; scram-sha-256),
'pgshift_fleet' (password 'pgshift_fleet', may create schemas in 'app' and
'fleet_planted': a fleet store's own role) and 'postgres' (trust over 127.0.0.1 and the unix socket in DIR/run).
Layout: DIR/node0 = primary data dir, DIR/nodeI = replica I, DIR/logs/nodeI.log.
Server commands run as the 'postgres' OS user (runuser as root, sudo otherwise).
Env: PGBED_PGBIN overrides the PostgreSQL bin dir ($PGBIN).
EOF
}

say() { printf '[pgbed] %s\n' "$*"; }
die() { printf '[pgbed] error: %s\n' "$*" >&2; exit 1; }
now_ms() { local t; t="$(date +%s%N)"; printf '%s' "$((t / 1000000))"; }

ME="$(id -un)"

# Run a command as the postgres OS user.
as_pg() {
  if [[ "$ME" == postgres ]]; then
    "$@"
  elif ((EUID == 0)); then
    runuser -u postgres -- "$@"
  else
    sudo -n -u postgres -- "$@"
  fi
}

# Run a command as root (or directly if we are root already).
as_root() {
  if ((EUID == 0)); then "$@"; else sudo -n -- "$@"; fi
}

ensure_pg() {
  [[ -x "$PGBIN/initdb" ]] && return 0
  say "PostgreSQL 15 not found in $PGBIN: installing postgresql-15 with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get update -qq
  # Install postgresql-common first and turn off its default cluster, so the
  # package install does not create (and start) a server on port 5432.
  as_root apt-get install -y -qq postgresql-common >/dev/null
  if [[ -f /etc/postgresql-common/createcluster.conf ]]; then
    as_root sed -i -E 's/^#?[[:space:]]*create_main_cluster[[:space:]]*=.*/create_main_cluster = false/' \
      /etc/postgresql-common/createcluster.conf
  fi
  as_root apt-get install -y -qq postgresql-15 >/dev/null
  [[ -x "$PGBIN/initdb" ]] || die "postgresql-15 installed but $PGBIN/initdb is still missing"
  say "installed $("$PGBIN/postgres" --version)"
}

# ---- ports -----------------------------------------------------------------

check_port() {
  local p="$1"
  if ! [[ "$p" =~ ^[0-9]+$ ]] || ((p < 1 || p > 65535)); then die "bad port: $p"; fi
  port_reserved "$p" && die "port $p is reserved for another test bed (15432-15434)"
  port_in_use "$p" && die "port $p is already in use"
  return 0
}

# ---- nodes -----------------------------------------------------------------

node_dir() { printf '%s/node%s' "$DIR" "$1"; }
node_log() { printf '%s/logs/node%s.log' "$DIR" "$1"; }
node_port() { sed -n -E 's/^port = ([0-9]+).*/\1/p' "$(node_dir "$1")/pgbed.conf" 2>/dev/null; }
node_exists() { [[ -f "$(node_dir "$1")/PG_VERSION" ]]; }
node_running() { node_exists "$1" && as_pg "$PGBIN/pg_ctl" -D "$(node_dir "$1")" status >/dev/null 2>&1; }
node_pid() { head -n1 "$(node_dir "$1")/postmaster.pid" 2>/dev/null; }
replica_ids() {
  local d
  for d in "$DIR"/node*; do
    [[ -f "$d/PG_VERSION" ]] || continue
    d="${d##*/node}"
    if [[ "$d" != 0 ]]; then printf '%s\n' "$d"; fi
  done | sort -n
}

# Clone replica I once more, alone, after a failed concurrent pg_basebackup
# (a clash with the other clone's checkpoint must not fail a whole test run).
retry_clone() {
  local i="$1"
  say "pg_basebackup for node$i failed; retrying alone: $(tail -n 3 "$DIR/logs/basebackup$i.log" | tr '\n' ' ')"
  as_pg rm -rf "$(node_dir "$i")"
  psql_primary -c "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = 'replica_$i'" >/dev/null
  as_pg "$PGBIN/pg_basebackup" -D "$(node_dir "$i")" -h 127.0.0.1 -p "$(node_port 0)" -U postgres \
    -R -X stream -C -S "replica_$i" -c fast --no-sync >"$DIR/logs/basebackup$i.log" 2>&1 \
    || { cat "$DIR/logs/basebackup$i.log" >&2; die "pg_basebackup for node$i failed"; }
}

# Settings of a fast throwaway test server, plus the node's own port. wal_level = logical: migration
# tests replicate logically from the source to the target and back.
write_conf() {
  local i="$1" port="$2"
  as_pg tee "$(node_dir "$i")/pgbed.conf" >/dev/null <<EOF
# Written by pgbed.sh: a throwaway test server. fsync=off: never keep data here.
port = $port
cluster_name = 'node$i'
listen_addresses = '127.0.0.1'
unix_socket_directories = '$DIR/run'
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 300
shared_buffers = 128MB
wal_level = logical
max_wal_senders = 10
max_replication_slots = 10
# Two concurrent pg_basebackup -c fast each force a checkpoint; without kept
# WAL one can recycle a segment the other still has to stream.
wal_keep_size = 256MB
hot_standby = on
hot_standby_feedback = on
wal_receiver_status_interval = 1s
wal_retrieve_retry_interval = 500ms
logging_collector = off
log_min_messages = warning
EOF
}

# Start node I. With AUTO=1 (a new node with an auto port) a port taken by a
# concurrent process meanwhile is replaced by a fresh one (up to 5 tries).
start_node() {
  local i="$1" auto="${2:-0}" try port
  node_running "$i" && return 0
  for try in 1 2 3 4 5; do
    port="$(node_port "$i")"
    if as_pg "$PGBIN/pg_ctl" -D "$(node_dir "$i")" -l "$(node_log "$i")" -w -t 60 start >/dev/null 2>&1; then
      return 0
    fi
    if [[ "$auto" == 1 ]] && tail -n 20 "$(node_log "$i")" | grep -q 'could not bind\|could not create any TCP/IP sockets\|Address already in use'; then
      say "node$i: port $port was taken meanwhile, retrying on another (try $try)"
      write_conf "$i" "$(pick_port "$(all_ports)")"
      continue
    fi
    break
  done
  tail -n 20 "$(node_log "$i")" >&2 || true
  die "node$i failed to start (log: $(node_log "$i"))"
}

stop_node() {
  local i="$1" mode="${2:-fast}"
  node_running "$i" || return 0
  as_pg "$PGBIN/pg_ctl" -D "$(node_dir "$i")" -m "$mode" -w -t 30 stop >/dev/null
}

# Promotes replica $1 to a primary (pg_ctl promote, waits until it accepts writes).
promote_node() {
  as_pg "$PGBIN/pg_ctl" -D "$(node_dir "$1")" -w -t 60 promote >/dev/null
}

# PIDs of the children of process $1 (read from /proc: no procps needed).
child_pids() {
  local f line pid ppid
  for f in /proc/[0-9]*/stat; do
    read -r line 2>/dev/null <"$f" || continue
    pid="${line%% *}"
    line="${line##*) }" # drop "pid (comm) ": comm may contain spaces
    read -r _ ppid _ <<<"$line"
    if [[ "$ppid" == "$1" ]]; then printf '%s\n' "$pid"; fi
  done
  return 0
}

# Send SIG to pids (as the postgres user; errors for exited pids ignored).
send() {
  local sig="$1"; shift
  (($#)) || return 0
  as_pg kill "-$sig" "$@" 2>/dev/null || true
}

# pause/resume act on the postmaster and all its children; kill sends SIGKILL
# to the postmaster only (a crash), then waits for the orphaned children to
# exit (they do so on postmaster death) so that the node can be started again.
signal_node() {
  local i="$1" sig="$2" pm kids k j
  pm="$(node_pid "$i")"
  [[ -n "$pm" ]] || die "node$i: no postmaster.pid (not running?)"
  case "$sig" in
    STOP)
      send STOP "$pm"
      mapfile -t kids < <(child_pids "$pm")
      send STOP "${kids[@]}" ;;
    CONT)
      mapfile -t kids < <(child_pids "$pm")
      send CONT "${kids[@]}" "$pm" ;;
    KILL)
      mapfile -t kids < <(child_pids "$pm")
      send KILL "$pm"
      for ((k = 0; k < 100; k++)); do
        [[ -d "/proc/$pm" ]] || break
        sleep 0.05
      done
      for k in "${kids[@]}"; do
        for ((j = 0; j < 100; j++)); do
          [[ -d "/proc/$k" ]] || break
          sleep 0.05
        done
        send KILL "$k"
      done ;;
    *) die "signal_node: unsupported signal $sig" ;;
  esac
}

all_ports() {
  local i
  for i in 0 $(replica_ids); do node_port "$i"; printf ' '; done
}

write_ports_env() {
  local rp="" i
  for i in $(replica_ids); do rp="${rp:+$rp }$(node_port "$i")"; done
  as_pg tee "$DIR/ports.env" >/dev/null <<EOF
PRIMARY_PORT=$(node_port 0)
REPLICA_PORTS="$rp"
PGBED_DIR=$DIR
EOF
  cat "$DIR/ports.env"
}

psql_primary() {
  as_pg psql -X -q -v ON_ERROR_STOP=1 -At -h "$DIR/run" -p "$(node_port 0)" -U postgres -d postgres "$@"
}

# ---- commands --------------------------------------------------------------

set_dir() {
  [[ -n "${1:-}" ]] || { printf '[pgbed] error: missing DIR (see %s help)\n' "$PROG" >&2; exit 2; }
  DIR="$1"
  [[ "$DIR" == /* ]] || DIR="$PWD/$DIR"
  DIR="${DIR%/}"
}

require_bed() {
  [[ -f "$DIR/$MARKER" ]] || die "$DIR is not a pgbed cluster (no $DIR/$MARKER)"
}

cmd_start() {
  local replicas=0 base=auto t0 i j k port auto=0 n
  while (($#)); do
    case "$1" in
      --replicas) replicas="${2:?--replicas needs a number}"; shift 2 ;;
      --replicas=*) replicas="${1#*=}"; shift ;;
      --base-port) base="${2:?--base-port needs a port or auto}"; shift 2 ;;
      --base-port=*) base="${1#*=}"; shift ;;
      -h | --help) usage; exit 0 ;;
      *) die "start: unknown option '$1' (see $PROG help)" ;;
    esac
  done
  if ! [[ "$replicas" =~ ^[0-6]$ ]]; then die "--replicas must be 0-6, got '$replicas'"; fi
  [[ "$base" == auto ]] && auto=1
  t0="$(now_ms)"
  ensure_pg

  if [[ -e "$DIR" && ! -f "$DIR/$MARKER" ]] && [[ -n "$(ls -A "$DIR")" ]]; then
    die "$DIR exists, is not empty and is not a pgbed cluster: refusing to use it"
  fi
  if ((${#DIR} + 23 > 107)); then
    die "$DIR is too long for a unix socket path (DIR/run/.s.PGSQL.PORT): use a shorter dir"
  fi
  if ((!auto)) && ! node_exists 0; then
    for ((i = 0; i <= replicas; i++)); do check_port $((base + i)); done
  fi
  mkdir -p "$DIR"
  if [[ "$ME" != postgres ]]; then as_root chown postgres: "$DIR"; fi
  as_pg test -w "$DIR" ||
    die "the postgres user cannot write $DIR (a parent dir is not traversable?): use a dir under /tmp"
  as_pg mkdir -p "$DIR/run" "$DIR/logs"
  as_pg chmod 0755 "$DIR"
  printf 'pgbed cluster: delete with %s destroy %s\n' "$PROG" "$DIR" | as_pg tee "$DIR/$MARKER" >/dev/null

  # Primary.
  if ! node_exists 0; then
    if ((auto)); then port="$(pick_port)"; else port="$base"; fi
    say "initdb primary (node0) on port $port"
    as_pg "$PGBIN/initdb" -D "$(node_dir 0)" -U postgres --no-sync --no-instructions \
      --auth-local=trust --auth-host=scram-sha-256 -E UTF8 --locale=C.UTF-8 >"$DIR/logs/initdb.log" 2>&1 ||
      { cat "$DIR/logs/initdb.log" >&2; die "initdb failed"; }
    as_pg tee "$(node_dir 0)/pg_hba.conf" >/dev/null <<'EOF'
# Written by pgbed.sh: a throwaway test cluster.
# TYPE  DATABASE     USER      ADDRESS        METHOD
local   all          all                      trust
local   replication  all                      trust
host    all          postgres  127.0.0.1/32   trust
host    replication  postgres  127.0.0.1/32   trust
host    replication  all       127.0.0.1/32   scram-sha-256
host    all          all       127.0.0.1/32   scram-sha-256
EOF
    printf "\ninclude 'pgbed.conf'\n" | as_pg tee -a "$(node_dir 0)/postgresql.conf" >/dev/null
    write_conf 0 "$port"
    start_node 0 "$auto"
    say "primary up on port $(node_port 0)"
  else
    say "primary (node0) exists: starting it on port $(node_port 0)"
    start_node 0
  fi
  psql_primary <<'EOF'
SET password_encryption = 'scram-sha-256';
SELECT 'CREATE ROLE app LOGIN SUPERUSER PASSWORD ''app'''
  WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'app') \gexec
SELECT 'CREATE DATABASE app OWNER app'
  WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'app') \gexec
SELECT 'CREATE ROLE pgshift_fleet LOGIN PASSWORD ''pgshift_fleet'''
  WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'pgshift_fleet') \gexec
GRANT CREATE ON DATABASE app TO pgshift_fleet;
SELECT 'CREATE DATABASE fleet_planted OWNER app'
  WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'fleet_planted') \gexec
GRANT CREATE ON DATABASE fleet_planted TO pgshift_fleet;
EOF

  # Existing replicas are just started; missing ones are cloned.
  for i in $(replica_ids); do start_node "$i"; done
  local new=() ports=() jobs=() taken
  taken="$(all_ports)"
  for ((i = 1; i <= replicas; i++)); do
    node_exists "$i" && continue
    if ((auto)); then port="$(pick_port "$taken")"; else port=$((base + i)); fi
    taken="$taken $port"
    new+=("$i"); ports+=("$port")
  done
  # Clone the new replicas, two at a time (copying is most of the time; each
  # pg_basebackup -X stream uses two of the primary's max_wal_senders).
  for ((k = 0; k < ${#new[@]}; k++)); do
    i="${new[k]}"
    say "pg_basebackup replica node$i (slot replica_$i)"
    as_pg rm -rf "$(node_dir "$i")"
    # A slot left by an earlier failed attempt would make -C fail.
    psql_primary -c "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = 'replica_$i'" >/dev/null
    as_pg "$PGBIN/pg_basebackup" -D "$(node_dir "$i")" -h 127.0.0.1 -p "$(node_port 0)" -U postgres \
      -R -X stream -C -S "replica_$i" -c fast --no-sync >"$DIR/logs/basebackup$i.log" 2>&1 &
    jobs[k]="$!"
    if ((k % 2 == 1 || k == ${#new[@]} - 1)); then
      for ((j = k - k % 2; j <= k; j++)); do
        wait "${jobs[j]}" || retry_clone "${new[j]}"
      done
    fi
  done
  for ((k = 0; k < ${#new[@]}; k++)); do
    i="${new[k]}"
    write_conf "$i" "${ports[k]}"
    start_node "$i" "$auto"
    say "replica node$i up on port $(node_port "$i")"
  done
  n="$(replica_ids | wc -l)"
  if ((n > replicas)); then say "note: $DIR already had $n replicas (more than --replicas $replicas); all were started"; fi

  # Wait until every replica streams from the primary.
  if ((n > 0)); then
    for ((i = 0; i < 300; i++)); do
      [[ "$(psql_primary -c "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'")" -ge "$n" ]] && break
      sleep 0.1
    done
    ((i < 300)) || die "replicas did not reach 'streaming' within 30 s (see $DIR/logs)"
  fi
  write_ports_env
  t0=$(($(now_ms) - t0))
  say "cluster up in $((t0 / 1000)).$(printf '%03d' $((t0 % 1000)))s: primary + $n replica(s) in $DIR"
}

cmd_stop() {
  local i
  [[ -d "$DIR" ]] || { say "$DIR does not exist: nothing to stop"; return 0; }
  require_bed
  for i in $(replica_ids | sort -rn) 0; do
    node_exists "$i" || continue
    signal_node_quiet "$i" CONT
    if node_running "$i"; then
      stop_node "$i" fast
      say "node$i stopped"
    fi
  done
}

signal_node_quiet() { if node_running "$1"; then signal_node "$1" "$2"; fi; }

cmd_destroy() {
  local i
  [[ -d "$DIR" ]] || { say "$DIR does not exist: nothing to destroy"; return 0; }
  require_bed
  for i in $(replica_ids | sort -rn) 0; do
    node_exists "$i" || continue
    signal_node_quiet "$i" CONT # a paused node cannot act on a stop request
    if node_running "$i" && ! stop_node "$i" immediate; then
      say "node$i did not stop: SIGKILL"
      signal_node "$i" KILL
    fi
  done
  if ((EUID == 0)) || [[ "$ME" == postgres ]]; then rm -rf "$DIR"; else sudo -n rm -rf "$DIR"; fi
  say "destroyed $DIR"
}

cmd_status() {
  local i role state
  require_bed
  for i in 0 $(replica_ids); do
    role=replica; [[ "$i" == 0 ]] && role=primary
    state=stopped
    if node_running "$i"; then
      state="running (pid $(node_pid "$i"))"
      if [[ "$(cut -d' ' -f3 "/proc/$(node_pid "$i")/stat" 2>/dev/null)" == T ]]; then state="paused (pid $(node_pid "$i"))"; fi
    fi
    printf '[pgbed] node%s %-7s port %-5s %s\n' "$i" "$role" "$(node_port "$i")" "$state"
  done
  if node_running 0; then
    psql_primary -F ' ' -c "SELECT '[pgbed] replication: ' || coalesce(application_name, '?'), state, 'replay_lag=' || coalesce(replay_lag::text, '0') FROM pg_stat_replication" || true
  fi
  [[ -f "$DIR/ports.env" ]] && cat "$DIR/ports.env"
  return 0
}

cmd_node() {
  local i="${1:?node DIR I ACTION}" action="${2:?node DIR I start|stop|kill|pause|resume|promote}"
  require_bed
  node_exists "$i" || die "node$i does not exist in $DIR"
  case "$action" in
    start) start_node "$i" ;;
    stop) stop_node "$i" fast ;;
    kill) signal_node "$i" KILL ;;
    pause) signal_node "$i" STOP ;;
    resume) signal_node "$i" CONT ;;
    promote) promote_node "$i" ;;
    *) die "node: unknown action '$action' (start|stop|kill|pause|resume|promote)" ;;
  esac
  say "node$i: $action done"
}

main() {
  local cmd="${1:-help}"
  shift || true
  case "$cmd" in
    start) set_dir "${1:-}"; shift; cmd_start "$@" ;;
    stop) set_dir "${1:-}"; cmd_stop ;;
    destroy) set_dir "${1:-}"; cmd_destroy ;;
    status) set_dir "${1:-}"; cmd_status ;;
    node) set_dir "${1:-}"; shift; cmd_node "$@" ;;
    install) ensure_pg; say "PostgreSQL 15 present: $("$PGBIN/postgres" --version)" ;;
    help | -h | --help) usage ;;
    *) usage >&2; exit 2 ;;
  esac
}

main "$@"
