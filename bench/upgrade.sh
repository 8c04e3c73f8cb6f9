#!/usr/bin/env bash
# bench/upgrade.sh: the longest stall a client sees while pgshift upgrades its binary (SIGUSR2).
#
#   bench/upgrade.sh
#
# pgbench TPC-B with CLIENTS persistent connections (no -C) through pgshift, per-transaction logs
# (-l); UPGRADES times during the run (every GAP s from AT s on) pgshift gets SIGUSR2 and hands
# every client to the new process it starts. Reports, per upgrade, how long the handover took
# (new process listening -> old process done, from pgshift's log) and how many clients moved, and
# the latency of the transactions that ended during the handover window (SIGUSR2 to handover end
# plus one second) against the steady state (every other transaction): max, p99 and the count
# over 100 ms. A transaction's latency includes any wait for its client to be handed over, so the
# window's max is the longest stall. pgbench must end with exit 0 and no failed transaction.
# Appends a section to bench/RESULTS.md.
#
# Knobs: CLIENTS=64  JOBS=4  DURATION=40 (s)  AT=10  GAP=10  UPGRADES=2  SCALE=10  NOTE  RESULTS
#        OUTDIR, and bench/lib.sh's (POOL_SIZE, WORKERS, PGSHIFT_BIN, ...)
set -uo pipefail

BENCH_NAME=upgrade
case "${1:-}" in -h | --help) sed -n '2,18p' "$0"; exit 0 ;; "") ;; *) echo "upgrade.sh: no arguments (see --help)" >&2; exit 2 ;; esac
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CLIENTS=${CLIENTS:-64}
JOBS=${JOBS:-4}
DURATION=${DURATION:-40}
AT=${AT:-10}
GAP=${GAP:-10}
UPGRADES=${UPGRADES:-2}
SCALE=${SCALE:-10}
NOTE=${NOTE:-}
RESULTS=${RESULTS:-$BENCH_DIR/RESULTS.md}
OUTDIR=${OUTDIR:-$BENCH_DIR/out/upgrade-$(date +%Y%m%d-%H%M%S)}
((AT + GAP * (UPGRADES - 1) + 5 < DURATION)) || die "the last upgrade must start at least 5 s before the run ends"

mkdir -p "$OUTDIR" || die "cannot create $OUTDIR"
raise_nofile
ensure_postgres
ensure_pgshift
install_trap
start_bed
init_pgbench "$SCALE"
start_pgshift_as pgshift false 1
LOG="$WORK/pgshift.log"

# True while PID runs. Not kill -0: a successor is not our child, and once its parent (the old
# process) is gone a zombie of it may linger where nothing reaps orphans.
running() { [[ -r /proc/$1/stat ]] && [[ $(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) != Z ]]; }

# The pid of the process the Nth upgrade started (1-based), from the log.
successor() { grep 'started the new binary' "$LOG" | sed -n "${1}p" | grep -oP 'pid=\K[0-9]+'; }

say "pgbench TPC-B -c $CLIENTS -j $JOBS -T $DURATION through pgshift; $UPGRADES upgrade(s) from ${AT}s, every ${GAP}s"
start_s=$(date +%s.%N)
pgbench -n -c "$CLIENTS" -j "$JOBS" -T "$DURATION" -l --log-prefix="$OUTDIR/tx" -p "${PGS_PORT[pgshift]}" \
  >"$OUTDIR/pgbench.out" 2>&1 &
BENCH=$!
BG_PIDS+=("$BENCH")
: >"$OUTDIR/upgrades.tsv"
for n in $(seq 1 "$UPGRADES"); do
  target=$(awk -v s="$start_s" -v at=$((AT + GAP * (n - 1))) 'BEGIN{printf "%.3f", s + at}')
  sleep "$(awk -v t="$target" -v now="$(date +%s.%N)" 'BEGIN{d = t - now; print (d > 0 ? d : 0)}')"
  old=${PGS_PID[pgshift]}
  sent=$(date +%s.%N)
  kill -USR2 "$old" || die "cannot signal pgshift (pid $old)"
  for _ in $(seq 1 600); do
    running "$old" || break
    sleep 0.05
  done
  running "$old" && die "upgrade $n: pid $old did not exit"
  new=$(successor "$n")
  if [[ -z "$new" ]] || ! running "$new"; then die "upgrade $n: no new process"; fi
  PGS_PID[pgshift]=$new
  ended=$(date +%s.%N)
  printf '%s\t%s\t%s\t%s\n' "$sent" "$ended" "$old" "$new" >>"$OUTDIR/upgrades.tsv"
  say "upgrade $n: pid $old -> $new in $(awk -v a="$sent" -v b="$ended" 'BEGIN{printf "%.0f", (b - a) * 1000}') ms"
done
wait "$BENCH"
rc=$?
BG_PIDS=()
adopted=$(admin_get pgshift /stats | python3 -c 'import json,sys; print(json.load(sys.stdin)["clients_adopted"])')
failed=$(grep -oP 'number of failed transactions: \K[0-9]+' "$OUTDIR/pgbench.out")
tps=$(grep -oP 'tps = \K[0-9.]+(?= \(without)' "$OUTDIR/pgbench.out" | head -1)
cp "$LOG" "$OUTDIR/pgshift.log"
say "pgbench exit $rc, failed transactions ${failed:-?}, ${tps:-?} tps; the last process adopted $adopted clients"

{
  echo
  echo "## $(date -u '+%Y-%m-%d %H:%M UTC'): client stall during binary upgrades (bench/upgrade.sh)"
  echo
  [[ -n "$NOTE" ]] && printf '**%s**\n\n' "$NOTE"
  host_facts_md
  echo "- settings: pgbench TPC-B -n -c $CLIENTS -j $JOBS -T $DURATION s, persistent connections (no -C), scale $SCALE;" \
    "pool $POOL_SIZE; pgshift workers $WORKERS; $UPGRADES SIGUSR2 upgrade(s) at ${AT}s every ${GAP}s; logs in ${OUTDIR#"$ROOT"/}"
  echo "- pgbench: exit $rc, failed transactions ${failed:-?}, ${tps:-?} tps over the whole run (upgrades included);" \
    "clients adopted by the last process: $adopted"
  echo
  python3 - "$OUTDIR" "$OUTDIR/upgrades.tsv" "$OUTDIR/pgshift.log" <<'PY'
import glob, re, sys
from datetime import datetime

outdir, upgrades_tsv, log = sys.argv[1:4]
ups = [tuple(float(x) for x in l.split("\t")[:2]) for l in open(upgrades_tsv) if l.strip()]
stamp = lambda l: datetime.fromisoformat(l.split()[0].replace("Z", "+00:00")).timestamp()
lines = open(log).read().splitlines()
ready = [stamp(l) for l in lines if "the new process listens; handing clients over" in l]
done = [(stamp(l), re.search(r"handed_over=(\d+)", l)) for l in lines if "upgrade complete" in l]
tx = []  # (end time s, latency us)
for f in glob.glob(outdir + "/tx.*"):
    for l in open(f):
        p = l.split()
        if len(p) >= 6 and p[2].isdigit():
            tx.append((int(p[4]) + int(p[5]) / 1e6, int(p[2])))
windows = [(s, e + 1.0) for s, e in ups]
inside = lambda t: any(s <= t <= e for s, e in windows)
def stats(lat):
    if not lat:
        return "0 | - | - | - | -"
    lat = sorted(lat)
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
    return f"{len(lat)} | {lat[len(lat) // 2] / 1000:.1f} | {p99 / 1000:.1f} | {lat[-1] / 1000:.1f} | {sum(1 for x in lat if x > 100_000)}"
print("| upgrade | handover ms (listening -> done) | clients moved | SIGUSR2 -> old process gone ms |")
print("|---|---|---|---|")
for i, (s, e) in enumerate(ups):
    h = f"{(done[i][0] - ready[i]) * 1000:.0f}" if i < len(ready) and i < len(done) else "?"
    moved = done[i][1].group(1) if i < len(done) and done[i][1] else "?"
    print(f"| {i + 1} | {h} | {moved} | {(e - s) * 1000:.0f} |")
print()
print("Latency of the transactions that ended in the handover windows (SIGUSR2 to old process gone, plus 1 s) and of all others:")
print()
print("| transactions | count | median ms | p99 ms | max ms | over 100 ms |")
print("|---|---|---|---|---|---|")
print(f"| during handovers | {stats([l for t, l in tx if inside(t)])} |")
print(f"| steady state | {stats([l for t, l in tx if not inside(t)])} |")
PY
} >"$OUTDIR/section.md" || die "report failed"
if ((rc != 0)) || [[ "${failed:-x}" != 0 ]]; then
  printf '\n**pgbench failed (exit %s, %s failed transactions): see %s**\n' \
    "$rc" "${failed:-?}" "${OUTDIR#"$ROOT"/}/pgbench.out" >>"$OUTDIR/section.md"
fi
if [[ "$RESULTS" != none ]]; then
  cat "$OUTDIR/section.md" >>"$RESULTS"
  say "appended to $RESULTS"
fi
cat "$OUTDIR/section.md"
