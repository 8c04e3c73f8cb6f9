#!/usr/bin/env bash
# bench/floor.sh: the least any proxy in the middle can cost per transaction, next to PgBouncer's
# and pgshift's cost, in the same run.
#
#   bench/floor.sh
#
# Same bed as bench/run.sh, plus bench/forwarder.c (built here with cc): a one-to-one TCP
# forwarder, one epoll loop, one recv and one send per readable socket, no parsing, pooling,
# timers or TLS; and bench/forwarder_uring.c, the same forwarder on io_uring (target "uring",
# built with liburing, installed if missing, left out saying why where it cannot be built).
# For pgbench -S at CLIENTS clients, TX transactions per client, interleaved, REPEATS times:
# user and system CPU per transaction of each middle process (/proc/PID/stat), and pgbench's
# TPS. The epoll forwarder's system time is the kernel's share of the socket calls every proxy
# makes per transaction; no pooler can spend less than that in the kernel without making fewer
# or cheaper calls, which is what the io_uring forwarder measures. Appends a section to
# bench/RESULTS.md.
#
# Knobs: CLIENTS=16  JOBS=2  TX=4000  REPEATS=3  PROTOCOL=simple  TARGETS="forwarder uring pgbouncer pgshift"
#        (add "direct" to TARGETS for pgbench straight to the primary: its TPS, no middle CPU)
#        NOTE  RESULTS  OUTDIR, and bench/lib.sh's (PGBOUNCER_BIN, WORKERS, PGSHIFT_BIN, ...)
set -uo pipefail

BENCH_NAME=floor
case "${1:-}" in -h | --help) sed -n '2,20p' "$0"; exit 0 ;; "") ;; *) echo "floor.sh: no arguments (see --help)" >&2; exit 2 ;; esac
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CLIENTS=${CLIENTS:-16}
JOBS=${JOBS:-2}
TX=${TX:-4000}
REPEATS=${REPEATS:-3}
PROTOCOL=${PROTOCOL:-simple}
TARGETS=${TARGETS:-"forwarder uring pgbouncer pgshift"}
NOTE=${NOTE:-}
RESULTS=${RESULTS:-$BENCH_DIR/RESULTS.md}
OUTDIR=${OUTDIR:-$BENCH_DIR/out/floor-$(date +%Y%m%d-%H%M%S)}
for t in $TARGETS; do [[ " direct forwarder uring pgbouncer pgshift " == *" $t "* ]] || die "bad target '$t'"; done
command -v cc >/dev/null || as_root apt-get install -y -q gcc >/dev/null || die "no C compiler (cc) to build the forwarder"
mkdir -p "$OUTDIR" || die "cannot create $OUTDIR"
setup_all 10

cc -O2 -o "$WORK/forwarder" "$BENCH_DIR/forwarder.c" || die "cannot build bench/forwarder.c"
FWD_PORT=$(pick_port "$(taken_ports)")
"$WORK/forwarder" "$FWD_PORT" "$PRIMARY_PORT" >"$WORK/forwarder.log" 2>&1 &
FWD_PID=$!
BG_PIDS+=("$FWD_PID")
wait_ready forwarder "$FWD_PORT" "$FWD_PID" "$WORK/forwarder.log"
say "forwarder up on port $FWD_PORT (pid $FWD_PID) toward the primary on $PRIMARY_PORT"

# The io_uring forwarder, where liburing can be had.
URING_PORT="" URING_PID=""
if [[ " $TARGETS " == *" uring "* ]]; then
  [[ -f /usr/include/liburing.h ]] || as_root apt-get install -y -q liburing-dev >/dev/null 2>&1 || true
  if cc -O2 -o "$WORK/forwarder_uring" "$BENCH_DIR/forwarder_uring.c" -luring 2>"$WORK/uring-cc.log"; then
    URING_PORT=$(pick_port "$(taken_ports) $FWD_PORT")
    "$WORK/forwarder_uring" "$URING_PORT" "$PRIMARY_PORT" >"$WORK/forwarder_uring.log" 2>&1 &
    URING_PID=$!
    BG_PIDS+=("$URING_PID")
    wait_ready forwarder_uring "$URING_PORT" "$URING_PID" "$WORK/forwarder_uring.log"
    say "io_uring forwarder up on port $URING_PORT (pid $URING_PID)"
  else
    say "no io_uring forwarder: bench/forwarder_uring.c does not build here (liburing missing?); left out"
    TARGETS=$(echo " $TARGETS " | sed 's/ uring / /; s/^ *//; s/ *$//')
  fi
fi

port_of() {
  case $1 in direct) echo "$PRIMARY_PORT" ;; forwarder) echo "$FWD_PORT" ;; uring) echo "$URING_PORT" ;; *) target_port "$1" ;; esac
}
pid_of() {
  case $1 in forwarder) echo "$FWD_PID" ;; uring) echo "$URING_PID" ;; *) target_pid "$1" ;; esac
}

for t in $TARGETS; do
  pgbench -n -S -M "$PROTOCOL" -c "$CLIENTS" -j "$JOBS" -T 2 -p "$(port_of "$t")" >/dev/null 2>&1 || true
done
say "$REPEATS x $TARGETS: pgbench -n -S -M $PROTOCOL -c $CLIENTS -j $JOBS -t $TX"
printf 'rep\ttarget\ttx\tuser_ticks\tsys_ticks\ttps\n' >"$OUTDIR/cpu.tsv"
for rep in $(seq 1 "$REPEATS"); do
  for t in $TARGETS; do
    pid=$(pid_of "$t")
    u0=0 s0=0
    [[ $t == direct ]] || read -r u0 s0 < <(ticks_us "$pid")
    pgbench -n -S -M "$PROTOCOL" -c "$CLIENTS" -j "$JOBS" -t "$TX" -p "$(port_of "$t")" >"$OUTDIR/r$rep-$t.log" 2>&1 \
      || say "pgbench $t failed: $(tail -1 "$OUTDIR/r$rep-$t.log")"
    u1=0 s1=0
    [[ $t == direct ]] || read -r u1 s1 < <(ticks_us "$pid")
    tps=$(awk '/^tps = /{print $3; exit}' "$OUTDIR/r$rep-$t.log")
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$rep" "$t" $((CLIENTS * TX)) $((u1 - u0)) $((s1 - s0)) "${tps:-0}" >>"$OUTDIR/cpu.tsv"
    say "rep $rep $t: user $((u1 - u0)) sys $((s1 - s0)) ticks for $((CLIENTS * TX)) tx, ${tps:-?} tps"
  done
done

{
  echo
  echo "## $(date -u '+%Y-%m-%d %H:%M UTC'): the floor under a proxy's CPU per transaction (bench/floor.sh)"
  echo
  [[ -n "$NOTE" ]] && printf '**%s**\n\n' "$NOTE"
  host_facts_md
  echo "- settings: pgbench -n -S -M $PROTOCOL -c $CLIENTS -j $JOBS -t $TX x $REPEATS repeats, interleaved;" \
    "forwarder = bench/forwarder.c (one-to-one, one epoll loop); uring = bench/forwarder_uring.c (the same on io_uring); poolers in transaction mode, pool $POOL_SIZE;" \
    "pgshift workers ${WORKERS}; logs in ${OUTDIR#"$ROOT"/}"
  echo
} >"$OUTDIR/section.md"
python3 "$BENCH_DIR/profile_report.py" --markdown "$OUTDIR/table.md" --clk-tck "$CLK_TCK" --cpu "$OUTDIR/cpu.tsv" \
  || die "profile_report.py failed"
cat "$OUTDIR/table.md" >>"$OUTDIR/section.md"
cat "$OUTDIR/section.md"
if [[ "$RESULTS" != none ]]; then
  cat "$OUTDIR/section.md" >>"$RESULTS"
  say "appended to $RESULTS"
fi
