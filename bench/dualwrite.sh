#!/usr/bin/env bash
# bench/dualwrite.sh: what dual-write costs a writing client, pgshift in migration phase off, in
# dual_write with mirror_mode = "async", and in dual_write with mirror_mode = "sync", interleaved.
#
#   bench/dualwrite.sh
#
# Two throwaway PostgreSQL 15 clusters (scripts/pgbed.sh): the source (pgshift's [primary]) and the
# migration target ([migration.target]); pgbench -i -s SCALE on both, and on both a table for the
# insert-only workload. Three pgshift instances with the same config and [migration] section but
# for mirror_mode: "pgshift-off" (phase off), "pgshift-async" and "pgshift-sync", the last two put in
# phase dual_write through their admin port (POST /migration/phase). All three have sync = "statement"
# (pgshift replays each committed write transaction; bench/logical.sh measures logical replication,
# which pgbed's clusters, wal_level = logical, would also allow). Write workloads:
#   tpcb-simple    pgbench's built-in TPC-B-like, -M simple (5 statements in BEGIN ... END)
#   insert-simple  one INSERT ... ON CONFLICT DO NOTHING of a random explicit key (no now(), no
#                  default, no sequence: the row is the same on both stores)
# For each repeat x workload x client count every target runs once, back to back, with per-transaction
# logs (pgbench -l). After each run the mirror queue is waited for until empty (DRAIN_LIMIT s) so
# that the next run starts from an idle applier. Reported: TPS, latency average, p50 and p99 (from
# the logs), pgshift's CPU per 10,000 transactions (during the run; and until the queue drained), and
# GET /migration's mirrored / failed / diverged changes and the queue depth when pgbench finished.
#
# Verification (VERIFY=1): the timed runs through phase off leave the target behind the source, so
# afterwards both stores are re-initialised identically (pgbench -i on both, the insert table
# emptied), then each workload runs VERIFY_DURATION s through pgshift-async and then pgshift-sync
# (VERIFY_CLIENTS clients), the queue drains, and POST /migration/verify {"database":"app"} compares
# the stores table by table. Expected: pgbench_history differs row by row (its mtime is now(),
# evaluated again when the transaction is replayed; it has no primary key, so whole rows are compared),
# the other tables do not. Appends a section to bench/RESULTS.md (unless RESULTS=none).
#
# Knobs: MODES="tpcb-simple insert-simple"  CLIENTS="1 16 64"  DURATION=15 (s per run)  REPEATS=3
#        JOBS=2  SCALE=10  WARMUP=3  TARGETS="pgshift-off pgshift-async pgshift-sync" (direct may be
#        added: the source primary)  MIRROR_QUEUE=10000  MIRROR_TIMEOUT=5s  DRAIN_LIMIT=300
#        VERIFY=1  VERIFY_DURATION=10  VERIFY_CLIENTS=16  VERIFY_FULL_BELOW=100000000 (tables with
#        fewer rows are compared whole)  NOTE  RESULTS=bench/RESULTS.md|none
#        OUTDIR=bench/out/dualwrite-<time>  and bench/lib.sh's (POOL_SIZE, WORKERS, PGSHIFT_BIN, ...)
set -uo pipefail

BENCH_NAME="dualwrite"
case "${1:-}" in -h | --help) sed -n '2,/^set /{/^#/p}' "$0"; exit 0 ;; "") ;; *) echo "dualwrite.sh: no arguments (see --help)" >&2; exit 2 ;; esac
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

MODES=${MODES:-"tpcb-simple insert-simple"}
CLIENTS=${CLIENTS:-"1 16 64"}
DURATION=${DURATION:-15}
REPEATS=${REPEATS:-3}
JOBS=${JOBS:-2}
SCALE=${SCALE:-10}
WARMUP=${WARMUP:-3}
TARGETS=${TARGETS:-"pgshift-off pgshift-async pgshift-sync"}
MIRROR_QUEUE=${MIRROR_QUEUE:-10000}
MIRROR_TIMEOUT=${MIRROR_TIMEOUT:-5s}
DRAIN_LIMIT=${DRAIN_LIMIT:-300}
VERIFY=${VERIFY:-1}
VERIFY_DURATION=${VERIFY_DURATION:-10}
VERIFY_CLIENTS=${VERIFY_CLIENTS:-16}
VERIFY_FULL_BELOW=${VERIFY_FULL_BELOW:-100000000}
NOTE=${NOTE:-}
RESULTS=${RESULTS:-$BENCH_DIR/RESULTS.md}
OUTDIR=${OUTDIR:-$BENCH_DIR/out/dualwrite-$(date +%Y%m%d-%H%M%S)}
TXLOG=1

mkdir -p "$OUTDIR" || die "cannot create $OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
# The insert-only workload: an explicit random key, values chosen by pgbench (client side).
CUSTOM_SCRIPTS[insert]=$OUTDIR/insert.sql
cat >"$OUTDIR/insert.sql" <<'EOF'
\set id random(1, 1000000000)
\set v random(1, 1000000)
INSERT INTO dw_insert (id, v, note) VALUES (:id, :v, 'pgbench dual-write') ON CONFLICT DO NOTHING;
EOF
INSERT_DDL="CREATE TABLE IF NOT EXISTS dw_insert (id bigint PRIMARY KEY, v integer NOT NULL, note text NOT NULL)"

for m in $MODES; do
  case $m in tpcb-* | insert-*) mode_args "$m" >/dev/null || die "bad mode '$m'" ;; *) die "bad mode '$m' (tpcb-<proto>|insert-<proto>)" ;; esac
done
for t in $TARGETS; do
  [[ " direct pgshift-off pgshift-async pgshift-sync " == *" $t "* ]] || die "bad target '$t'"
done
for c in $CLIENTS $VERIFY_CLIENTS; do [[ "$c" =~ ^[0-9]+$ ]] || die "bad client count '$c'"; done

raise_nofile
ensure_postgres
ensure_pgshift
install_trap
start_bed
start_target_bed 0
# Both stores get the same pgbench tables (pgbench -i is deterministic: balances 0, no history).
init_pgbench "$SCALE" &
ip=$!
init_pgbench "$SCALE" "$TARGET_PORT" || die "pgbench -i on the target failed"
wait "$ip" || die "pgbench -i on the source failed"
for p in "$PRIMARY_PORT" "$TARGET_PORT"; do
  psql -X -q -p "$p" -c "$INSERT_DDL" >/dev/null || die "cannot create dw_insert on port $p"
done

migration_toml() { # mirror_mode state-file
  cat <<EOF
[migration]
state_file = "$2"
sync = "statement"
mirror_mode = "$1"
mirror_queue = $MIRROR_QUEUE
mirror_timeout = "$MIRROR_TIMEOUT"
verify_database = "app"
verify_full_below = $VERIFY_FULL_BELOW
[migration.target]
host = "127.0.0.1"
port = $TARGET_PORT
EOF
}
start_pgshift_as pgshift-off false 1 "$(migration_toml async "$WORK/pgshift-off.migration.json")"
start_pgshift_as pgshift-async false 1 "$(migration_toml async "$WORK/pgshift-async.migration.json")"
start_pgshift_as pgshift-sync false 1 "$(migration_toml sync "$WORK/pgshift-sync.migration.json")"
for t in pgshift-async pgshift-sync; do
  ans=$(admin_post "$t" /migration/phase '{"phase":"dual_write"}')
  [[ "$(tail -n1 <<<"$ans")" == 200 && "$(migration_state "$t")" == dual_write* ]] ||
    die "$t: POST /migration/phase dual_write answered: $ans"
  say "$t: phase dual_write, mirror_mode ${t#pgshift-} (target connected: $(admin_get "$t" /migration |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_connected"])'))"
done

# Before a TPC-B run, what pgbench's own vacuum does, on both stores directly (the same on both).
tpcb_housekeeping() {
  local p
  for p in "$PRIMARY_PORT" "$TARGET_PORT"; do
    psql -X -q -p "$p" -c 'VACUUM pgbench_branches' -c 'VACUUM pgbench_tellers' \
      -c 'TRUNCATE pgbench_history' >/dev/null 2>&1 || say "warning: TPC-B housekeeping on port $p failed"
  done
}

# After a run through instance T: queue depth at once, then wait until it is empty. Sets QUEUE_END,
# DRAIN_S, and STATE_AFTER (migration_state once drained).
drain() {
  local t=$1 s0=$EPOCHREALTIME st q
  st=$(migration_state "$t")
  read -r _ QUEUE_END _ <<<"$st"
  q=$QUEUE_END
  local deadline=$((SECONDS + DRAIN_LIMIT))
  while ((q > 0 && SECONDS < deadline)); do
    sleep 0.2
    st=$(migration_state "$t")
    read -r _ q _ <<<"$st"
  done
  ((q > 0)) && say "warning: $t's mirror queue still holds $q after ${DRAIN_LIMIT}s"
  DRAIN_S=0.0 # already empty when pgbench finished; else seconds until it was, polled every 0.2 s
  ((QUEUE_END > 0)) && DRAIN_S=$(awk -v a="$s0" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.1f", b - a}')
  STATE_AFTER=$st
}

RES=$OUTDIR/results.tsv
SIDE=$OUTDIR/dualwrite.tsv
nruns=$((REPEATS * $(wc -w <<<"$MODES") * $(wc -w <<<"$CLIENTS") * $(wc -w <<<"$TARGETS")))
say "$nruns runs of ${DURATION}s, about $((nruns * (DURATION + 3) / 60 + 1)) min plus mirror drains; logs in $OUTDIR"

if ((WARMUP > 0)); then
  for t in $TARGETS; do
    warmup "$t" "$OUTDIR/warmup-$t.log" -f "$OUTDIR/insert.sql" -c 4
    [[ $t == pgshift-* ]] && drain "$t"
  done
fi

echo "$RES_HEADER" >"$RES"
printf 'rep\ttarget\tmode\tclients\ttxlogs\tmirrored\tfailed\tdiverged\tqueue_end\tdrain_s\tcpu_s_per_10k_incl_drain\n' >"$SIDE"
# One measured run through target T (pgbench_run), then the mirror bookkeeping: row in $SIDE.
dw_run() {
  local rep=$1 t=$2 mode=$3 c=$4 s0 pid t2 incl=n/a m0 f0 d0 m1 f1 d1
  s0=""
  [[ $t == pgshift-* ]] && s0=$(migration_state "$t")
  pgbench_run "$rep" "$t" "$mode" "$c"
  if [[ $t == pgshift-* ]]; then
    drain "$t"
    pid=$(target_pid "$t")
    t2=$(cpu_ticks "$pid")
    if ((RUN_T0 >= 0 && t2 >= 0)) && [[ -n "$RUN_XACTS" ]] && ((RUN_XACTS > 0)); then
      incl=$(awk -v t=$((t2 - RUN_T0)) -v hz="$CLK_TCK" -v x="$RUN_XACTS" 'BEGIN{printf "%.3f", t/hz/x*10000}')
    fi
    read -r _ _ m0 f0 d0 <<<"$s0"
    read -r _ _ m1 f1 d1 <<<"$STATE_AFTER"
    if [[ $t == pgshift-off ]]; then
      printf '%s\t%s\t%s\t%s\t%s\t-\t-\t-\t-\t-\t%s\n' "$rep" "$t" "$mode" "$c" "$RUN_TXLOGS" "$incl" >>"$SIDE"
    else
      printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$rep" "$t" "$mode" "$c" "$RUN_TXLOGS" $((m1 - m0)) \
        $((f1 - f0)) $((d1 - d0)) "$QUEUE_END" "$DRAIN_S" "$incl" >>"$SIDE"
      say "  mirror: +$((m1 - m0)) mirrored, +$((f1 - f0)) failed, +$((d1 - d0)) diverged; queue $QUEUE_END at the end," \
        "empty after ${DRAIN_S}s; CPU incl. drain $incl s/10k"
    fi
  else
    printf '%s\t%s\t%s\t%s\t%s\t-\t-\t-\t-\t-\tn/a\n' "$rep" "$t" "$mode" "$c" "$RUN_TXLOGS" >>"$SIDE"
  fi
}

pgbench_run_title
for rep in $(seq 1 "$REPEATS"); do
  for mode in $MODES; do
    for c in $CLIENTS; do
      for t in $TARGETS; do
        [[ $mode == tpcb-* ]] && tpcb_housekeeping
        dw_run "$rep" "$t" "$mode" "$c"
        sleep 1
      done
    done
  done
done
FACTS=$(host_facts_md)

# ---- verification stretch ----
VERIFY_MD=""
if ((VERIFY)); then
  say "verification: re-initialising both stores identically, then ${VERIFY_DURATION}s of each workload" \
    "through pgshift-async and pgshift-sync ($VERIFY_CLIENTS clients)"
  init_pgbench "$SCALE" &
  ip=$!
  init_pgbench "$SCALE" "$TARGET_PORT" || die "pgbench -i on the target failed"
  wait "$ip" || die "pgbench -i on the source failed"
  for p in "$PRIMARY_PORT" "$TARGET_PORT"; do psql -X -q -p "$p" -c 'TRUNCATE dw_insert' >/dev/null; done
  VSIDE=$OUTDIR/verify-runs.tsv
  echo "$RES_HEADER" >"$OUTDIR/verify-results.tsv"
  printf 'rep\ttarget\tmode\tclients\ttxlogs\tmirrored\tfailed\tdiverged\tqueue_end\tdrain_s\tcpu_s_per_10k_incl_drain\n' >"$VSIDE"
  saved="$RES|$SIDE|$DURATION"
  RES=$OUTDIR/verify-results.tsv
  SIDE=$VSIDE
  DURATION=$VERIFY_DURATION
  for mode in $MODES; do
    for t in pgshift-async pgshift-sync; do dw_run v "$t" "$mode" "$VERIFY_CLIENTS"; done
  done
  IFS='|' read -r RES SIDE DURATION <<<"$saved"
  say "POST /migration/verify {\"database\":\"app\"}"
  admin_post pgshift-sync /migration/verify '{"database":"app"}' 1800 >"$OUTDIR/verify.json" 2>&1 ||
    say "verify request failed: $(head -c 300 "$OUTDIR/verify.json")"
  say "verify answered HTTP $(tail -n1 "$OUTDIR/verify.json")"
  python3 "$BENCH_DIR/report.py" verify "$OUTDIR/verify.json" --markdown "$OUTDIR/verify.md" \
    --note "public.pgbench_history=expected: no primary key, so whole rows are compared, and mtime is now(), evaluated again when the target replays the INSERT; equal row counts mean every transaction was replayed" ||
    say "report.py verify failed"
  python3 "$BENCH_DIR/report.py" dualwrite "$OUTDIR/verify-results.tsv" "$VSIDE" --targets "pgshift-async pgshift-sync" \
    --modes "$MODES" --clients "$VERIFY_CLIENTS" --markdown "$OUTDIR/verify-runs.md" >/dev/null || say "report.py failed"
  VERIFY_MD=$OUTDIR/verify.md
fi

SETTINGS="scale $SCALE on both stores; pgbench -n -T $DURATION s x $REPEATS repeats, -j $JOBS, -l; clients $CLIENTS;"
SETTINGS+=" workloads $MODES (insert = \`INSERT INTO dw_insert (id, v, note) VALUES (:id, :v, '...') ON CONFLICT DO"
SETTINGS+=" NOTHING\`, id and v random, chosen by pgbench); three pgshift instances, the same config (transaction mode,"
SETTINGS+=" pool $POOL_SIZE, workers $WORKERS$( ((WORKERS == 0)) && echo " = $(nproc) threads"), no replicas) and"
SETTINGS+=" [migration] (target = a second pgbed cluster, mirror_queue $MIRROR_QUEUE, mirror_timeout $MIRROR_TIMEOUT)"
SETTINGS+=" but for phase / mirror_mode; TPC-B housekeeping (vacuum, truncate history) on both stores before each"
SETTINGS+=" TPC-B run; the mirror queue drained after every run; logs in ${OUTDIR#"$ROOT"/}"
{
  echo
  echo "## $(date -u '+%Y-%m-%d %H:%M UTC'): dual-write latency (bench/dualwrite.sh)"
  echo
  [[ -n "$NOTE" ]] && printf '**%s**\n\n' "$NOTE"
  echo "$FACTS"
  echo "- settings: $SETTINGS"
} >"$OUTDIR/section.md"
python3 "$BENCH_DIR/report.py" dualwrite "$RES" "$SIDE" --targets "$TARGETS" --modes "$MODES" --clients "$CLIENTS" \
  --markdown "$OUTDIR/table.md" || die "report.py failed"
cat "$OUTDIR/table.md" >>"$OUTDIR/section.md"
if [[ -n "$VERIFY_MD" ]]; then
  {
    printf '\nVerification stretch: both stores re-initialised identically (pgbench -i -s %s, dw_insert emptied),' "$SCALE"
    printf ' then %s s of each workload at %s clients through dual_write async and then sync (columns as above):\n\n' \
      "$VERIFY_DURATION" "$VERIFY_CLIENTS"
    [[ -f "$OUTDIR/verify-runs.md" ]] && grep '^|' "$OUTDIR/verify-runs.md"
    cat "$VERIFY_MD"
  } >>"$OUTDIR/section.md"
fi
if [[ "$RESULTS" != none ]]; then
  cat "$OUTDIR/section.md" >>"$RESULTS"
  say "appended to $RESULTS"
fi
say "results: $RES, $SIDE; section: $OUTDIR/section.md"
