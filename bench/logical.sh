#!/usr/bin/env bash
# bench/logical.sh: a migration on logical replication under write load: TPC-B throughput in
# dual_write (logical sync) against phase off, interleaved; pgshift's and both servers' CPU per
# 10,000 transactions; the replication lag; the write pause at cutover; an exact copy at the end.
#
#   bench/logical.sh
#
# Two throwaway PostgreSQL 15 clusters (scripts/pgbed.sh, wal_level = logical): the source (pgshift's
# [primary], pgbench -i -s SCALE) and the target (the same tables, empty: pgbench -i -I dtp);
# pgbench_history gets REPLICA IDENTITY FULL on both (it has no primary key). One pgshift instance
# with [migration] sync = "logical", admin_user = "pgshift_admin" (a superuser created on both, in
# [[auth.users]] with its plaintext password), databases = ["app"].
# A background sampler reads GET /migration every LAG_INTERVAL s (logical[].lag_bytes, phase).
#
# 1. Throughput. For each repeat and client count, one run in phase off and one in dual_write,
#    back to back (off first in odd repeats, dual_write first in even ones). Before a dual_write run
#    the target's tables are emptied, POST /migration/phase dual_write creates the publication and
#    the subscription, the script waits until the initial copy is complete (every table ready in the
#    target's pg_subscription_rel) and the lag is 0, and the target is vacuumed and analysed (so its
#    autovacuum of the fresh copy does not land in the run); after the run it waits until the lag is
#    0 again (seconds from pgbench's end recorded) and goes back to off (publication and
#    subscription removed). Per run:
#    TPS, latency, pgshift's CPU per 10,000 transactions (bench/lib.sh's pgbench_run), the CPU of
#    each PostgreSQL cluster per 10,000 transactions (postmaster with its reaped children, plus its
#    live children), lag samples.
# 2. Cutover. For each of CUT_CLIENTS: the target emptied, dual_write, the copy, shift_reads
#    (read_percent 0), then pgbench TPC-B for CUT_DURATION s with per-transaction logs (-l), and
#    CUT_AT s in POST /migration/phase cutover. Measured: how long the POST took and what it answered;
#    from the logs, the longest gap between one client's consecutive commits and the longest time in
#    which no client committed, around the cutover and elsewhere in the run; failed transactions and
#    pgbench's errors. After pgbench: seconds until the source has applied everything (lag 0, now
#    target to source), POST /migration/verify {"database":"app"} (every table compared whole),
#    POST /migration/phase done (timed), then our own comparison of every table on both servers
#    (row count and the sum of hashtextextended(row::text, 0)), then back to off for the next one.
#    With ADMIN_LOG=1 the admin role's statements are logged by both servers with their durations,
#    and the section shows each cutover's timeline from them.
# Appends a section to bench/RESULTS.md (unless RESULTS=none).
#
# Knobs: CLIENTS="1 16 64"  DURATION=15 (s per run)  REPEATS=3  MODE=tpcb-simple  JOBS=2  SCALE=10
#        WARMUP=3  CUT_CLIENTS="16 64"  CUT_DURATION=20  CUT_AT=8  CATCHUP_TIMEOUT=10s
#        DRAIN_TIMEOUT=30s  LAG_INTERVAL=0.5  LAG_LIMIT=120 (s to wait for lag 0)  COPY_LIMIT=600
#        VACUUM_TARGET=1  ADMIN_LOG=1  VERIFY=1  SERVER_SETTINGS (e.g. "synchronous_commit=on":
#        ALTER SYSTEM on both servers, then a reload)  PGSHIFT_REV (what the section calls the binary;
#        default: this checkout's commit)  NOTE  RESULTS=bench/RESULTS.md|none
#        OUTDIR=bench/out/logical-<time>
#        and bench/lib.sh's (POOL_SIZE, WORKERS, PGSHIFT_BIN, ...)
set -uo pipefail

BENCH_NAME="logical"
case "${1:-}" in -h | --help) sed -n '2,/^set /{/^#/p}' "$0"; exit 0 ;; "") ;; *) echo "logical.sh: no arguments (see --help)" >&2; exit 2 ;; esac
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CLIENTS=${CLIENTS:-"1 16 64"}
DURATION=${DURATION:-15}
REPEATS=${REPEATS:-3}
MODE=${MODE:-tpcb-simple}
JOBS=${JOBS:-2}
SCALE=${SCALE:-10}
WARMUP=${WARMUP:-3}
CUT_CLIENTS=${CUT_CLIENTS-"16 64"}
CUT_DURATION=${CUT_DURATION:-20}
CUT_AT=${CUT_AT:-8}
CATCHUP_TIMEOUT=${CATCHUP_TIMEOUT:-10s}
DRAIN_TIMEOUT=${DRAIN_TIMEOUT:-30s}
LAG_INTERVAL=${LAG_INTERVAL:-0.5}
LAG_LIMIT=${LAG_LIMIT:-120}
COPY_LIMIT=${COPY_LIMIT:-600}
VACUUM_TARGET=${VACUUM_TARGET:-1}
ADMIN_LOG=${ADMIN_LOG:-1}
SERVER_SETTINGS=${SERVER_SETTINGS:-}
VERIFY=${VERIFY:-1}
PGSHIFT_REV=${PGSHIFT_REV:-}
NOTE=${NOTE:-}
RESULTS=${RESULTS:-$BENCH_DIR/RESULTS.md}
OUTDIR=${OUTDIR:-$BENCH_DIR/out/logical-$(date +%Y%m%d-%H%M%S)}
TXLOG=1

[[ $MODE == tpcb-* ]] && mode_args "$MODE" >/dev/null || die "bad MODE '$MODE' (tpcb-simple|tpcb-extended|tpcb-prepared)"
for c in $CLIENTS $CUT_CLIENTS; do [[ "$c" =~ ^[0-9]+$ ]] || die "bad client count '$c'"; done
[[ "$CUT_AT" =~ ^[0-9]+$ ]] && ((CUT_AT < CUT_DURATION)) || die "CUT_AT ($CUT_AT) must be whole seconds below CUT_DURATION ($CUT_DURATION)"
mkdir -p "$OUTDIR" || die "cannot create $OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)

raise_nofile
ensure_postgres
ensure_pgshift
install_trap
start_bed
start_target_bed 0
for p in "$PRIMARY_PORT" "$TARGET_PORT"; do
  [[ "$(psql -X -At -p "$p" -c 'SHOW wal_level')" == logical ]] || die "wal_level is not logical on port $p (scripts/pgbed.sh sets it)"
done
for kv in $SERVER_SETTINGS; do
  [[ "$kv" =~ ^[a-z_]+=[A-Za-z0-9._-]+$ ]] || die "bad SERVER_SETTINGS entry '$kv' (name=value)"
  for p in "$PRIMARY_PORT" "$TARGET_PORT"; do
    psql -X -q -p "$p" -U postgres -d postgres -c "ALTER SYSTEM SET ${kv%%=*} = '${kv#*=}'" -c 'SELECT pg_reload_conf()' \
      >/dev/null || die "cannot set $kv on port $p"
  done
  say "both servers: $kv"
done
# The source gets data, the target the same tables empty (logical sync's initial copy fills them).
init_pgbench "$SCALE"
say "pgbench -i -I dtp (tables and primary keys, no rows) on the target, port $TARGET_PORT"
pgbench -i -q -I dtp -s "$SCALE" -p "$TARGET_PORT" >"$WORK/pgbench-init-$TARGET_PORT.log" 2>&1 ||
  { cat "$WORK/pgbench-init-$TARGET_PORT.log" >&2; die "pgbench -i -I dtp on the target failed"; }
# A dedicated superuser for pgshift's publications and subscriptions (admin_user). With ADMIN_LOG=1
# the servers log each of its statements with its duration (log_min_duration_statement = 0 for this
# role only): where the time of a cutover goes.
for p in "$PRIMARY_PORT" "$TARGET_PORT"; do
  psql -X -q -p "$p" -c 'ALTER TABLE pgbench_history REPLICA IDENTITY FULL' \
    -c "CREATE ROLE pgshift_admin LOGIN SUPERUSER PASSWORD 'pgshift_admin'" >/dev/null ||
    die "cannot set pgbench_history's replica identity or create role pgshift_admin on port $p"
  if ((ADMIN_LOG)); then
    psql -X -q -p "$p" -c 'ALTER ROLE pgshift_admin SET log_min_duration_statement = 0' >/dev/null ||
      die "cannot set log_min_duration_statement for pgshift_admin on port $p"
  fi
done

PGS=pgshift-logical
start_pgshift_as "$PGS" false 1 "$(
  cat <<EOF
[[auth.users]]
name = "pgshift_admin"
password = "pgshift_admin"

[migration]
state_file = "$WORK/$PGS.migration.json"
sync = "logical"
admin_user = "pgshift_admin"
databases = ["app"]
catchup_timeout = "$CATCHUP_TIMEOUT"
drain_timeout = "$DRAIN_TIMEOUT"
verify_database = "app"
verify_full_below = 100000000
[migration.target]
host = "127.0.0.1"
port = $TARGET_PORT
EOF
)"
# The same instance under the names the runs are recorded by (pgbench_run looks a target up by name).
for n in off dual_write cutover; do
  PGS_PORT[$n]=${PGS_PORT[$PGS]}
  PGS_PID[$n]=${PGS_PID[$PGS]}
  PGS_ADMIN[$n]=${PGS_ADMIN[$PGS]}
done
PGS_PIDNUM=${PGS_PID[$PGS]}

# ---- the admin API -----------------------------------------------------------------------------

# "PHASE SYNC DIRECTION TABLES COPIED LAG" of database app from GET /migration (LAG: null = not sampled).
lstate() {
  admin_get "$PGS" /migration 2>/dev/null | python3 -c 'import json, sys
try:
    d = json.load(sys.stdin)
    x = ([l for l in d.get("logical") or [] if l.get("database") == "app"] or [{}])[0]
    lag = x.get("lag_bytes")
    print(d["phase"], d.get("sync", "?"), x.get("direction", "none"), x.get("tables", 0), x.get("tables_copied", 0),
          "null" if lag is None else lag)
except Exception:
    print("? ? none 0 0 null")'
}

# POST /migration/phase, timed: phase_post PHASE [MORE JSON MEMBERS]. Sets POST_CODE, POST_S (curl's
# time_total), POST_T0/POST_T1 (epoch seconds around the call); the answer is in $OUTDIR/post-last.json.
phase_post() {
  local body="{\"phase\":\"$1\"${2:+,$2}}" out
  POST_T0=$EPOCHREALTIME
  out=$(curl -sS --max-time 300 -X POST "http://127.0.0.1:${PGS_ADMIN[$PGS]}/migration/phase" \
    -H "Authorization: Bearer $ADMIN_TOKEN" -H 'Content-Type: application/json' -d "$body" \
    -o "$OUTDIR/post-last.json" -w '%{http_code} %{time_total}' 2>&1)
  POST_T1=$EPOCHREALTIME
  read -r POST_CODE POST_S <<<"$out"
  [[ "$POST_CODE" =~ ^[0-9]+$ ]] || { POST_S=-; POST_CODE="curl: $out"; }
}
phase_must() { # PHASE [MORE JSON]: the POST must answer 200
  phase_post "$@"
  [[ "$POST_CODE" == 200 ]] || die "POST /migration/phase $1 answered $POST_CODE: $(head -c 600 "$OUTDIR/post-last.json" 2>/dev/null)"
}

secs_since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.2f", b - a}'; }

# Seconds until GET /migration shows lag_bytes 0 for app (polled every 0.1 s; the monitor samples
# every 0.2 s), counted from epoch FROM; ">LIMIT" when it did not within LAG_LIMIT s.
wait_lag0() {
  local from=$1 st lag deadline=$((SECONDS + LAG_LIMIT))
  while ((SECONDS < deadline)); do
    st=$(lstate)
    lag=${st##* }
    [[ "$lag" == 0 ]] && { secs_since "$from"; return 0; }
    sleep 0.1
  done
  say "warning: lag not 0 within ${LAG_LIMIT}s (last: $st)"
  echo ">$LAG_LIMIT"
}

# Background sampler of GET /migration every LAG_INTERVAL s: epoch, phase, direction, lag_bytes,
# tables, tables_copied, 1-minute load average, error.
LAGS=$OUTDIR/lag.tsv
python3 - "${PGS_ADMIN[$PGS]}" "$LAG_INTERVAL" "$LAGS" <<'PY' &
import json, sys, time, urllib.request
port, interval, path = sys.argv[1], float(sys.argv[2]), sys.argv[3]
with open(path, "w", buffering=1) as out:
    out.write("epoch\tphase\tdirection\tlag_bytes\ttables\ttables_copied\tload1\terror\n")
    nxt = time.time()
    while True:
        t = time.time()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/migration", timeout=5) as r:
                d = json.load(r)
            x = ([l for l in d.get("logical") or [] if l.get("database") == "app"] or [{}])[0]
            lag = x.get("lag_bytes")
            row = [d.get("phase", "?"), x.get("direction", "none"), "" if lag is None else str(lag),
                   str(x.get("tables", 0)), str(x.get("tables_copied", 0))]
            err = (x.get("error") or "").replace("\t", " ")
        except Exception as e:
            row, err = ["?", "?", "", "", ""], str(e)
        with open("/proc/loadavg") as f:
            load = f.read().split()[0]
        out.write("\t".join([f"{t:.3f}"] + row + [load, err]) + "\n")
        nxt += interval
        time.sleep(max(0.0, nxt - time.time()))
PY
LAG_PID=$!
BG_PIDS+=("$LAG_PID")

# ---- CPU of a PostgreSQL cluster ---------------------------------------------------------------

# Clock ticks of cluster DIR's primary: the postmaster's utime+stime+cutime+cstime (children it
# reaped) plus every live child's utime+stime; -1 when unreadable.
cluster_ticks() {
  local pm s total c t
  pm=$(head -1 "$1/node0/postmaster.pid" 2>/dev/null) || { echo -1; return; }
  s=$(cat /proc/"$pm"/stat 2>/dev/null) || { echo -1; return; }
  s=${s##*) }
  total=$(awk '{print $12 + $13 + $14 + $15}' <<<"$s")
  for c in $(ps -o pid= --ppid "$pm"); do
    t=$(cpu_ticks "$c")
    ((t >= 0)) && total=$((total + t))
  done
  echo "$total"
}
# Busy clock ticks of the whole machine (all CPUs) since boot, from /proc/stat: user, nice, system,
# steal. Interrupt time is left out: the loopback traffic of the run itself is counted there.
busy_ticks() { awk '/^cpu /{print $2 + $3 + $4 + $9; exit}' /proc/stat; }
# User+system ticks of this shell's reaped children (pgbench, psql, ...); `times` runs in this shell
# (a $(...) subshell would count its own children only).
children_ticks() {
  times >"$OUTDIR/.times"
  awk -v hz="$CLK_TCK" 'NR == 2 {t = 0; for (i = 1; i <= 2; i++) {split($i, a, "m"); sub("s", "", a[2]); t += a[1] * 60 + a[2]}
    printf "%d", t * hz + 0.5}' "$OUTDIR/.times"
}
per10k() { # TICKS XACTS
  if (($1 >= 0)) && [[ -n "$2" ]] && (($2 > 0)); then
    awk -v t="$1" -v hz="$CLK_TCK" -v x="$2" 'BEGIN{printf "%.3f", t/hz/x*10000}'
  else echo n/a; fi
}

# ---- the migration steps -----------------------------------------------------------------------

TABLES="pgbench_accounts, pgbench_branches, pgbench_tellers, pgbench_history"
tpcb_housekeeping() { # what pgbench's own vacuum does, on both servers
  local p
  for p in "$PRIMARY_PORT" "$TARGET_PORT"; do
    psql -X -q -p "$p" -c 'VACUUM pgbench_branches' -c 'VACUUM pgbench_tellers' \
      -c 'TRUNCATE pgbench_history' >/dev/null 2>&1 || say "warning: TPC-B housekeeping on port $p failed"
  done
}

# off -> dual_write with an empty target: sets COPY_S (POST to the copy complete) and ON_S (to lag 0).
logical_on() {
  local s0 st deadline
  psql -X -q -p "$TARGET_PORT" -c "TRUNCATE $TABLES" >/dev/null || die "cannot empty the target's tables"
  s0=$EPOCHREALTIME
  phase_must dual_write
  # Copy progress from the target itself: GET /migration's tables / tables_copied are refreshed
  # every second and may still show the previous cycle's figures just after the POST.
  deadline=$((SECONDS + COPY_LIMIT))
  while :; do
    st=$(psql -X -At -F ' ' -p "$TARGET_PORT" -c "SELECT count(*), count(*) FILTER (WHERE srsubstate = 'r')
      FROM pg_subscription_rel" 2>/dev/null)
    read -r tb cp <<<"${st:-0 0}"
    ((tb > 0 && cp == tb)) && break
    ((SECONDS < deadline)) || die "the initial copy did not complete within ${COPY_LIMIT}s ($st tables, copied; $(lstate))"
    sleep 0.2
  done
  COPY_S=$(secs_since "$s0")
  ON_S=$(wait_lag0 "$s0")
  if ((VACUUM_TARGET)); then
    psql -X -q -p "$TARGET_PORT" -c 'VACUUM ANALYZE' >/dev/null 2>&1 || say "warning: VACUUM ANALYZE on the target failed"
  fi
  say "dual_write (logical): initial copy complete after ${COPY_S}s, lag 0 after ${ON_S}s ($(lstate))"
}
logical_off() {
  phase_must off
  say "phase off: publication and subscription removed (POST took ${POST_S}s)"
}

RES=$OUTDIR/results.tsv
SIDE=$OUTDIR/logical.tsv
echo "$RES_HEADER" >"$RES"
printf 'rep\ttarget\tclients\tt_start\tt_end\tsrc_cpu_s\ttgt_cpu_s\tsrc_cpu_per10k\ttgt_cpu_per10k\tlag0_s\tcopy_s\tother_cores\ttxlogs\n' >"$SIDE"

# One measured run through name T (off | dual_write | cutover), with the clusters' CPU around it.
measured_run() { # REP T CLIENTS
  local rep=$1 t=$2 c=$3 s0 d0 s1 d1 lag0=- t0 t1 b0 b1 k0 k1 g0 g1 l0 l1 other=n/a
  s0=$(cluster_ticks "$WORK/cluster")
  d0=$(cluster_ticks "$WORK/target")
  g0=$(cpu_ticks "$PGS_PIDNUM")
  l0=$(cpu_ticks "$LAG_PID")
  k0=$(children_ticks)
  b0=$(busy_ticks)
  t0=$EPOCHREALTIME
  pgbench_run "$rep" "$t" "$MODE" "$c"
  t1=$EPOCHREALTIME
  b1=$(busy_ticks)
  k1=$(children_ticks)
  s1=$(cluster_ticks "$WORK/cluster")
  d1=$(cluster_ticks "$WORK/target")
  g1=$(cpu_ticks "$PGS_PIDNUM")
  l1=$(cpu_ticks "$LAG_PID")
  [[ $t != off ]] && lag0=$(wait_lag0 "$t1")
  local ds=-1 dd=-1
  ((s0 >= 0 && s1 >= 0)) && ds=$((s1 - s0))
  ((d0 >= 0 && d1 >= 0)) && dd=$((d1 - d0))
  # CPU of everything else on the machine (other users' work, kernel threads), in cores: all busy
  # time minus pgshift, both clusters, pgbench (and our other reaped children) and the lag sampler
  if ((ds >= 0 && dd >= 0 && g0 >= 0 && g1 >= 0 && l0 >= 0 && l1 >= 0)); then
    other=$(awk -v b=$((b1 - b0)) -v o=$((ds + dd + g1 - g0 + k1 - k0 + l1 - l0)) -v hz="$CLK_TCK" -v a="$t0" -v z="$t1" \
      'BEGIN{v = (b - o) / hz / (z - a); printf "%.2f", v < 0 ? 0 : v}')
  fi
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$rep" "$t" "$c" "$t0" "$t1" \
    "$( ((ds >= 0)) && ticks_to_s "$ds" || echo n/a)" "$( ((dd >= 0)) && ticks_to_s "$dd" || echo n/a)" \
    "$(per10k "$ds" "${RUN_XACTS:-}")" "$(per10k "$dd" "${RUN_XACTS:-}")" "$lag0" "${COPY_S:--}" "$other" "$RUN_TXLOGS" >>"$SIDE"
  say "  source PostgreSQL $(per10k "$ds" "${RUN_XACTS:-}") s/10k, target $(per10k "$dd" "${RUN_XACTS:-}") s/10k," \
    "other processes $other cores$([[ $t != off ]] && echo ", lag 0 ${lag0}s after pgbench ended")"
}

# ---- 1. throughput, interleaved ----------------------------------------------------------------

nruns=$((REPEATS * $(wc -w <<<"$CLIENTS") * 2))
say "$nruns runs of ${DURATION}s (each dual_write run after an initial copy), then cutover at $CUT_CLIENTS clients; logs in $OUTDIR"
if ((WARMUP > 0)); then
  tpcb_housekeeping
  warmup off "$OUTDIR/warmup.log" $(mode_args "$MODE") -c 16
fi
pgbench_run_title
for rep in $(seq 1 "$REPEATS"); do
  for c in $CLIENTS; do
    order="off dual_write"
    ((rep % 2 == 0)) && order="dual_write off"
    for t in $order; do
      tpcb_housekeeping
      if [[ $t == dual_write ]]; then
        logical_on
        measured_run "$rep" dual_write "$c"
        logical_off
      else
        COPY_S=-
        measured_run "$rep" off "$c"
      fi
      sleep 1
    done
  done
done

# ---- 2. cutover under load ---------------------------------------------------------------------

CUTS=$OUTDIR/cutover.tsv
printf 'clients\tpost_code\tpost_s\tpost_t0\tpost_t1\tlag0_s\tverify_code\tverify_differences\tdone_code\tdone_s\tchecksums\ttxlogs\trun_log\n' >"$CUTS"
# Every user table of app: "table count sum" lines, on the server at PORT.
checksums() {
  local t
  for t in $(psql -X -At -p "$PRIMARY_PORT" -c "SELECT quote_ident(schemaname) || '.' || quote_ident(tablename)
      FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1"); do
    printf '%s %s\n' "$t" "$(psql -X -At -F ' ' -p "$1" -c "SELECT count(*), coalesce(sum(hashtextextended(x::text, 0)::numeric), 0) FROM $t x")"
  done
}
# pgshift_admin's statements on both servers between epochs T0 and T1 (ADMIN_LOG=1): offset from T0
# in ms, duration in ms, server, statement; the sampler's and the fence's position polls summarised.
cutover_timeline() {
  python3 - "$1" "$2" "$WORK/cluster/logs/node0.log" "$WORK/target/logs/node0.log" <<'PY'
import re, sys
from datetime import datetime, timezone
t0, t1 = float(sys.argv[1]), float(sys.argv[2])
rx = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+) (\S+) \[(\d+)\] LOG:  duration: ([0-9.]+) ms  (.*)$")
rows = []
for name, path in (("source", sys.argv[3]), ("target", sys.argv[4])):
    try:
        lines = open(path, errors="replace").read().splitlines()
    except OSError:
        continue
    for line in lines:
        m = rx.match(line)
        if not m:
            continue
        ts = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S.%f")
        ts = ts.replace(tzinfo=timezone.utc).timestamp() if m.group(2) in ("UTC", "GMT") else ts.timestamp()
        dur = float(m.group(4))
        start = ts - dur / 1000.0  # the line is written when the statement ends
        if start < t0 - 0.05 or start > t1 + 0.05:
            continue
        text = re.sub(r"password=\S+", "password=...", m.group(5))
        rows.append((start, dur, name, m.group(3), text))
rows.sort()
polls = [r for r in rows if "pg_current_wal_insert_lsn" in r[4] and r[4].startswith("execute")]
print(f"POST /migration/phase cutover: {1000 * (t1 - t0):.1f} ms; pgshift_admin statements (offset from the POST, "
      f"duration, server, backend pid):")
by_pid = {}
for p in polls:
    by_pid.setdefault(p[3], []).append(p)
for pid, ps in sorted(by_pid.items(), key=lambda kv: kv[1][0][0]):
    # the monitor polls every 200 ms on its own connection; the fence's wait for the subscriber every 10 ms
    print(f"  position polls on the {ps[0][2]}, backend [{pid}]: {len(ps)} between +{1000 * (ps[0][0] - t0):.1f} and "
          f"+{1000 * (ps[-1][0] - t0):.1f} ms, {sum(p[1] for p in ps):.1f} ms of SQL")
for start, dur, name, pid, text in rows:
    if r"pg_current_wal_insert_lsn" in text or text.startswith(("parse", "bind")):
        continue
    print(f"  +{1000 * (start - t0):7.1f} ms  {dur:8.1f} ms  {name}  [{pid}]  {text[:150]}")
PY
}

for c in $CUT_CLIENTS; do
  say "cutover at $c clients: dual_write, shift_reads, then ${CUT_DURATION}s of $MODE with POST cutover at ${CUT_AT}s"
  tpcb_housekeeping
  logical_on
  phase_must shift_reads '"read_percent":0'
  (
    sleep "$CUT_AT"
    phase_post cutover
    cp "$OUTDIR/post-last.json" "$OUTDIR/cutover-c$c.json"
    printf '%s %s %s %s\n' "${POST_CODE// /_}" "$POST_S" "$POST_T0" "$POST_T1" >"$OUTDIR/cutover-c$c.post"
  ) &
  cutter=$!
  saved=$DURATION
  DURATION=$CUT_DURATION
  COPY_S=-
  measured_run cut cutover "$c"
  DURATION=$saved
  wait "$cutter"
  read -r pcode ps pt0 pt1 <"$OUTDIR/cutover-c$c.post"
  lag0=$(tail -n1 "$SIDE" | cut -f10)
  ((ADMIN_LOG)) && cutover_timeline "$pt0" "$pt1" >"$OUTDIR/cutover-c$c-timeline.txt"
  say "  POST cutover answered $pcode after ${ps}s; phase now $(lstate)"
  [[ "$pcode" == 200 ]] || say "  cutover refused: $(head -c 600 "$OUTDIR/cutover-c$c.json")"
  vcode=- vdiff=-
  if ((VERIFY)); then
    admin_post "$PGS" /migration/verify '{"database":"app"}' 1800 >"$OUTDIR/verify-c$c.json" 2>&1
    vcode=$(tail -n1 "$OUTDIR/verify-c$c.json")
    vdiff=$(head -n1 "$OUTDIR/verify-c$c.json" | python3 -c 'import json, sys
try: print(json.load(sys.stdin)["differences"])
except Exception: print("?")')
    say "  POST /migration/verify: HTTP $vcode, $vdiff difference(s)"
    python3 "$BENCH_DIR/report.py" verify "$OUTDIR/verify-c$c.json" --markdown "$OUTDIR/verify-c$c.md" >/dev/null ||
      say "report.py verify failed"
  fi
  dcode=- ds=-
  if [[ "$pcode" == 200 ]]; then
    phase_post done
    dcode=$POST_CODE ds=$POST_S
    say "  POST done answered $dcode after ${ds}s"
  fi
  checksums "$PRIMARY_PORT" >"$OUTDIR/checksums-c$c-source.txt"
  checksums "$TARGET_PORT" >"$OUTDIR/checksums-c$c-target.txt"
  if cmp -s "$OUTDIR/checksums-c$c-source.txt" "$OUTDIR/checksums-c$c-target.txt"; then ck=identical; else ck=DIFFER; fi
  say "  own comparison after done: $ck ($(paste -sd';' "$OUTDIR/checksums-c$c-source.txt"))"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$c" "$pcode" "$ps" "$pt0" "$pt1" "$lag0" "$vcode" "$vdiff" \
    "$dcode" "$ds" "$ck" "$RUN_TXLOGS" "$RUN_LOG" >>"$CUTS"
  phase_must off
done

LOAD_AT_END=$(cut -d' ' -f1-3 /proc/loadavg)
FACTS=$(host_facts_md)
if [[ -n "$PGSHIFT_REV" ]]; then FACTS=$(sed -E "s/, pgshift [^ ]+$/, pgshift $PGSHIFT_REV/" <<<"$FACTS"); fi
PGS_WARN=$(grep -cE ' (WARN|ERROR) ' "$WORK/$PGS.log" 2>/dev/null)
PGS_WARN_LINES=$(grep -E ' (WARN|ERROR) ' "$WORK/$PGS.log" 2>/dev/null | sed -E 's/\x1b\[[0-9;]*m//g' | sort | uniq -c | sort -rn | head -5)

# ---- report --------------------------------------------------------------------------------------

python3 - "$RES" "$SIDE" "$LAGS" "$CUTS" "$OUTDIR/tables.md" "$CLIENTS" <<'PY' || die "report failed"
import csv, statistics, sys

res_p, side_p, lag_p, cut_p, out_p, clients = sys.argv[1:7]
clients = clients.split()

def tsv(p):
    with open(p) as f:
        return list(csv.DictReader(f, delimiter="\t"))

def num(x):
    try:
        return float(x)
    except (TypeError, ValueError):
        return None

def med(v):
    v = [x for x in v if x is not None]
    return statistics.median(v) if v else None

def pct(v, p):
    v = sorted(v)
    if not v:
        return None
    k = (len(v) - 1) * p / 100.0
    lo = int(k); hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)

def f(x, d=3):
    return "-" if x is None else f"{x:.{d}f}"

def tps(x):
    return "-" if x is None else (f"{x / 1000:.2f}k" if x >= 10000 else f"{x:.0f}")

def mb(x):
    return "-" if x is None else f"{x / 1048576:.2f}"

def table(header, rows):
    out = "| " + " | ".join(header) + " |\n|" + "---|" * len(header) + "\n"
    return out + "".join("| " + " | ".join(r) + " |\n" for r in rows)

def txlog(paths):
    """(client, completion epoch s, latency us or None) of every transaction in pgbench -l logs."""
    out = []
    for p in [p for p in (paths or "").split(",") if p]:
        with open(p) as fh:
            for line in fh:
                x = line.split()
                if len(x) < 6:
                    continue
                lat = int(x[2]) if x[2].isdigit() else None
                out.append((int(x[0]), int(x[4]) + int(x[5]) / 1e6, lat))
    return out

res = {(r["rep"], r["target"], r["clients"]): r for r in tsv(res_p)}
side = tsv(side_p)
lags = tsv(lag_p)
cuts = tsv(cut_p)

def lag_in(t0, t1, direction=None):
    return [int(r["lag_bytes"]) for r in lags if r["lag_bytes"] not in ("", None)
            and t0 <= float(r["epoch"]) <= t1 and (direction is None or r["direction"] == direction)]

md = []
# --- throughput
rows, pairs_txt = [], []
for c in clients:
    cell = {}
    for t in ("off", "dual_write"):
        ss = [s for s in side if s["target"] == t and s["clients"] == c and s["rep"] != "cut"]
        rr = [res.get((s["rep"], t, c)) for s in ss]
        ok = [(s, r) for s, r in zip(ss, rr) if r and r["status"] == "ok"]
        lat = sorted(l for s, _ in ok for _, _, l in txlog(s["txlogs"]) if l is not None)
        lg = [v for s, _ in ok for v in lag_in(float(s["t_start"]), float(s["t_end"]))]
        cell[t] = dict(n=len(ss), ok=len(ok), tps=med(num(r["tps"]) for _, r in ok),
                       tpsl={s["rep"]: num(r["tps"]) for s, r in ok},
                       lat=med(num(r["lat_ms"]) for _, r in ok), p99=pct(lat, 99),
                       cpu=med(num(r["cpu_s_per_10k"]) for _, r in ok),
                       src=med(num(s["src_cpu_per10k"]) for s, _ in ok), tgt=med(num(s["tgt_cpu_per10k"]) for s, _ in ok),
                       lagmax=max(lg) if lg else None, lagp95=pct(lg, 95), nlag=len(lg),
                       lag0=[s["lag0_s"] for s, _ in ok], copy=[s["copy_s"] for s, _ in ok],
                       other=[num(s["other_cores"]) for s, _ in ok],
                       fails=[(s["rep"], r["status"] if r else "?", (r or {}).get("error", "")) for s, r in zip(ss, rr)
                              if not r or r["status"] != "ok"])
    off, dw = cell["off"], cell["dual_write"]
    ratio = dw["tps"] / off["tps"] if dw["tps"] and off["tps"] else None
    per_rep = [dw["tpsl"][k] / off["tpsl"][k] for k in sorted(dw["tpsl"]) if k in off["tpsl"] and off["tpsl"][k]]
    for t, x in (("phase off", off), ("dual_write (logical)", dw)):
        is_dw = x is dw
        rows.append([c, t, f"{x['ok']}/{x['n']}", tps(x["tps"]),
                     (f"**{ratio:.2f}**" if ratio is not None else "-") if is_dw else "-",
                     (", ".join(f"{v:.2f}" for v in per_rep) or "-") if is_dw else "-",
                     f(x["lat"]), f(x["p99"] and x["p99"] / 1000), f(x["cpu"]), f(x["src"]), f(x["tgt"]),
                     f((x["src"] or 0) + (x["tgt"] or 0) + (x["cpu"] or 0)) if x["src"] is not None else "-",
                     mb(x["lagmax"]) if is_dw else "-", mb(x["lagp95"]) if is_dw else "-",
                     ", ".join(x["lag0"]) if is_dw else "-", ", ".join(x["copy"]) if is_dw else "-",
                     ", ".join(f(v, 2) for v in x["other"]) or "-"])
        for rep, st, err in x["fails"]:
            pairs_txt.append(f"- {t}, {c} clients, repeat {rep}: {st} `{(err or '')[:200]}`")
md.append("\nThroughput (medians over the repeats; ratio = median TPS in dual_write / median TPS in phase off; "
          "per-repeat ratios pair each dual_write run with the off run next to it). CPU per 10,000 transactions: "
          "pgshift (utime+stime of the process), source and target PostgreSQL (postmaster with reaped children plus "
          "live children: backends, walsender, apply worker, autovacuum, ...), and all three. Lag: GET /migration's "
          "lag_bytes sampled every 0.5 s during the runs (all repeats pooled), in MiB; 'lag 0 after' = seconds from "
          "pgbench's end until lag_bytes read 0 (per repeat); 'copy' = seconds from POST dual_write until the "
          "initial copy was complete (per repeat); 'other CPU' = what the rest of the machine used during each run "
          "(user, system and steal time of all CPUs minus pgshift, both clusters, pgbench and the lag sampler; "
          "interrupt time, where the run's own loopback traffic is counted, left out), in cores.\n\n")
md.append(table(["clients", "phase", "ok runs", "TPS", "TPS vs off", "per repeat", "lat avg ms", "p99 ms",
                 "pgshift CPU s/10k", "source PG s/10k", "target PG s/10k", "all s/10k", "lag max MiB",
                 "lag p95 MiB", "lag 0 after s", "copy s", "other CPU (cores)"], rows))
if pairs_txt:
    md.append("\nFailed runs (excluded from the medians):\n\n" + "\n".join(pairs_txt) + "\n")

# --- cutover
crow = []
for cu in cuts:
    c = cu["clients"]
    r = res.get(("cut", "cutover", c)) or {}
    s = ([x for x in side if x["rep"] == "cut" and x["clients"] == c] or [{}])[-1]
    tx = txlog(cu["txlogs"])
    t0, t1 = num(cu["post_t0"]), num(cu["post_t1"])
    failed = sum(1 for _, _, l in tx if l is None)
    by = {}
    for cl, e, _ in tx:
        by.setdefault(cl, []).append(e)
    gaps = []  # (start, end) of the time between one client's consecutive commits
    for es in by.values():
        es.sort()
        gaps += list(zip(es, es[1:]))
    allc = sorted(e for _, e, _ in tx)
    none = list(zip(allc, allc[1:]))
    def around(g):
        return t0 is not None and g[1] >= t0 and g[0] <= t1
    cg = max((b - a for a, b in gaps if around((a, b))), default=None)
    og = [b - a for a, b in gaps if not around((a, b))]
    cn = max((b - a for a, b in none if around((a, b))), default=None)
    on = max((b - a for a, b in none if not around((a, b))), default=None)
    maxlat = max((l for _, _, l in tx if l is not None), default=None)
    lf = lag_in(float(s.get("t_start", 0)), t0 or 0, "to_target")
    lr = lag_in(t1 or 0, float(s.get("t_end", 0)), "to_source")
    crow.append([c, tps(num(r.get("tps"))), r.get("status", "-"), cu["post_code"], f(num(cu["post_s"])),
                 f(cg, 3), f(max(og) if og else None, 3), f(pct(og, 99), 3), f(cn, 3), f(on, 3),
                 f(maxlat and maxlat / 1e6, 3), str(failed),
                 f"{mb(max(lf) if lf else None)} / {mb(pct(lf, 95))}", f"{mb(max(lr) if lr else None)} / {mb(pct(lr, 95))}",
                 cu["lag0_s"], f"{cu['verify_code']}: {cu['verify_differences']}", f"{cu['done_code']} in {f(num(cu['done_s']))} s",
                 cu["checksums"], s.get("other_cores", "-")])
if crow:
    md.append("\nCutover under load (one run per client count). 'POST s' = duration of POST /migration/phase "
              "cutover (curl's time_total). From pgbench's per-transaction logs (completion time of every "
              "transaction): 'client gap' = the longest time between one client's consecutive commits that "
              "overlaps the POST, and, for comparison, the longest and the p99 of such gaps elsewhere in the run; "
              "'no commit' = the longest time in which no client committed at all, overlapping the POST and "
              "elsewhere; 'max latency' = the slowest transaction of the run. Lag (MiB, max / p95 of the 0.5 s "
              "samples): forward (source to target) from the start of the run to the POST, reverse (target to "
              "source) after it; 'lag 0 after' = seconds from pgbench's end until the source had applied "
              "everything. verify = HTTP status and differences of POST /migration/verify in cutover; done = "
              "POST /migration/phase done; own check = row count and sum of hashtextextended(row::text, 0) of "
              "every table, source vs target, after done.\n\n")
    md.append(table(["clients", "TPS", "pgbench", "POST code", "POST s", "client gap at cutover s",
                     "client gap elsewhere max s", "client gap elsewhere p99 s", "no commit at cutover s",
                     "no commit elsewhere s", "max latency s", "failed tx", "lag fwd MiB", "lag rev MiB",
                     "lag 0 after s", "verify", "done", "own check", "other CPU (cores)"], crow))
    for cu in cuts:
        r = res.get(("cut", "cutover", cu["clients"])) or {}
        if r.get("status") not in (None, "ok") or (r.get("error") or ""):
            md.append(f"\npgbench at {cu['clients']} clients: {r.get('status')} `{(r.get('error') or '')[:300]}`\n")

# --- load during the whole run
loads = [num(r["load1"]) for r in lags if num(r["load1"]) is not None]
if loads:
    md.append(f"\n1-minute load average during the run (sampled with the lag): mean {statistics.mean(loads):.2f}, "
              f"max {max(loads):.2f} (2 cores; pgbench, pgshift and both servers all run on them).\n")
with open(out_p, "w") as fh:
    fh.write("".join(md))
print("".join(md))
PY

SETTINGS="scale $SCALE; $MODE (pgbench -n $(mode_args "$MODE") -j $JOBS -l), -T $DURATION s x $REPEATS repeats per"
SETTINGS+=" phase at clients $CLIENTS, phase off and dual_write back to back (off first in odd repeats);"
SETTINGS+=" one pgshift instance (transaction mode, pool $POOL_SIZE, workers $WORKERS$( ((WORKERS == 0)) && echo " = $(nproc) threads"))"
SETTINGS+=" with [migration] sync = \"logical\", admin_user = \"pgshift_admin\" (a superuser on both), databases = [\"app\"], catchup_timeout"
SETTINGS+=" $CATCHUP_TIMEOUT, drain_timeout $DRAIN_TIMEOUT; target = a second pgbed cluster (both wal_level = logical,"
SETTINGS+=" fsync off, synchronous_commit off); pgbench_history REPLICA IDENTITY FULL on both; before each dual_write run"
SETTINGS+=" the target's tables emptied, the initial copy, lag 0$( ((VACUUM_TARGET)) && echo ", VACUUM ANALYZE on the target"),"
SETTINGS+=" after it lag 0 and phase off (teardown); TPC-B housekeeping (vacuum branches/tellers, truncate history)"
SETTINGS+=" before every run; cutover: $CUT_DURATION s runs at clients ${CUT_CLIENTS:-none}, shift_reads (read_percent 0)"
SETTINGS+=" before the run, POST cutover ${CUT_AT} s in"
[[ -n "$SERVER_SETTINGS" ]] && SETTINGS+="; both servers also: $SERVER_SETTINGS"
SETTINGS+="; logs in ${OUTDIR#"$ROOT"/}"
{
  echo
  echo "## $(date -u '+%Y-%m-%d %H:%M UTC'): migration on logical replication under TPC-B load (bench/logical.sh)"
  echo
  [[ -n "$NOTE" ]] && printf '**%s**\n\n' "$NOTE"
  echo "$FACTS"
  echo "- load average at the end: $LOAD_AT_END"
  echo "- settings: $SETTINGS"
  cat "$OUTDIR/tables.md"
  if [[ -n "$CUT_CLIENTS" && -f "$OUTDIR/verify-c${CUT_CLIENTS##* }.md" ]]; then
    printf '\nThe last verification (%s clients, in cutover after lag 0):\n' "${CUT_CLIENTS##* }"
    cat "$OUTDIR/verify-c${CUT_CLIENTS##* }.md"
  fi
  for c in $CUT_CLIENTS; do
    [[ -s "$OUTDIR/cutover-c$c-timeline.txt" ]] || continue
    printf '\nWhere the cutover at %s clients spent its time (server logs, log_min_duration_statement = 0 for the admin role; position polls summarised per backend; a new backend pid is a new admin connection):\n\n```\n' "$c"
    cat "$OUTDIR/cutover-c$c-timeline.txt"
    printf '```\n'
  done
  printf '\npgshift log: %s WARN/ERROR line(s)%s\n' "${PGS_WARN:-0}" "$([[ -n "$PGS_WARN_LINES" ]] && printf ':\n\n```\n%s\n```' "$PGS_WARN_LINES")"
} >"$OUTDIR/section.md"
if [[ "$RESULTS" != none ]]; then
  cat "$OUTDIR/section.md" >>"$RESULTS"
  say "appended to $RESULTS"
fi
say "results: $RES, $SIDE, $CUTS, $LAGS; section: $OUTDIR/section.md"
