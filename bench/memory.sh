#!/usr/bin/env bash
# bench/memory.sh: memory (and CPU) per idle authenticated client, pgshift vs PgBouncer.
#
#   bench/memory.sh
#
# Same bed as bench/run.sh. For each client count and each pooler, a FRESH pooler process is
# started (so every row starts from the same idle state), answers one SELECT 1, and then
# bench/holdconns.py opens N client connections one after another (startup + SCRAM login, waiting
# for ReadyForQuery on each) and holds them idle. Read from /proc: RSS before, RSS with the N
# clients held (after SETTLE s), RSS after they closed; CPU (utime+stime) spent while they connected
# and while they were held idle for HOLD s. kB per client = (RSS with N - RSS idle) / N opened.
# Appends a section with both tables (per run, and growth from the smallest to the largest count)
# to bench/RESULTS.md.
#
# Limits: this shell's open-files limit is raised (NOFILE, default 65536) and the poolers inherit it;
# both get max_client_conn = MAX_CLIENTS (12000). A count above what either allows is recorded with
# the number that did open.
#
# Knobs: COUNTS="100 1000 10000"  TARGETS="pgshift pgbouncer"  SETTLE=3  HOLD=5
#        CONNECT_LIMIT=600 (s to open one count)  NOTE  RESULTS  OUTDIR  and bench/lib.sh's
set -uo pipefail

BENCH_NAME=memory
case "${1:-}" in -h | --help) sed -n '2,21p' "$0"; exit 0 ;; "") ;; *) echo "memory.sh: no arguments (see --help)" >&2; exit 2 ;; esac
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

COUNTS=${COUNTS:-"100 1000 10000"}
TARGETS=${TARGETS:-"pgshift pgbouncer"}
SETTLE=${SETTLE:-3}
HOLD=${HOLD:-5}
CONNECT_LIMIT=${CONNECT_LIMIT:-600}
NOTE=${NOTE:-}
RESULTS=${RESULTS:-$BENCH_DIR/RESULTS.md}
OUTDIR=${OUTDIR:-$BENCH_DIR/out/memory-$(date +%Y%m%d-%H%M%S)}
for t in $TARGETS; do [[ " pgbouncer pgshift " == *" $t "* ]] || die "bad target '$t' (pgshift or pgbouncer)"; done
for n in $COUNTS; do [[ "$n" =~ ^[0-9]+$ ]] || die "bad count '$n'"; done

mkdir -p "$OUTDIR" || die "cannot create $OUTDIR"
raise_nofile
max=0
for n in $COUNTS; do ((n > max)) && max=$n; done
nofile=$(ulimit -n)
if [[ "$nofile" != unlimited ]] && ((nofile < max + 100)); then
  say "warning: open-files limit $nofile is below $max clients + margin: expect the largest count to stop short"
fi
((max > MAX_CLIENTS)) && say "warning: max_client_conn is $MAX_CLIENTS, below $max"
ensure_postgres
ensure_pgbouncer
ensure_pgshift
install_trap
start_bed

RES=$OUTDIR/results.tsv

printf 'target\tclients\topened\trss0_kb\trss1_kb\tkb_per_client\tconnect_s\tconnect_cpu_s\tconnect_cpu_ms_each\thold_cpu_pct\trss2_kb\trss_round2_kb\trss2_after_kb\tnofile\terror\n' >"$RES"
for n in $COUNTS; do
  for t in $TARGETS; do
    "start_$t"
    pid=$(target_pid "$t")
    port=$(target_port "$t")
    sleep "$SETTLE"
    r0=$(rss_kb "$pid")
    c0=$(cpu_ticks "$pid")
    s0=$SECONDS
    hold_clients "$port" "$n" "$t-$n"
    opened=$OPENED
    c1=$(cpu_ticks "$pid")
    secs=$((SECONDS - s0))
    sleep "$SETTLE"
    r1=$(rss_kb "$pid")
    c2=$(cpu_ticks "$pid")
    sleep "$HOLD"
    c3=$(cpu_ticks "$pid")
    release_clients
    sleep "$SETTLE"
    r2=$(rss_kb "$pid")
    # Second round, same count: RSS back near round one's means memory is reused, not leaked.
    hold_clients "$port" "$n" "$t-$n-round2"
    opened2=$OPENED
    sleep "$SETTLE"
    r3=$(rss_kb "$pid")
    release_clients
    sleep "$SETTLE"
    r4=$(rss_kb "$pid")
    err=""
    ((opened == n)) || err=$(grep -m1 -E 'failed|gave up|warning' "$OUTDIR/holdconns-$t-$n.log" | cut -c1-200)
    ((opened2 == n)) || err+="${err:+; }round 2 opened $opened2"
    kill -0 "$pid" 2>/dev/null || err="$t exited! ${err}"
    per=$(awk -v a="$r0" -v b="$r1" -v n="$opened" 'BEGIN{ if (n > 0) printf "%.2f", (b-a)/n; else print "-" }')
    ccpu=$(ticks_to_s $((c1 - c0)))
    each=$(awk -v s="$ccpu" -v n="$opened" 'BEGIN{ if (n > 0) printf "%.3f", s*1000/n; else print "-" }')
    hold=$(awk -v t=$((c3 - c2)) -v hz="$CLK_TCK" -v h="$HOLD" 'BEGIN{printf "%.1f", t/hz/h*100}')
    lim=$(nofile_of "$pid")
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$t" "$n" "$opened" "$r0" "$r1" "$per" \
      "$secs" "$ccpu" "$each" "$hold" "$r2" "$r3" "$r4" "$lim" "$err" >>"$RES"
    say "$t $n clients: opened $opened in ${secs}s, RSS $r0 -> $r1 kB ($per kB/client), connect CPU ${ccpu}s" \
      "(${each} ms each), idle CPU ${hold}%, RSS after close $r2 kB; round 2: $r3 kB, after $r4 kB${err:+; $err}"
    "stop_$t"
  done
done

{
  echo
  echo "## $(date -u '+%Y-%m-%d %H:%M UTC'): memory per idle client (bench/memory.sh)"
  echo
  [[ -n "$NOTE" ]] && printf '**%s**\n\n' "$NOTE"
  host_facts_md
  echo "- settings: counts $COUNTS; settle ${SETTLE}s, idle hold ${HOLD}s; pool $POOL_SIZE; max_client_conn" \
    "$MAX_CLIENTS; open-files limit $(ulimit -n); pgshift workers $WORKERS, SCRAM with the plaintext password;" \
    "PgBouncer SCRAM with the verifier from pg_authid; clients: bench/holdconns.py (SCRAM, sequential)"
} >"$OUTDIR/section.md"
python3 "$BENCH_DIR/report.py" memory "$RES" --markdown "$OUTDIR/table.md" || die "report.py failed"
cat "$OUTDIR/table.md" >>"$OUTDIR/section.md"
if [[ "$RESULTS" != none ]]; then
  cat "$OUTDIR/section.md" >>"$RESULTS"
  say "appended to $RESULTS"
fi
say "results: $RES"
