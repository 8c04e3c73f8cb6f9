#!/usr/bin/env bash
# bench/split.sh: the read/write split's cost and effect, pgbench -S through pgshift with
# read_write_split = true and = false, and direct to the primary, interleaved in the same run.
#
#   bench/split.sh
#
# A bed with REPLICAS (2) streaming replicas (scripts/pgbed.sh), pgbench tables on the primary (the
# replicas replay them before anything is measured), and two pgshift instances in front of the same
# primary and replicas with the same settings but [routing] read_write_split: "pgshift-split" (true)
# and "pgshift-nosplit" (false), each with its admin port on a free port of 127.0.0.1. For each repeat
# x mode x client count every target runs once, back to back. Per run: pgbench's TPS and latency
# average, pgshift's CPU (utime+stime) per 10,000 transactions, and where the requests went: the
# per-backend `routed` counters of the instance's admin `/stats` before and after the run. Then, with
# MICRO=1, the classifier micro-benchmarks of benches/wire.rs (cold and cached, and the cache miss of
# pgbench -M simple's texts) through criterion: ns per statement. Appends a section to
# bench/RESULTS.md (unless RESULTS=none).
#
# Knobs: MODES="select-simple select-prepared" (select-extended too; -M protocol of pgbench -S)
#        CLIENTS="1 16 64"  DURATION=15 (s per run)  REPEATS=3  JOBS=2  SCALE=10  WARMUP=3
#        TARGETS="direct pgshift-nosplit pgshift-split" (pgbouncer may be added: it uses the primary)
#        REPLICAS=2  MICRO=1 (0: skip the micro-benchmarks; the first build of benches/wire.rs takes ~2
#        min on 2 cores)  NOTE  RESULTS=bench/RESULTS.md|none  OUTDIR=bench/out/split-<time>
#        and bench/lib.sh's (POOL_SIZE, WORKERS, PGSHIFT_BIN, TLS, KEEP, ...)
set -uo pipefail

BENCH_NAME="split"
case "${1:-}" in -h | --help) sed -n '2,/^set /{/^#/p}' "$0"; exit 0 ;; "") ;; *) echo "split.sh: no arguments (see --help)" >&2; exit 2 ;; esac
REPLICAS=${REPLICAS:-2}
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

MODES=${MODES:-"select-simple select-prepared"}
CLIENTS=${CLIENTS:-"1 16 64"}
DURATION=${DURATION:-15}
REPEATS=${REPEATS:-3}
JOBS=${JOBS:-2}
SCALE=${SCALE:-10}
WARMUP=${WARMUP:-3}
TARGETS=${TARGETS:-"direct pgshift-nosplit pgshift-split"}
MICRO=${MICRO:-1}
NOTE=${NOTE:-}
RESULTS=${RESULTS:-$BENCH_DIR/RESULTS.md}
OUTDIR=${OUTDIR:-$BENCH_DIR/out/split-$(date +%Y%m%d-%H%M%S)}
MICRO_BENCHES="classify/cold_pgbench_select classify/cached_pgbench_select classify/cold_orm_select"
MICRO_BENCHES+=" classify/cached_orm_select classify/cache_miss_pgbench_simple"

for m in $MODES; do
  if [[ $m != select-* ]] || ! mode_args "$m" >/dev/null; then die "bad mode '$m' (select-simple|select-extended|select-prepared)"; fi
done
for t in $TARGETS; do
  [[ " direct pgbouncer pgshift-nosplit pgshift-split " == *" $t "* ]] || die "bad target '$t'"
done
for c in $CLIENTS; do [[ "$c" =~ ^[0-9]+$ ]] || die "bad client count '$c'"; done
[[ "$REPLICAS" =~ ^[1-6]$ ]] || die "REPLICAS must be 1-6 (a split needs replicas)"

mkdir -p "$OUTDIR" || die "cannot create $OUTDIR"
raise_nofile
ensure_postgres
[[ " $TARGETS " == *" pgbouncer "* ]] && ensure_pgbouncer
ensure_pgshift
install_trap
start_bed
init_pgbench "$SCALE"
wait_replicas_caught_up
[[ " $TARGETS " == *" pgbouncer "* ]] && start_pgbouncer
start_pgshift_as pgshift-split true 1
start_pgshift_as pgshift-nosplit false 1

RES=$OUTDIR/results.tsv
ROUTES=$OUTDIR/routes.tsv
nruns=$((REPEATS * $(wc -w <<<"$MODES") * $(wc -w <<<"$CLIENTS") * $(wc -w <<<"$TARGETS")))
say "$nruns runs of ${DURATION}s, about $((nruns * (DURATION + 2) / 60 + 1)) min; logs in $OUTDIR"

for t in $TARGETS; do warmup "$t" "$OUTDIR/warmup-$t.log"; done

echo "$RES_HEADER" >"$RES"
printf 'rep\ttarget\tmode\tclients\txacts\trouted\n' >"$ROUTES"
pgbench_run_title
for rep in $(seq 1 "$REPEATS"); do
  for mode in $MODES; do
    for c in $CLIENTS; do
      for t in $TARGETS; do
        before=""
        [[ $t == pgshift-* ]] && before=$(pgshift_routed "$t")
        pgbench_run "$rep" "$t" "$mode" "$c"
        if [[ $t == pgshift-* ]]; then
          after=$(pgshift_routed "$t")
          # after - before, per backend
          delta=$(awk -v b="$before" -v a="$after" 'BEGIN{
            n = split(b, x, " "); for (i = 1; i <= n; i++) { split(x[i], kv, "="); B[kv[1]] = kv[2] }
            n = split(a, y, " "); s = ""
            for (i = 1; i <= n; i++) { split(y[i], kv, "="); s = s (s == "" ? "" : " ") kv[1] "=" kv[2] - B[kv[1]] }
            print s }')
          printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$rep" "$t" "$mode" "$c" "${RUN_XACTS:-0}" "$delta" >>"$ROUTES"
          say "  routed: $delta"
        fi
        sleep 1
      done
    done
  done
done

FACTS=$(host_facts_md) # while PostgreSQL still answers
# Stop the bed before the micro-benchmarks: they want the cores to themselves.
MICRO_DONE=0
if ((MICRO)); then
  for t in pgshift-split pgshift-nosplit; do stop_pgshift_as "$t"; done
  stop_pgbouncer
  "$PGBED" stop "$WORK/cluster" >/dev/null 2>&1 || true
  say "classifier micro-benchmarks: building benches/wire.rs (cargo bench --bench wire --no-run)"
  if WIRE=$(wire_bench_bin "$OUTDIR/wire-build.log"); then
    for b in $MICRO_BENCHES; do
      CRITERION_HOME="$OUTDIR/criterion" "$WIRE" --bench --warm-up-time 1 --measurement-time 3 --exact "$b" \
        >>"$OUTDIR/criterion.log" 2>&1 || say "criterion failed for $b (see $OUTDIR/criterion.log)"
    done
    MICRO_DONE=1
  else
    say "could not build benches/wire.rs (see $OUTDIR/wire-build.log): no micro-benchmark table"
  fi
fi

SETTINGS="scale $SCALE; pgbench -n -T $DURATION s x $REPEATS repeats, -j $JOBS; clients $CLIENTS; modes $MODES;"
SETTINGS+=" primary + $REPLICAS streaming replicas (scripts/pgbed.sh); two pgshift instances with the same config"
SETTINGS+=" (transaction mode, pool $POOL_SIZE per backend, workers $WORKERS$( ((WORKERS == 0)) && echo " = $(nproc) threads"),"
SETTINGS+=" read_your_writes and lag limits at their defaults) but read_write_split = true / false; direct = the"
SETTINGS+=" primary; $( ((TLS)) && echo "client TLS on; ")warmup ${WARMUP}s per target; logs in ${OUTDIR#"$ROOT"/}"
{
  echo
  echo "## $(date -u '+%Y-%m-%d %H:%M UTC'): read/write split (bench/split.sh)"
  echo
  [[ -n "$NOTE" ]] && printf '**%s**\n\n' "$NOTE"
  echo "$FACTS"
  echo "- settings: $SETTINGS"
} >"$OUTDIR/section.md"
python3 "$BENCH_DIR/report.py" pgbench "$RES" --targets "$TARGETS" --modes "$MODES" --clients "$CLIENTS" \
  --pair pgshift-split:pgshift-nosplit --pair pgshift-split:direct --markdown "$OUTDIR/table.md" || die "report.py failed"
python3 "$BENCH_DIR/report.py" routes "$ROUTES" --targets "$TARGETS" --modes "$MODES" --clients "$CLIENTS" \
  --markdown "$OUTDIR/routes.md" || die "report.py routes failed"
cat "$OUTDIR/table.md" "$OUTDIR/routes.md" >>"$OUTDIR/section.md"
if ((MICRO_DONE)); then
  # shellcheck disable=SC2086 # a list of names
  python3 "$BENCH_DIR/report.py" micro --dir "$OUTDIR/criterion" --markdown "$OUTDIR/micro.md" $MICRO_BENCHES &&
    cat "$OUTDIR/micro.md" >>"$OUTDIR/section.md"
fi
if [[ "$RESULTS" != none ]]; then
  cat "$OUTDIR/section.md" >>"$RESULTS"
  say "appended to $RESULTS"
fi
say "results: $RES, $ROUTES; section: $OUTDIR/section.md"
