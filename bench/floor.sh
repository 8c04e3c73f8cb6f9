#!/usr/bin/env bash
# bench/floor.sh: the least any proxy in the middle can cost per transaction, next to PgBouncer's
# and pgshift's cost, in the same run.
#
#   bench/floor.sh
#
# Same bed as bench/run.sh, plus bench/forwarder.c (built here with cc): a one-to-one TCP
# forwarder, one epoll loop, one recv and one send per readable socket, no parsing, pooling,
# timers or TLS. For pgbench -S at CLIENTS clients, TX transactions per client, interleaved,
# REPEATS times: user and system CPU per transaction of each middle process (/proc/PID/stat),
# and pgbench's TPS. The forwarder's system time is the kernel's share of the socket calls every
# proxy makes per transaction; no pooler can spend less than that in the kernel without making
# fewer or cheaper calls. Appends a section to bench/RESULTS.md.
#
# Knobs: CLIENTS=16  JOBS=2  TX=4000  REPEATS=3  PROTOCOL=simple  TARGETS="forwarder pgbouncer pgshift"
#        NOTE  RESULTS  OUTDIR, and bench/lib.sh's (PGBOUNCER_BIN, WORKERS, PGSHIFT_BIN, ...)
set -uo pipefail

BENCH_NAME=floor
case "${1:-}" in -h | --help) sed -n '2,17p' "$0"; exit 0 ;; "") ;; *) echo "floor.sh: no arguments (see --help)" >&2; exit 2 ;; esac
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CLIENTS=${CLIENTS:-16}
JOBS=${JOBS:-2}
TX=${TX:-4000}
REPEATS=${REPEATS:-3}
PROTOCOL=${PROTOCOL:-simple}
TARGETS=${TARGETS:-"forwarder pgbouncer pgshift"}
NOTE=${NOTE:-}
RESULTS=${RESULTS:-$BENCH_DIR/RESULTS.md}
OUTDIR=${OUTDIR:-$BENCH_DIR/out/floor-$(date +%Y%m%d-%H%M%S)}
for t in $TARGETS; do [[ " forwarder pgbouncer pgshift " == *" $t "* ]] || die "bad target '$t'"; done
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

port_of() { if [[ $1 == forwarder ]]; then echo "$FWD_PORT"; else target_port "$1"; fi; }
pid_of() { if [[ $1 == forwarder ]]; then echo "$FWD_PID"; else target_pid "$1"; fi; }
# utime and stime of a process in clock ticks: "U S".
ticks_us() { local s; s=$(cat /proc/"$1"/stat) && s=${s##*) } && awk '{print $12, $13}' <<<"$s"; }

for t in $TARGETS; do
  pgbench -n -S -M "$PROTOCOL" -c "$CLIENTS" -j "$JOBS" -T 2 -p "$(port_of "$t")" >/dev/null 2>&1 || true
done
say "$REPEATS x $TARGETS: pgbench -n -S -M $PROTOCOL -c $CLIENTS -j $JOBS -t $TX"
printf 'rep\ttarget\ttx\tuser_ticks\tsys_ticks\ttps\n' >"$OUTDIR/cpu.tsv"
for rep in $(seq 1 "$REPEATS"); do
  for t in $TARGETS; do
    pid=$(pid_of "$t")
    read -r u0 s0 < <(ticks_us "$pid")
    pgbench -n -S -M "$PROTOCOL" -c "$CLIENTS" -j "$JOBS" -t "$TX" -p "$(port_of "$t")" >"$OUTDIR/r$rep-$t.log" 2>&1 \
      || say "pgbench $t failed: $(tail -1 "$OUTDIR/r$rep-$t.log")"
    read -r u1 s1 < <(ticks_us "$pid")
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
    "forwarder = bench/forwarder.c (one-to-one, one epoll loop); poolers in transaction mode, pool $POOL_SIZE;" \
    "pgshift workers ${WORKERS}; logs in ${OUTDIR#"$ROOT"/}"
  echo
  echo "CPU of the middle process per transaction (utime and stime from /proc/PID/stat), median of the runs:"
  echo
  awk -F'\t' -v hz="$CLK_TCK" -v order="$TARGETS" '
    NR == 1 { next }
    { n[$2]++; u[$2, n[$2]] = $4 * 1e6 / hz / $3; s[$2, n[$2]] = $5 * 1e6 / hz / $3; t[$2, n[$2]] = $6 }
    function med(a, name, k,   i, j, x, v) {
      for (i = 1; i <= k; i++) v[i] = a[name, i]
      for (i = 1; i <= k; i++) for (j = i + 1; j <= k; j++) if (v[j] < v[i]) { x = v[i]; v[i] = v[j]; v[j] = x }
      return k % 2 ? v[(k + 1) / 2] : (v[k / 2] + v[k / 2 + 1]) / 2
    }
    END {
      print "| middle process | user us/tx | system us/tx | total us/tx | TPS | runs |"
      print "|---|---|---|---|---|---|"
      split(order, names, " ")
      for (i = 1; i in names; i++) {
        m = names[i]; if (!(m in n)) continue
        mu = med(u, m, n[m]); ms = med(s, m, n[m])
        printf "| %s | %.1f | %.1f | %.1f | %.0f | %d |\n", m, mu, ms, mu + ms, med(t, m, n[m]), n[m]
      }
    }' "$OUTDIR/cpu.tsv"
} >"$OUTDIR/section.md"
cat "$OUTDIR/section.md"
if [[ "$RESULTS" != none ]]; then
  cat "$OUTDIR/section.md" >>"$RESULTS"
  say "appended to $RESULTS"
fi
