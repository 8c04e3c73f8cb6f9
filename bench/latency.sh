#!/usr/bin/env bash
# bench/latency.sh: what a pooler adds to one client's latency, pgshift vs PgBouncer vs direct.
#
#   bench/latency.sh
#
# Same bed as bench/run.sh (PostgreSQL 15 cluster, pgshift and PgBouncer in transaction mode, same
# pool size). One client (pgbench -c 1 -j 1), select-only, with per-transaction logs (-l); repeats
# interleave the targets (direct, pgbouncer, pgshift, direct, ...). Reports mean, median, p90, p99,
# p99.9 and max per target over all its transactions, and the latency each pooler adds over direct
# (median and p99, in microseconds). Appends a section to bench/RESULTS.md.
#
# Knobs: DURATION=10 (s per run)  REPEATS=3  PROTOCOL=simple (pgbench -M: simple|extended|prepared)
#        SCALE=10  WARMUP=2  TARGETS="direct pgbouncer pgshift"  NOTE  RESULTS  OUTDIR
#        and bench/lib.sh's (POOL_SIZE, WORKERS, PGSHIFT_BIN, ...)
set -uo pipefail

BENCH_NAME=latency
case "${1:-}" in -h | --help) sed -n '2,16p' "$0"; exit 0 ;; "") ;; *) echo "latency.sh: no arguments (see --help)" >&2; exit 2 ;; esac
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DURATION=${DURATION:-10}
REPEATS=${REPEATS:-3}
PROTOCOL=${PROTOCOL:-simple}
SCALE=${SCALE:-10}
WARMUP=${WARMUP:-2}
TARGETS=${TARGETS:-"direct pgbouncer pgshift"}
NOTE=${NOTE:-}
RESULTS=${RESULTS:-$BENCH_DIR/RESULTS.md}
OUTDIR=${OUTDIR:-$BENCH_DIR/out/latency-$(date +%Y%m%d-%H%M%S)}
case $PROTOCOL in simple | extended | prepared) ;; *) die "PROTOCOL must be simple, extended or prepared" ;; esac
for t in $TARGETS; do [[ " direct pgbouncer pgshift " == *" $t "* ]] || die "bad target '$t'"; done

mkdir -p "$OUTDIR" || die "cannot create $OUTDIR"
setup_all "$SCALE"

say "pgbench -c 1 -S -M $PROTOCOL -T $DURATION, $REPEATS repeats x targets: $TARGETS"
for t in $TARGETS; do
  ((WARMUP > 0)) && pgbench -n -S -M "$PROTOCOL" -c 1 -T "$WARMUP" -p "$(target_port "$t")" >/dev/null 2>&1
done

declare -A LOGS
failed=""
for rep in $(seq 1 "$REPEATS"); do
  for t in $TARGETS; do
    prefix="$OUTDIR/r$rep-$t"
    timeout -k 5 $((DURATION + 60)) pgbench -n -S -M "$PROTOCOL" -c 1 -j 1 -T "$DURATION" -l --log-prefix="$prefix" \
      -p "$(target_port "$t")" >"$prefix.out" 2>&1
    rc=$?
    f=$(compgen -G "$prefix.[0-9]*" | head -1)
    tps=$(grep -oP 'tps = \K[0-9.]+(?= \(without)' "$prefix.out" | head -1)
    if ((rc != 0)) || [[ -z "$f" ]]; then
      err=$(grep -m1 -E 'error|ERROR|FATAL|aborted' "$prefix.out" | cut -c1-200)
      say "rep $rep $t: FAIL (exit $rc) ${err}"
      failed+="- ${t} repeat ${rep}: exit ${rc} \`${err}\`"$'\n'
      continue
    fi
    LOGS[$t]+="${LOGS[$t]:+,}$f"
    say "rep $rep $t: ${tps:-?} tps, $(wc -l <"$f") transactions logged"
    sleep 1
  done
done

args=()
for t in $TARGETS; do args+=("$t=${LOGS[$t]:-}"); done
{
  echo
  echo "## $(date -u '+%Y-%m-%d %H:%M UTC'): single-client latency (bench/latency.sh)"
  echo
  [[ -n "$NOTE" ]] && printf '**%s**\n\n' "$NOTE"
  host_facts_md
  echo "- settings: pgbench -n -S -M $PROTOCOL -c 1 -j 1 -T $DURATION s x $REPEATS repeats, interleaved;" \
    "scale $SCALE; pool $POOL_SIZE; pgshift workers $WORKERS; replicas $REPLICAS; logs in ${OUTDIR#"$ROOT"/}"
} >"$OUTDIR/section.md"
python3 "$BENCH_DIR/report.py" latency --markdown "$OUTDIR/table.md" "${args[@]}" || die "report.py failed"
cat "$OUTDIR/table.md" >>"$OUTDIR/section.md"
[[ -n "$failed" ]] && printf '\nFailed runs:\n\n%s' "$failed" >>"$OUTDIR/section.md"
if [[ "$RESULTS" != none ]]; then
  cat "$OUTDIR/section.md" >>"$RESULTS"
  say "appended to $RESULTS"
fi
