#!/usr/bin/env bash
# bench/run.sh: pgbench throughput of pgshift, PgBouncer and a direct connection, side by side.
#
#   bench/run.sh [--replicas N]
#
# One command: installs PgBouncer if missing, builds pgshift (release; PGSHIFT_BIN skips that),
# starts a throwaway PostgreSQL 15 cluster (scripts/pgbed.sh), initializes pgbench, starts pgshift
# and PgBouncer in transaction mode with the same pool size, then runs pgbench interleaved: for each
# repeat x mode x client count, every target once, back to back (direct, pgbouncer, pgshift), so
# that drift of a shared machine hits all alike. Prints a median table and appends a dated section
# to bench/RESULTS.md. Everything it started is stopped and removed on exit (also on Ctrl-C).
#
# Knobs (environment):
#   MODES="select-simple select-extended select-prepared tpcb-simple tpcb-extended"
#           <script>-<protocol>: select = pgbench -S, tpcb = built-in TPC-B-like; -M protocol
#   CLIENTS="1 16 64 256"  DURATION=15 (s per run)  REPEATS=3  JOBS=2 (pgbench -j)  SCALE=10
#   WARMUP=3 (s of select-simple, 16 clients, per target before measuring; 0 = none)
#   TARGETS="direct pgbouncer pgshift"  POOL_SIZE=20  WORKERS=0  REPLICAS=0 (or --replicas N)
#   NOTE="..." (a line for RESULTS.md, e.g. "smoke run, machine busy")
#   RESULTS=bench/RESULTS.md (where to append; RESULTS=none: do not)  OUTDIR=bench/out/run-<time>
#   PGSHIFT_BIN, PGSHIFT_LOG, PGBOUNCER_BIN, KEEP, NOFILE: see bench/lib.sh
set -uo pipefail

BENCH_NAME=run
while (($#)); do
  case "$1" in
    --replicas) REPLICAS="${2:?--replicas needs a number}"; shift 2 ;;
    --replicas=*) REPLICAS="${1#*=}"; shift ;;
    -h | --help) sed -n '2,24p' "$0"; exit 0 ;;
    *) echo "run.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
done
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

MODES=${MODES:-"select-simple select-extended select-prepared tpcb-simple tpcb-extended"}
CLIENTS=${CLIENTS:-"1 16 64 256"}
DURATION=${DURATION:-15}
REPEATS=${REPEATS:-3}
JOBS=${JOBS:-2}
SCALE=${SCALE:-10}
WARMUP=${WARMUP:-3}
TARGETS=${TARGETS:-"direct pgbouncer pgshift"}
NOTE=${NOTE:-}
RESULTS=${RESULTS:-$BENCH_DIR/RESULTS.md}
OUTDIR=${OUTDIR:-$BENCH_DIR/out/run-$(date +%Y%m%d-%H%M%S)}

mode_args() { # mode -> pgbench arguments
  local script=${1%-*} proto=${1#*-}
  case $proto in simple | extended | prepared) ;; *) return 1 ;; esac
  case $script in select) echo "-S -M $proto" ;; tpcb) echo "-M $proto" ;; *) return 1 ;; esac
}
for m in $MODES; do mode_args "$m" >/dev/null || die "bad mode '$m' (want select|tpcb - simple|extended|prepared)"; done
for t in $TARGETS; do [[ " direct pgbouncer pgshift " == *" $t "* ]] || die "bad target '$t'"; done
for c in $CLIENTS; do [[ "$c" =~ ^[0-9]+$ ]] || die "bad client count '$c'"; done

# What pgbench's own pre-run vacuum does, done directly on the primary before every TPC-B run.
tpcb_housekeeping() {
  psql -X -q -p "$PRIMARY_PORT" -c 'VACUUM pgbench_branches' -c 'VACUUM pgbench_tellers' \
    -c 'TRUNCATE pgbench_history' >/dev/null 2>&1 || say "warning: TPC-B housekeeping failed"
}

mkdir -p "$OUTDIR" || die "cannot create $OUTDIR"
setup_all "$SCALE"
RES=$OUTDIR/results.tsv

nruns=$((REPEATS * $(wc -w <<<"$MODES") * $(wc -w <<<"$CLIENTS") * $(wc -w <<<"$TARGETS")))
say "$nruns runs of ${DURATION}s, about $((nruns * (DURATION + 2) / 60 + 1)) min; logs in $OUTDIR"
say "modes: $MODES | clients: $CLIENTS | -j $JOBS | repeats $REPEATS | scale $SCALE | targets: $TARGETS"

if ((WARMUP > 0)); then
  for t in $TARGETS; do
    pgbench -n -S -M simple -c 16 -j "$JOBS" -T "$WARMUP" -p "$(target_port "$t")" >"$OUTDIR/warmup-$t.log" 2>&1 ||
      say "warmup of $t failed: $(grep -m1 -iE 'error|fatal' "$OUTDIR/warmup-$t.log")"
  done
fi

printf 'rep\ttarget\tmode\tclients\tstatus\ttps\tlat_ms\txacts\tcpu_s\tcpu_s_per_10k\trss_kb_after\terror\n' >"$RES"
fmt='%-3s %-10s %-16s %7s %-6s %10s %9s %9s %7s %8s %s\n'
# shellcheck disable=SC2059
printf "$fmt" rep target mode clients status tps lat_ms xacts cpu_s s/10k error
for rep in $(seq 1 "$REPEATS"); do
  for mode in $MODES; do
    for c in $CLIENTS; do
      for t in $TARGETS; do
        port=$(target_port "$t")
        pid=$(target_pid "$t")
        log=$OUTDIR/r${rep}-${t}-${mode}-c${c}.log
        [[ $mode == tpcb-* ]] && tpcb_housekeeping
        if [[ -n "$pid" ]] && ! kill -0 "$pid" 2>/dev/null; then
          say "$t (pid $pid) is gone: see its log"
          pid=""
        fi
        t0=-1
        [[ -n "$pid" ]] && t0=$(cpu_ticks "$pid")
        # shellcheck disable=SC2046 # mode_args is meant to split
        timeout -k 5 $((DURATION + 60)) pgbench -n $(mode_args "$mode") -c "$c" -j "$JOBS" -T "$DURATION" \
          -p "$port" >"$log" 2>&1
        rc=$?
        t1=-1
        rss=-1
        [[ -n "$pid" ]] && { t1=$(cpu_ticks "$pid"); rss=$(rss_kb "$pid"); }
        tps=$(grep -oP 'tps = \K[0-9.]+(?= \(without initial connection time\))' "$log" | head -1)
        lat=$(grep -oP 'latency average = \K[0-9.]+' "$log" | head -1)
        xacts=$(grep -oP 'number of transactions actually processed: \K[0-9]+' "$log" | head -1)
        failed=$(grep -oP 'number of failed transactions: \K[0-9]+' "$log" | head -1)
        err=$(grep -m1 -E 'error|ERROR|FATAL|aborted|could not' "$log" | tr '\t' ' ' | cut -c1-220)
        status=ok
        if ((rc == 124 || rc == 137)); then
          status=HANG
          err="pgbench killed after $((DURATION + 60))s: $err"
        elif ((rc != 0)) || [[ -z "$tps" || "${failed:-0}" != 0 ]] || grep -q 'Run was aborted' "$log"; then
          status=FAIL
          [[ -n "$err" ]] || err="pgbench exit $rc: $(tail -n 1 "$log" | cut -c1-200)"
        fi
        cpu=n/a
        per10k=n/a
        if [[ -n "$pid" ]] && ((t0 >= 0 && t1 >= 0)); then
          cpu=$(ticks_to_s $((t1 - t0)))
          if [[ -n "$xacts" ]] && ((xacts > 0)); then
            per10k=$(awk -v s="$cpu" -v x="$xacts" 'BEGIN{printf "%.3f", s/x*10000}')
          fi
        fi
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$rep" "$t" "$mode" "$c" "$status" "${tps:-}" \
          "${lat:-}" "${xacts:-}" "$cpu" "$per10k" "$rss" "$err" >>"$RES"
        # shellcheck disable=SC2059
        printf "$fmt" "$rep" "$t" "$mode" "$c" "$status" "${tps:--}" "${lat:--}" "${xacts:--}" "$cpu" "$per10k" \
          "$([[ $status == ok ]] || echo "$err")"
        sleep 1
      done
    done
  done
done

SETTINGS="scale $SCALE; pgbench -T $DURATION s x $REPEATS repeats, -j $JOBS, -n; clients $CLIENTS; modes $MODES;"
SETTINGS+=" pool $POOL_SIZE server connections toward the primary in both poolers (transaction mode);"
SETTINGS+=" pgshift workers $WORKERS$( ((WORKERS == 0)) && echo " (= $(nproc) threads)"); replicas $REPLICAS"
((REPLICAS > 0)) && SETTINGS+=" (pgshift sends the reads there; PgBouncer and direct use the primary)"
SETTINGS+="; warmup ${WARMUP}s per target; per-run logs in ${OUTDIR#"$ROOT"/}"

{
  echo
  echo "## $(date -u '+%Y-%m-%d %H:%M UTC'): pgbench throughput (bench/run.sh)"
  echo
  [[ -n "$NOTE" ]] && printf '**%s**\n\n' "$NOTE"
  host_facts_md
  echo "- settings: $SETTINGS"
} >"$OUTDIR/section.md"
python3 "$BENCH_DIR/report.py" pgbench "$RES" --targets "$TARGETS" --modes "$MODES" --clients "$CLIENTS" \
  --markdown "$OUTDIR/table.md" || die "report.py failed"
cat "$OUTDIR/table.md" >>"$OUTDIR/section.md"
if [[ "$RESULTS" != none ]]; then
  cat "$OUTDIR/section.md" >>"$RESULTS"
  say "appended to $RESULTS"
fi
say "results: $RES"
