#!/usr/bin/env bash
# bench/idle10k.sh: 10,000 idle clients held open plus 256 active ones, pgshift vs PgBouncer.
#
#   bench/idle10k.sh
#
# Same bed as bench/run.sh (PostgreSQL 15, pgbench tables, both poolers in transaction mode with the
# same pool). For each repeat and each pooler, a FRESH pooler process: after a short warm-up,
#   1. (BASELINE=1) pgbench -S with ACTIVE clients for DURATION s, nothing else connected;
#   2. bench/holdconns.py logs IDLE clients in (startup + SCRAM, one after another) and holds them
#      idle; RSS before and after;
#   3. the same pgbench run again while they are held; RSS after it.
# pgbench runs with per-transaction logs (-l), as bench/latency.sh does: the active clients' p50,
# p90, p99, p99.9 and max come from all repeats' logs pooled. Also reported: TPS, the pooler's CPU
# per 10,000 transactions, and its RSS per idle client ((RSS with the idle clients - RSS before) /
# idle clients opened). The issue-9 target: with 10,000 idle + 256 active on a pool of 20, pgshift's
# p99 below PgBouncer's, and at most 2 kB per idle client. The open-files limit is raised as
# bench/memory.sh does (NOFILE; the poolers need IDLE + ACTIVE + pool descriptors, holdconns.py IDLE).
# Appends a section to bench/RESULTS.md (unless RESULTS=none).
#
# Knobs: IDLE=10000  ACTIVE=256  DURATION=15 (s per pgbench run)  REPEATS=3  JOBS=2  SCALE=10
#        PROTOCOL=simple (pgbench -M; PgBouncer 1.18 fails prepared)  BASELINE=1  WARMUP=3  SETTLE=3
#        TARGETS="pgshift pgbouncer"  CONNECT_LIMIT=600 (s to log the idle clients in)  NOTE
#        RESULTS=bench/RESULTS.md|none  OUTDIR=bench/out/idle10k-<time>  and bench/lib.sh's
#        (POOL_SIZE=20, MAX_CLIENTS=12000, NOFILE, WORKERS, PGSHIFT_BIN, ...)
set -uo pipefail

BENCH_NAME="idle10k"
case "${1:-}" in -h | --help) sed -n '2,/^set /{/^#/p}' "$0"; exit 0 ;; "") ;; *) echo "idle10k.sh: no arguments (see --help)" >&2; exit 2 ;; esac
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

IDLE=${IDLE:-10000}
ACTIVE=${ACTIVE:-256}
DURATION=${DURATION:-15}
REPEATS=${REPEATS:-3}
JOBS=${JOBS:-2}
SCALE=${SCALE:-10}
PROTOCOL=${PROTOCOL:-simple}
BASELINE=${BASELINE:-1}
WARMUP=${WARMUP:-3}
SETTLE=${SETTLE:-3}
TARGETS=${TARGETS:-"pgshift pgbouncer"}
CONNECT_LIMIT=${CONNECT_LIMIT:-600}
NOTE=${NOTE:-}
RESULTS=${RESULTS:-$BENCH_DIR/RESULTS.md}
OUTDIR=${OUTDIR:-$BENCH_DIR/out/idle10k-$(date +%Y%m%d-%H%M%S)}
TXLOG=1
MODE=select-$PROTOCOL
mode_args "$MODE" >/dev/null || die "PROTOCOL must be simple, extended or prepared"
for t in $TARGETS; do [[ " pgbouncer pgshift " == *" $t "* ]] || die "bad target '$t' (pgshift or pgbouncer)"; done
for n in "$IDLE" "$ACTIVE"; do [[ "$n" =~ ^[0-9]+$ ]] || die "bad client count '$n'"; done

mkdir -p "$OUTDIR" || die "cannot create $OUTDIR"
raise_nofile
need=$((IDLE + ACTIVE + POOL_SIZE + 100))
nofile=$(ulimit -n)
if [[ "$nofile" != unlimited ]] && ((nofile < need)); then
  say "warning: open-files limit $nofile is below the $need descriptors a pooler needs here: expect failures"
fi
((IDLE + ACTIVE > MAX_CLIENTS)) && say "warning: max_client_conn is $MAX_CLIENTS, below $((IDLE + ACTIVE)) clients"
ensure_postgres
ensure_pgbouncer
ensure_pgshift
install_trap
start_bed
init_pgbench "$SCALE"

RES=$OUTDIR/results.tsv
IDLE_RES=$OUTDIR/idle.tsv
echo "$RES_HEADER" >"$RES"
printf 'rep\ttarget\tphase\tidle_opened\tactive\trss0_kb\trss1_kb\trss2_kb\tkb_per_idle\ttps\txacts\tcpu_s_per_10k\tstatus\ttxlogs\terror\n' >"$IDLE_RES"
phases=$( ((BASELINE)) && echo 2 || echo 1)
say "$((REPEATS * $(wc -w <<<"$TARGETS") * phases)) pgbench runs of ${DURATION}s with $ACTIVE clients; $IDLE idle clients" \
  "logged in $((REPEATS * $(wc -w <<<"$TARGETS"))) times; logs in $OUTDIR"

# Row of $IDLE_RES for the run just made (pgbench_run's RUN_*).
record() { # rep target phase opened rss0 rss1 rss2
  local per=-
  [[ $3 == idle ]] && per=$(awk -v a="$5" -v b="$6" -v n="$4" 'BEGIN{ if (n > 0) printf "%.2f", (b-a)/n; else print "-" }')
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$ACTIVE" "$5" "$6" "$7" \
    "$per" "${RUN_TPS:-}" "${RUN_XACTS:-}" "$RUN_PER10K" "$RUN_STATUS" "$RUN_TXLOGS" "${ERR:-$RUN_ERR}" >>"$IDLE_RES"
}

pgbench_run_title
for rep in $(seq 1 "$REPEATS"); do
  for t in $TARGETS; do
    "start_$t"
    pid=$(target_pid "$t")
    port=$(target_port "$t")
    warmup "$t" "$OUTDIR/warmup-$rep-$t.log" -S -M "$PROTOCOL" -c 16
    ERR=""
    if ((BASELINE)); then
      r0=$(rss_kb "$pid")
      pgbench_run "$rep-noidle" "$t" "$MODE" "$ACTIVE"
      record "$rep" "$t" no-idle 0 "$r0" "$r0" "$(rss_kb "$pid")"
      sleep 1
    fi
    sleep "$SETTLE"
    r0=$(rss_kb "$pid")
    s0=$SECONDS
    hold_clients "$port" "$IDLE" "$rep-$t"
    opened=$OPENED
    say "$t: $opened of $IDLE idle clients logged in in $((SECONDS - s0))s"
    sleep "$SETTLE"
    r1=$(rss_kb "$pid")
    ((opened == IDLE)) || ERR="opened $opened of $IDLE idle clients: $(grep -m1 -E 'failed|gave up|warning' "$OUTDIR/holdconns-$rep-$t.log" | cut -c1-160)"
    pgbench_run "$rep-idle" "$t" "$MODE" "$ACTIVE"
    r2=$(rss_kb "$pid")
    # The idle clients must still be there: holdconns.py alive.
    kill -0 "$HP" 2>/dev/null || ERR+="${ERR:+; }holdconns.py exited during the run (see its log)"
    kill -0 "$pid" 2>/dev/null || ERR+="${ERR:+; }$t exited!"
    record "$rep" "$t" idle "$opened" "$r0" "$r1" "$r2"
    say "$t: RSS $r0 kB -> $r1 kB with $opened idle ($(tail -n1 "$IDLE_RES" | cut -f9) kB each), $r2 kB after the active run${ERR:+; $ERR}"
    release_clients
    "stop_$t"
    sleep 1
  done
done

{
  echo
  echo "## $(date -u '+%Y-%m-%d %H:%M UTC'): $IDLE idle + $ACTIVE active clients (bench/idle10k.sh)"
  echo
  [[ -n "$NOTE" ]] && printf '**%s**\n\n' "$NOTE"
  host_facts_md
  echo "- settings: pgbench -n -S -M $PROTOCOL -c $ACTIVE -j $JOBS -T $DURATION s -l, x $REPEATS repeats, poolers" \
    "alternating, a fresh pooler process each time; idle clients: bench/holdconns.py (SCRAM, sequential), held" \
    "${SETTLE}s before the run; pool $POOL_SIZE toward the primary in both (transaction mode); max_client_conn" \
    "$MAX_CLIENTS; open-files limit $(ulimit -n); pgshift workers $WORKERS; scale $SCALE; logs in ${OUTDIR#"$ROOT"/}"
} >"$OUTDIR/section.md"
python3 "$BENCH_DIR/report.py" idle "$IDLE_RES" --markdown "$OUTDIR/table.md" || die "report.py failed"
cat "$OUTDIR/table.md" >>"$OUTDIR/section.md"
if [[ "$RESULTS" != none ]]; then
  cat "$OUTDIR/section.md" >>"$RESULTS"
  say "appended to $RESULTS"
fi
say "results: $IDLE_RES; section: $OUTDIR/section.md"
