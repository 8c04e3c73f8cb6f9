#!/usr/bin/env bash
# bench/profile.sh: where a pooler's CPU per transaction goes, pgshift vs PgBouncer, same run.
#
#   bench/profile.sh
#
# Same bed as bench/run.sh. For pgbench -S (select-only) at CLIENTS clients, a fixed number of
# transactions per run, interleaved, REPEATS times:
#   1. user and system CPU per transaction of each pooler (/proc/PID/stat utime and stime apart);
#   2. system calls per transaction by name (strace -c -f on the pooler during one more run; strace
#      slows the run, the counts stay right);
#   3. user-space instructions per transaction (callgrind; runs with TX and 2*TX transactions per
#      client, the difference cancels start-up and logins) and pgshift's functions by self cost.
# Appends a section to bench/RESULTS.md. It answers why CPU per transaction cannot fall to half of
# PgBouncer's: the part both spend in the kernel on the same socket I/O.
#
# Knobs: CLIENTS=16  JOBS=2  TX=4000 (per client, runs 1-2)  REPEATS=3  PROTOCOL=simple  CG_TX=500
#        CG_CLIENTS=4  TOP=15  TARGETS="pgbouncer pgshift" (or one of them)  NOTE  RESULTS  OUTDIR
#        and bench/lib.sh's: PGBOUNCER_BIN picks the PgBouncer (e.g. a 1.25 build), PGBOUNCER_EXTRA
#        adds lines to its ini (PROTOCOL=prepared needs 1.21+ with "max_prepared_statements = 200")
set -uo pipefail

BENCH_NAME=profile
case "${1:-}" in -h | --help) sed -n '2,21p' "$0"; exit 0 ;; "") ;; *) echo "profile.sh: no arguments (see --help)" >&2; exit 2 ;; esac
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CLIENTS=${CLIENTS:-16}
JOBS=${JOBS:-2}
TX=${TX:-4000}
REPEATS=${REPEATS:-3}
PROTOCOL=${PROTOCOL:-simple}
CG_TX=${CG_TX:-500}
CG_CLIENTS=${CG_CLIENTS:-4}
TOP=${TOP:-15}
NOTE=${NOTE:-}
RESULTS=${RESULTS:-$BENCH_DIR/RESULTS.md}
OUTDIR=${OUTDIR:-$BENCH_DIR/out/profile-$(date +%Y%m%d-%H%M%S)}
command -v strace >/dev/null || as_root apt-get install -y -q strace >/dev/null || die "strace is missing"
command -v valgrind >/dev/null || as_root apt-get install -y -q valgrind >/dev/null || die "valgrind is missing"
mkdir -p "$OUTDIR" || die "cannot create $OUTDIR"
TARGETS=${TARGETS:-"pgbouncer pgshift"}
for t in $TARGETS; do [[ " pgbouncer pgshift " == *" $t "* ]] || die "bad target '$t' (pgbouncer, pgshift)"; done
setup_all 10

bench_tx() { # target clients tx-per-client -> pgbench output file
  target_pgbench "$1" -n -S -M "$PROTOCOL" -c "$2" -j "$JOBS" -t "$3" >"$4" 2>&1 || say "pgbench $1 failed: $(tail -1 "$4")"
}

say "1. user/system CPU: $REPEATS x $TARGETS, -c $CLIENTS -t $TX"
printf 'rep\ttarget\ttx\tuser_ticks\tsys_ticks\n' >"$OUTDIR/cpu.tsv"
for rep in $(seq 1 "$REPEATS"); do
  for t in $TARGETS; do
    pid=$(target_pid "$t")
    read -r u0 s0 < <(ticks_us "$pid")
    bench_tx "$t" "$CLIENTS" "$TX" "$OUTDIR/cpu-r$rep-$t.log"
    read -r u1 s1 < <(ticks_us "$pid")
    printf '%s\t%s\t%s\t%s\t%s\n' "$rep" "$t" $((CLIENTS * TX)) $((u1 - u0)) $((s1 - s0)) >>"$OUTDIR/cpu.tsv"
    say "rep $rep $t: user $((u1 - u0)) sys $((s1 - s0)) ticks for $((CLIENTS * TX)) tx"
  done
done

say "2. system calls: strace -c -f, -c $CLIENTS -t $((TX / 4))"
for t in $TARGETS; do
  pid=$(target_pid "$t")
  strace -c -f -q -o "$OUTDIR/strace-$t.txt" -p "$pid" &
  sp=$!
  sleep 1
  bench_tx "$t" "$CLIENTS" $((TX / 4)) "$OUTDIR/strace-$t.log"
  kill -INT "$sp"
  wait "$sp" 2>/dev/null
  echo $((CLIENTS * (TX / 4))) >"$OUTDIR/strace-$t.tx"
done

say "3. instructions: callgrind, -c $CG_CLIENTS -t $CG_TX and $((2 * CG_TX))"
CG_PORT_PGS=$(pick_port "$(taken_ports)")
sed -e "0,/^listen = .*/s//listen = \"127.0.0.1:$CG_PORT_PGS\"/" -e 's/^workers = .*/workers = 1/' \
  "$WORK/pgshift.toml" >"$WORK/cg-pgshift.toml"
CG_PORT_PGB=$(pick_port "$(taken_ports) $CG_PORT_PGS")
mkdir -p "$WORK/cgb"
sed -e "s/^listen_port = .*/listen_port = $CG_PORT_PGB/" -e "s#$WORK/pgbouncer#$WORK/cgb#g" \
  "$WORK/pgbouncer/pgbouncer.ini" >"$WORK/cgb/pgbouncer.ini"
cp "$WORK/pgbouncer/userlist.txt" "$WORK/cgb/"
chmod 0777 "$WORK/cgb"
((EUID == 0)) && chown -R postgres: "$WORK/cgb"
# Runs TARGET under callgrind for TX transactions per client; prints its total instructions.
# PgBouncer runs as postgres from the start (not with -u): callgrind must be able to write its file.
callgrind() {
  local t=$1 n=$2 out="$OUTDIR/callgrind.$1.$2" port cgout pre=()
  if [[ $t == pgshift ]]; then
    port=$CG_PORT_PGS cgout=$out
    valgrind --tool=callgrind --callgrind-out-file="$cgout" "$PGSHIFT" --config "$WORK/cg-pgshift.toml" >/dev/null 2>&1 &
  else
    port=$CG_PORT_PGB cgout=$WORK/cgb/cg.out
    ((EUID == 0)) && pre=(runuser -u postgres --)
    "${pre[@]}" valgrind --tool=callgrind --callgrind-out-file="$cgout" "$PGBOUNCER_BIN" "$WORK/cgb/pgbouncer.ini" \
      >/dev/null 2>&1 &
  fi
  BG_PIDS+=($!)
  for _ in $(seq 150); do pg_isready -q -h 127.0.0.1 -p "$port" && break; sleep 0.2; done
  pgbench -n -S -M "$PROTOCOL" -c "$CG_CLIENTS" -j 1 -t "$n" -h 127.0.0.1 -p "$port" >"$out.log" 2>&1 \
    || say "callgrind run of $t failed: $(tail -1 "$out.log")"
  pkill -INT -f -- "--callgrind-out-file=$cgout"
  for _ in $(seq 100); do pgrep -f -- "--callgrind-out-file=$cgout" >/dev/null || break; sleep 0.2; done
  [[ $cgout == "$out" ]] || mv "$cgout" "$out"
  grep -m1 '^summary:' "$out" | awk '{print $2}'
}
for t in $TARGETS; do
  a=$(callgrind "$t" "$CG_TX")
  b=$(callgrind "$t" $((2 * CG_TX)))
  printf '%s\t%s\t%s\t%s\n' "$t" "$a" "$b" $((CG_CLIENTS * CG_TX)) >>"$OUTDIR/instr.tsv"
  say "$t: $a instructions for $CG_TX/client, $b for $((2 * CG_TX))/client"
done
ann=()
for t in $TARGETS; do
  for n in "$CG_TX" $((2 * CG_TX)); do
    callgrind_annotate --inclusive=no --threshold=100 "$OUTDIR/callgrind.$t.$n" 2>/dev/null >"$OUTDIR/annotate-$t.$n.txt"
  done
  ann+=(--annotate "$t=$OUTDIR/annotate-$t.$CG_TX.txt,$OUTDIR/annotate-$t.$((2 * CG_TX)).txt,$((CG_CLIENTS * CG_TX))")
done

{
  echo
  echo "## $(date -u '+%Y-%m-%d %H:%M UTC'): where CPU per transaction goes (bench/profile.sh)"
  echo
  [[ -n "$NOTE" ]] && printf '**%s**\n\n' "$NOTE"
  host_facts_md
  echo "- settings: pgbench -n -S -M $PROTOCOL -c $CLIENTS -j $JOBS -t $TX x $REPEATS repeats, interleaved; strace" \
    "run -t $((TX / 4)); callgrind runs -c $CG_CLIENTS -t $CG_TX and $((2 * CG_TX)) (pgshift workers = 1); pool $POOL_SIZE;" \
    "logs in ${OUTDIR#"$ROOT"/}"
  [[ -n "${PGBOUNCER_EXTRA:-}" ]] && echo "- PgBouncer ini adds: \`$(paste -sd';' <<<"$PGBOUNCER_EXTRA")\`"
  echo
} >"$OUTDIR/section.md"
strace_args=()
for t in $TARGETS; do strace_args+=(--strace "$t=$OUTDIR/strace-$t.txt:$(cat "$OUTDIR/strace-$t.tx")"); done
python3 "$BENCH_DIR/profile_report.py" --markdown "$OUTDIR/table.md" --clk-tck "$CLK_TCK" --top "$TOP" \
  --cpu "$OUTDIR/cpu.tsv" --instr "$OUTDIR/instr.tsv" "${strace_args[@]}" "${ann[@]}" \
  || die "profile_report.py failed"
cat "$OUTDIR/table.md" >>"$OUTDIR/section.md"
if [[ "$RESULTS" != none ]]; then
  cat "$OUTDIR/section.md" >>"$RESULTS"
  say "appended to $RESULTS"
fi
