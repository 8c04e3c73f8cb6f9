#!/usr/bin/env bash
# bench/failover.sh: a primary killed under a TPC-B load and a replica promoted, through pgshift and
# through PgBouncer: client errors, longest stall, seconds from promote to writes flowing, lost commits.
#
#   bench/failover.sh
#
# For each repeat x replication mode x target, on a fresh throwaway cluster (scripts/pgbed.sh: a
# primary and one streaming replica, pgbench -i -s SCALE, pgbench_history gets a hid column): the
# pooler starts in front of it, bench/failprobe.py runs pgbench's TPC-B transaction with CLIENTS
# clients for DURATION s (it reconnects when a connection ends; pgbench would abort the client),
# KILL_AT s in the primary is killed (SIGKILL to the postmaster), PROMOTE_DELAY s later the replica is
# promoted (pg_ctl promote -w), and when the load ends failprobe.py counts, against the promoted node,
# what the clients saw. Appends a dated section to bench/RESULTS.md; removes everything it started.
#
# Targets:
#   pgshift            role discovery on (its default): it finds the promoted node by itself
#   pgbouncer          PgBouncer has no discovery: the best case of an outside tool is emulated,
#                      [databases] rewritten to the promoted node and SIGHUP (RELOAD) sent the
#                      moment pg_ctl promote returns; server_login_retry at its default (15 s)
#   pgbouncer-retry1   the same with server_login_retry = 1
# Replication modes: async (synchronous_commit = on, no synchronous standby) and sync
# (synchronous_standby_names = the replica's application_name, node1).
#
# PgBouncer: PGBOUNCER_BIN, else shared/tools/bin/pgbouncer-1.25.2 beside the repository (the project's
# machines have it; it needs libc-ares2, installed with apt-get if missing), else the distribution's
# (apt-get install pgbouncer; Debian 12's is 1.18): the section says which version ran.
#
# Knobs (environment):
#   MODES="async sync"  TARGETS="pgshift pgbouncer pgbouncer-retry1"  REPEATS=1
#   PGBENCH_MODES="async": modes in which each target also gets a drill under plain pgbench
#           (-M simple -l --failures-detailed; "" = none): it aborts a client at its first lost
#           connection, so it shows how many clients a failover takes out, not how long writes stall
#   CLIENTS=8  DURATION=25 (s of load)  KILL_AT=8 (s into the load)  PROMOTE_DELAY=0.5 (s)  SCALE=10
#   POOL_SIZE=20  NOTE="..."  RESULTS=bench/RESULTS.md (none: do not append)  OUTDIR=bench/out/failover-<time>
#   PGSHIFT_BIN, PGSHIFT_LOG, KEEP, NOFILE: see bench/lib.sh
set -uo pipefail

BENCH_NAME=failover
case "${1:-}" in
  -h | --help) sed -n '2,/^set /{/^#/p}' "$0"; exit 0 ;;
  "") ;;
  *) echo "failover.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
esac
REPLICAS=1
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

MODES=${MODES:-"async sync"}
TARGETS=${TARGETS:-"pgshift pgbouncer pgbouncer-retry1"}
REPEATS=${REPEATS:-1}
PGBENCH_MODES=${PGBENCH_MODES-async}
CLIENTS=${CLIENTS:-8}
DURATION=${DURATION:-25}
KILL_AT=${KILL_AT:-8}
PROMOTE_DELAY=${PROMOTE_DELAY:-0.5}
SCALE=${SCALE:-10}
NOTE=${NOTE:-}
RESULTS=${RESULTS:-$BENCH_DIR/RESULTS.md}
OUTDIR=${OUTDIR:-$BENCH_DIR/out/failover-$(date +%Y%m%d-%H%M%S)}
PROBE="$BENCH_DIR/failprobe.py"

for m in $MODES; do [[ " async sync " == *" $m "* ]] || die "bad mode '$m' (async | sync)"; done
for t in $TARGETS; do [[ " pgshift pgbouncer pgbouncer-retry1 " == *" $t "* ]] || die "bad target '$t'"; done

now_s() { date +%s.%N; }

# Replication mode on the bed's primary: async | sync.
set_replication() {
  local names='' want
  [[ $1 == sync ]] && names=node1
  psql -X -q -p "$PRIMARY_PORT" -U postgres -d postgres -c "ALTER SYSTEM SET synchronous_commit = on" \
    -c "ALTER SYSTEM SET synchronous_standby_names = '$names'" -c 'SELECT pg_reload_conf()' >/dev/null ||
    die "cannot set the replication mode"
  want=async
  [[ $1 == sync ]] && want=sync
  for ((i = 0; i < 100; i++)); do
    [[ "$(psql -X -At -p "$PRIMARY_PORT" -U postgres -d postgres -c "SELECT string_agg(sync_state, ',') FROM pg_stat_replication")" == "$want" ]] && return 0
    sleep 0.1
  done
  die "the replica is not '$want' in pg_stat_replication after 10 s"
}

# PgBouncer repointed to the promoted node, as an operator's script would: rewrite [databases], SIGHUP.
repoint_pgbouncer() {
  sed -i -E "s/^app = host=127.0.0.1 port=[0-9]+ /app = host=127.0.0.1 port=$1 /" "$WORK/pgbouncer/pgbouncer.ini"
  kill -HUP "$PGBOUNCER_PID"
}

# The load in the background: failprobe.py, or pgbench with per-transaction logs. Sets LOAD_PID.
start_load() {
  local load=$1 port=$2 tag=$3
  if [[ $load == pgbench ]]; then
    pgbench -n -M simple -c "$CLIENTS" -j 2 -T "$DURATION" -p "$port" -l --log-prefix="$OUTDIR/$tag.pgbench" \
      --failures-detailed >"$OUTDIR/$tag.probe.log" 2>&1 &
  else
    python3 "$PROBE" run --port "$port" -c "$CLIENTS" --duration "$DURATION" --out "$OUTDIR/$tag.tsv" \
      >"$OUTDIR/$tag.probe.log" 2>&1 &
  fi
  LOAD_PID=$!
}

# One drill: run_case REP MODE TARGET LOAD; appends the load's report to $OUTDIR/results.jsonl.
run_case() {
  local rep=$1 mode=$2 t=$3 load=$4 tag="r$1-$2-$3-$4" port probe new
  local ev="$OUTDIR/$tag.events" log="$OUTDIR/$tag.tsv"
  start_bed
  [[ -s "$OUTDIR/host.md" ]] || host_facts_md >"$OUTDIR/host.md"
  init_pgbench "$SCALE"
  psql -X -q -p "$PRIMARY_PORT" -c 'ALTER TABLE pgbench_history ADD COLUMN hid bigint' || die "cannot add pgbench_history.hid"
  set_replication "$mode"
  wait_replicas_caught_up
  new=${REPLICA_PORTS%% *}
  case $t in
    pgshift) start_pgshift; port=$PGSHIFT_PORT ;;
    pgbouncer) PGBOUNCER_EXTRA="" start_pgbouncer; port=$PGBOUNCER_PORT ;;
    pgbouncer-retry1) PGBOUNCER_EXTRA="server_login_retry = 1" start_pgbouncer; port=$PGBOUNCER_PORT ;;
  esac
  echo "start $(now_s)" >"$ev"
  start_load "$load" "$port" "$tag"
  probe=$LOAD_PID
  BG_PIDS=("$probe")
  sleep "$KILL_AT"
  echo "kill $(now_s)" >>"$ev"
  "$PGBED" node "$WORK/cluster" 0 kill >>"$WORK/pgbed.log" 2>&1 || die "kill of the primary failed"
  sleep "$PROMOTE_DELAY"
  "$PGBED" node "$WORK/cluster" 1 promote >>"$WORK/pgbed.log" 2>&1 || die "promote failed"
  echo "promote $(now_s)" >>"$ev"
  if [[ $t == pgbouncer* ]]; then
    repoint_pgbouncer "$new"
    echo "repoint $(now_s)" >>"$ev"
  fi
  wait "$probe" || say "$load exited non-zero: $(grep -m1 -iE 'error|abort' "$OUTDIR/$tag.probe.log")"
  BG_PIDS=()
  if [[ $load == pgbench ]]; then
    python3 "$PROBE" pgbench-report --output "$OUTDIR/$tag.probe.log" --events "$ev" --clients "$CLIENTS" \
      --duration "$DURATION" --label "$rep $mode $t pgbench" "$OUTDIR/$tag.pgbench".* >>"$OUTDIR/results.jsonl"
  else
    say "$tag: $(tail -n 1 "$OUTDIR/$tag.probe.log")"
    python3 "$PROBE" report --log "$log" --events "$ev" --check-port "$new" --label "$rep $mode $t" \
      >>"$OUTDIR/results.jsonl"
  fi || say "the report failed for $tag"
  say "$tag: $(tail -n 1 "$OUTDIR/results.jsonl" | cut -c1-400)"
  case $t in
    pgshift) cp "$WORK/pgshift.log" "$OUTDIR/$tag-pgshift.log" 2>/dev/null; stop_pgshift ;;
    *) cp "$WORK/pgbouncer/pgbouncer.log" "$OUTDIR/$tag-pgbouncer.log" 2>/dev/null; stop_pgbouncer ;;
  esac
  "$PGBED" destroy "$WORK/cluster" >/dev/null 2>&1 || say "pgbed destroy $WORK/cluster failed"
  rm -rf "$WORK"
  WORK=""
}

mkdir -p "$OUTDIR" || die "cannot create $OUTDIR"
raise_nofile
ensure_postgres
[[ " $TARGETS " == *" pgbouncer"* ]] && find_pgbouncer
ensure_pgshift
install_trap
: >"$OUTDIR/results.jsonl"
ncases=$((REPEATS * ($(wc -w <<<"$MODES") + $(wc -w <<<"$PGBENCH_MODES")) * $(wc -w <<<"$TARGETS")))
say "$ncases drills of ${DURATION}s load (+ ~15 s of set-up each); logs in $OUTDIR"
for rep in $(seq 1 "$REPEATS"); do
  for mode in $MODES; do
    for t in $TARGETS; do run_case "$rep" "$mode" "$t" failprobe; done
    if [[ " $PGBENCH_MODES " == *" $mode "* ]]; then
      for t in $TARGETS; do run_case "$rep" "$mode" "$t" pgbench; done
    fi
  done
done

SETTINGS="$CLIENTS clients of pgbench's TPC-B transaction (load failprobe: bench/failprobe.py, one statement per round trip"
SETTINGS+=" as pgbench -M simple, reconnecting, 50 ms pause after an error; load pgbench: pgbench -M simple -l), scale $SCALE,"
SETTINGS+=" ${DURATION}s of load; primary SIGKILLed at ${KILL_AT}s, replica promoted (pg_ctl promote -w) ${PROMOTE_DELAY}s later;"
SETTINGS+=" pool $POOL_SIZE in both poolers (transaction mode); pgshift: role discovery, health_check_interval 250 ms,"
SETTINGS+=" failover_timeout 30 s (defaults); PgBouncer: repointed ([databases] rewritten + SIGHUP) the moment promote returned;"
SETTINGS+=" repeats $REPEATS; per-run logs in ${OUTDIR#"$ROOT"/}"
{
  echo
  echo "## $(date -u '+%Y-%m-%d %H:%M UTC'): failover under load, pgshift vs PgBouncer (bench/failover.sh)"
  echo
  [[ -n "$NOTE" ]] && printf '**%s**\n\n' "$NOTE"
  cat "$OUTDIR/host.md"
  echo "- settings: $SETTINGS"
  echo
  python3 "$PROBE" table "$OUTDIR/results.jsonl"
} >"$OUTDIR/section.md" || die "failprobe.py table failed"
cat "$OUTDIR/section.md"
if [[ "$RESULTS" != none ]]; then
  cat "$OUTDIR/section.md" >>"$RESULTS"
  say "appended to $RESULTS"
fi
