#!/usr/bin/env bash
# bench/instructions.sh: instruction counts per operation of the criterion micro-benchmarks.
#
#   bench/instructions.sh [BENCH ...]      e.g. bench/instructions.sh classify/cold_orm_select
#
# Wall-clock nanoseconds jump around on a shared machine; retired instructions barely move, so a
# regression in the hot path shows here first. Builds benches/wire.rs (cargo bench --no-run), then
# runs each chosen operation alone (the binary's one-shot mode: BENCH_ONESHOT=name BENCH_ITERS=n)
# for N and for 2N iterations under `perf stat -e instructions:u` when this machine's perf can
# count instructions (`perf stat -e instructions true` tells), else under valgrind's callgrind.
# Instructions per op = (count(2N) - count(N)) / N: process start-up and set-up cancel out.
# With no arguments every operation runs (BENCH_LIST=1 on the binary lists them). With NS=1 (the
# default) criterion then times the same operations (1 s warm-up, 3 s measurement each) and their
# median ns/op goes in the same table, for scale (those move with the machine's load; counts do not).
# Appends a section to bench/RESULTS.md.
#
# Knobs: ITERS=20000 (N)  TOOL=auto|perf|callgrind  NS=1|0  NOTE  RESULTS=bench/RESULTS.md|none
#        OUTDIR=bench/out/instructions-<time>
set -uo pipefail

BENCH_NAME=instructions
case "${1:-}" in -h | --help) sed -n '2,20p' "$0"; exit 0 ;; esac
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ITERS=${ITERS:-20000}
NS=${NS:-1}
TOOL=${TOOL:-auto}
NOTE=${NOTE:-}
RESULTS=${RESULTS:-$BENCH_DIR/RESULTS.md}
OUTDIR=${OUTDIR:-$BENCH_DIR/out/instructions-$(date +%Y%m%d-%H%M%S)}

[[ "$ITERS" =~ ^[1-9][0-9]*$ ]] || die "ITERS must be a positive number"

if [[ "$TOOL" == auto ]]; then
  if perf stat -x, -e instructions:u true 2>&1 >/dev/null | grep -qE '^[0-9]+,'; then TOOL=perf; else TOOL=callgrind; fi
fi
case $TOOL in
  perf) command -v perf >/dev/null || die "perf not installed" ;;
  callgrind) command -v valgrind >/dev/null || die "valgrind not installed (apt-get install -y valgrind)" ;;
  *) die "TOOL must be auto, perf or callgrind" ;;
esac
mkdir -p "$OUTDIR" || die "cannot create $OUTDIR"

say "building benches/wire.rs (cargo bench --bench wire --no-run)"
BIN=$(wire_bench_bin "$OUTDIR/build.log") || die "could not build the wire benchmark"

declare -A ELEMS
ALL=()
while read -r name elems; do
  ALL+=("$name")
  ELEMS[$name]=$elems
done < <(BENCH_LIST=1 "$BIN")
((${#ALL[@]})) || die "$BIN listed no benchmarks"
if (($#)); then CHOSEN=("$@"); else CHOSEN=("${ALL[@]}"); fi
for b in "${CHOSEN[@]}"; do [[ -n "${ELEMS[$b]:-}" ]] || die "unknown benchmark '$b'; known: ${ALL[*]}"; done

count() { # bench iters -> instructions (user space) of one run
  local out
  case $TOOL in
    perf)
      out=$(BENCH_ONESHOT=$1 BENCH_ITERS=$2 perf stat -x, -e instructions:u "$BIN" 2>&1 >/dev/null)
      awk -F, '/instructions/{print $1; exit}' <<<"$out" ;;
    callgrind)
      out=$(BENCH_ONESHOT=$1 BENCH_ITERS=$2 valgrind --tool=callgrind --callgrind-out-file=/dev/null "$BIN" 2>&1 >/dev/null)
      grep -oP 'Collected : \K[0-9]+' <<<"$out" | tail -1 ;;
  esac
}

RES=$OUTDIR/results.tsv
declare -A PER
say "tool: $TOOL; N = $ITERS; ${#CHOSEN[@]} benchmark(s)"
printf '%-36s %14s %14s %12s %10s\n' benchmark "instr(N)" "instr(2N)" "per op" "per elem"
for b in "${CHOSEN[@]}"; do
  a=$(count "$b" "$ITERS")
  z=$(count "$b" $((ITERS * 2)))
  [[ "$a" =~ ^[0-9]+$ && "$z" =~ ^[0-9]+$ ]] || die "no instruction count for $b (tool $TOOL)"
  PER[$b]=$(awk -v a="$a" -v z="$z" -v n="$ITERS" 'BEGIN{printf "%.1f", (z-a)/n}')
  printf '%-36s %14s %14s %12s %10s\n' "$b" "$a" "$z" "${PER[$b]}" \
    "$(awk -v p="${PER[$b]}" -v e="${ELEMS[$b]}" 'BEGIN{printf "%.1f", p/e}')"
done

if ((NS)); then
  say "criterion: timing the same operations (about $((${#CHOSEN[@]} * 5)) s)"
  for b in "${CHOSEN[@]}"; do
    CRITERION_HOME="$OUTDIR/criterion" "$BIN" --bench --warm-up-time 1 --measurement-time 3 --exact "$b" \
      >>"$OUTDIR/criterion.log" 2>&1 || say "criterion failed for $b (see $OUTDIR/criterion.log)"
  done
fi
printf 'bench\titers\tper_op\telems\tper_elem\tns_per_op\ttool\n' >"$RES"
for b in "${CHOSEN[@]}"; do
  ns=-
  ((NS)) && ns=$(criterion_ns "$OUTDIR/criterion" "$b")
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$b" "$ITERS" "${PER[$b]}" "${ELEMS[$b]}" \
    "$(awk -v p="${PER[$b]}" -v e="${ELEMS[$b]}" 'BEGIN{printf "%.1f", p/e}')" "$ns" "$TOOL" >>"$RES"
done

commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
[[ -n "$(git -C "$ROOT" status --porcelain --untracked-files=no -- src benches Cargo.toml 2>/dev/null)" ]] && commit+="+dirty"
{
  echo
  echo "## $(date -u '+%Y-%m-%d %H:%M UTC'): instructions per operation (bench/instructions.sh)"
  echo
  [[ -n "$NOTE" ]] && printf '**%s**\n\n' "$NOTE"
  echo "- host: $(nproc) cores, CPU $(awk -F': ' '/^model name/{print $2; exit}' /proc/cpuinfo), kernel $(uname -r);" \
    "$(rustc --version 2>/dev/null); pgshift $commit; tool $TOOL$([[ $TOOL == callgrind ]] && echo " ($(valgrind --version))")"
} >"$OUTDIR/section.md"
python3 "$BENCH_DIR/report.py" instructions "$RES" --markdown "$OUTDIR/table.md" || die "report.py failed"
cat "$OUTDIR/table.md" >>"$OUTDIR/section.md"
if [[ "$RESULTS" != none ]]; then
  cat "$OUTDIR/section.md" >>"$RESULTS"
  say "appended to $RESULTS"
fi
