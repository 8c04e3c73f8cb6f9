#!/usr/bin/env bash
# bench/run.sh: pgbench throughput of pgshift, PgBouncer and a direct connection, side by side.
#
#   bench/run.sh [--replicas N] [--tls]
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
#   TLS=0 (or --tls): 1 = clients use TLS: pgshift [tls] mode = "require" and PgBouncer
#           client_tls_sslmode = require, both with certs/server.crt/.key, pgbench PGSSLMODE=require;
#           both poolers talk plain to PostgreSQL. DIRECT_TLS=1 (the default with TLS=1) also turns
#           ssl on in the bed's primary (pgbed.sh does not) so direct runs with sslmode=require too;
#           DIRECT_TLS=0 keeps direct plain. The section header says "TLS" and which.
#   NOTE="..." (a line for RESULTS.md, e.g. "smoke run, machine busy")
#   RESULTS=bench/RESULTS.md (where to append; RESULTS=none: do not)  OUTDIR=bench/out/run-<time>
#   PGSHIFT_BIN, PGSHIFT_LOG, PGBOUNCER_BIN, PGBOUNCER_EXTRA, KEEP, NOFILE: see bench/lib.sh
#           (e.g. PGBOUNCER_BIN=/usr/sbin/pgbouncer for Debian's 1.18 as a second column)
set -uo pipefail

BENCH_NAME=run
while (($#)); do
  case "$1" in
    --replicas) REPLICAS="${2:?--replicas needs a number}"; shift 2 ;;
    --replicas=*) REPLICAS="${1#*=}"; shift ;;
    --tls) TLS=1; shift ;;
    -h | --help) sed -n '2,/^set /{/^#/p}' "$0"; exit 0 ;;
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

TLS_DESC=""
if ((TLS)); then
  for t in $TARGETS; do TLS_DESC+="${TLS_DESC:+, }$t $(target_tls_cipher "$t")"; done
  say "TLS: $TLS_DESC"
fi

for t in $TARGETS; do warmup "$t" "$OUTDIR/warmup-$t.log"; done

echo "$RES_HEADER" >"$RES"
pgbench_run_title
for rep in $(seq 1 "$REPEATS"); do
  for mode in $MODES; do
    for c in $CLIENTS; do
      for t in $TARGETS; do
        [[ $mode == tpcb-* ]] && tpcb_housekeeping
        pgbench_run "$rep" "$t" "$mode" "$c"
        sleep 1
      done
    done
  done
done

SETTINGS="scale $SCALE; pgbench -T $DURATION s x $REPEATS repeats, -j $JOBS, -n; clients $CLIENTS; modes $MODES;"
SETTINGS+=" pool $POOL_SIZE server connections toward the primary in both poolers (transaction mode);"
SETTINGS+=" pgshift workers $WORKERS$( ((WORKERS == 0)) && echo " (= $(nproc) threads)"); replicas $REPLICAS"
((REPLICAS > 0)) && SETTINGS+=" (pgshift sends the reads there; PgBouncer and direct use the primary)"
[[ -n "${PGBOUNCER_EXTRA:-}" ]] && SETTINGS+="; PgBouncer ini adds \`$(paste -sd';' <<<"$PGBOUNCER_EXTRA")\`"
SETTINGS+="; warmup ${WARMUP}s per target; per-run logs in ${OUTDIR#"$ROOT"/}"
if ((TLS)); then
  TLS_LINE="client TLS on: pgshift [tls] mode = \"require\", PgBouncer client_tls_sslmode = require (certs/server.crt,"
  TLS_LINE+=" RSA 2048), pgbench PGSSLMODE=require to both poolers; poolers to PostgreSQL plain; direct"
  if ((DIRECT_TLS)); then TLS_LINE+=" with sslmode=require (ssl = on set in the bed's primary)"; else TLS_LINE+=" plain (DIRECT_TLS=0)"; fi
  TLS_LINE+="; negotiated: $TLS_DESC"
fi

{
  echo
  echo "## $(date -u '+%Y-%m-%d %H:%M UTC'): pgbench throughput$( ((TLS)) && echo " with client TLS") (bench/run.sh$( ((TLS)) && echo " TLS=1"))"
  echo
  [[ -n "$NOTE" ]] && printf '**%s**\n\n' "$NOTE"
  host_facts_md
  echo "- settings: $SETTINGS"
  if ((TLS)); then echo "- TLS: $TLS_LINE"; fi
} >"$OUTDIR/section.md"
python3 "$BENCH_DIR/report.py" pgbench "$RES" --targets "$TARGETS" --modes "$MODES" --clients "$CLIENTS" \
  --markdown "$OUTDIR/table.md" || die "report.py failed"
cat "$OUTDIR/table.md" >>"$OUTDIR/section.md"
if [[ "$RESULTS" != none ]]; then
  cat "$OUTDIR/section.md" >>"$RESULTS"
  say "appended to $RESULTS"
fi
say "results: $RES"
