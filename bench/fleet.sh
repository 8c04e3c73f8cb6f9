#!/usr/bin/env bash
# bench/fleet.sh: what a fleet's control table costs PostgreSQL, and how fast a phase change made
# through one instance is in force on all of them.
#
#   bench/fleet.sh
#
# On a throwaway primary (the store) and a second server (the migration target), INSTANCES pgshift
# processes start with [fleet] id 1..N (one fleet) and a statement-sync [migration]. Then:
#  1. idle cost over IDLE s: CPU of the store's backends serving the fleet connections (from
#     /proc, utime+stime), WAL written (pg_current_wal_lsn), and rows written / index scans on
#     pgshift.fleet_members and pgshift.fleet_state (pg_stat_user_tables), per instance and second;
#  2. CHANGES phase changes (off <-> dual_write, each through the next instance): ms from the
#     POST's answer until the last of the N instances reports the new phase on GET /migration
#     (every instance polled every 5 ms), and how long the POST took;
#  3. FENCED fenced changes (shift_reads <-> cutover, each through the next instance): how long the
#     POST took with N instances confirming the fence.
# Appends a dated section to bench/RESULTS.md (RESULTS= none to skip); removes everything it started.
#
# Knobs: INSTANCES=10 IDLE=30 CHANGES=10 FENCED=6 HEARTBEAT="1s" NOTE="..." RESULTS=bench/RESULTS.md
#        PGSHIFT_BIN (e.g. target/debug/pgshift: no release build), PGSHIFT_LOG, KEEP: see bench/lib.sh
set -uo pipefail

BENCH_NAME=fleet
case "${1:-}" in
  -h | --help) sed -n '2,/^set /{/^#/p}' "$0"; exit 0 ;;
  "") ;;
  *) echo "fleet.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
esac
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

INSTANCES=${INSTANCES:-10}
IDLE=${IDLE:-30}
CHANGES=${CHANGES:-10}
FENCED=${FENCED:-6}
HEARTBEAT=${HEARTBEAT:-1s}
NOTE=${NOTE:-}
RESULTS=${RESULTS:-$BENCH_DIR/RESULTS.md}

raise_nofile
ensure_postgres
ensure_pgshift
install_trap
start_bed
start_target_bed 0

for i in $(seq 1 "$INSTANCES"); do
  start_pgshift_as "f$i" false 1 "[fleet]
id = $i
name = \"bench\"
store = \"postgres://pgshift_fleet:pgshift_fleet@/app\"
heartbeat_interval = \"$HEARTBEAT\"

[migration]
state_file = \"$WORK/f$i-state.json\"
sync = \"statement\"
[migration.target]
host = \"127.0.0.1\"
port = $TARGET_PORT"
done

ADMINS=""
for i in $(seq 1 "$INSTANCES"); do ADMINS+="${PGS_ADMIN[f$i]} "; done
say "$INSTANCES instances up; measuring"

python3 - "$PRIMARY_PORT" "$IDLE" "$CHANGES" "$FENCED" "$ADMIN_TOKEN" "$WORK/fleet.json" $ADMINS <<'PY'
import json, os, subprocess, sys, time, threading, urllib.request

port, idle, changes, fenced, token, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6]
admins = sys.argv[7:]
hz = os.sysconf("SC_CLK_TCK")

def sql(q):
    return subprocess.run(["psql", "-X", "-At", "-h", "127.0.0.1", "-p", port, "-U", "app", "app", "-c", q],
                          capture_output=True, text=True, check=True).stdout.strip()

def fleet_pids():
    q = "select pid from pg_stat_activity where backend_type = 'client backend' and pid <> pg_backend_pid() and query ~ 'pgshift.fleet|pg_notify|LISTEN'"
    return [int(p) for p in sql(q).split() if p]

def ticks(pids):
    total = 0
    for p in pids:
        try:
            f = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
            total += int(f[11]) + int(f[12])
        except OSError:
            pass
    return total

def table_counts():
    q = ("select coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0), coalesce(sum(idx_scan), 0) "
         "from pg_stat_user_tables where schemaname = 'pgshift'")
    row = sql(q).split("|")
    return int(row[0]), int(row[1])

time.sleep(3)  # every instance has heartbeated
pids = fleet_pids()
lsn0 = sql("select pg_current_wal_lsn()")
t0, c0, (w0, s0) = time.time(), ticks(pids), table_counts()
time.sleep(idle)
t1, c1, (w1, s1) = time.time(), ticks(pids), table_counts()
wal = int(sql(f"select pg_current_wal_lsn() - '{lsn0}'::pg_lsn"))
secs, n = t1 - t0, len(admins)
idle_res = {
    "backends": len(pids),
    "cpu_ms_per_s": 1000.0 * (c1 - c0) / hz / secs,
    "wal_bytes_per_s": wal / secs,
    "rows_written_per_s": (w1 - w0) / secs,
    "index_scans_per_s": (s1 - s0) / secs,
}

def get(admin, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}{path}", timeout=10) as r:
        return json.load(r)

def post(admin, body):
    req = urllib.request.Request(f"http://127.0.0.1:{admin}/migration/phase", data=json.dumps(body).encode(),
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    t = time.time()
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            code = r.status
    except urllib.error.HTTPError as e:
        code = e.code
    return code, time.time() - t

def until_all(phase):
    done = {}
    def watch(a):
        while a not in done:
            try:
                if get(a, "/migration")["phase"] == phase:
                    done[a] = time.time()
                    return
            except Exception:
                pass
            time.sleep(0.005)
    threads = [threading.Thread(target=watch, args=(a,)) for a in admins]
    for th in threads: th.start()
    for th in threads: th.join(30)
    return done

changes_res = []
phase = "off"
for k in range(changes):
    nxt = "dual_write" if phase == "off" else "off"
    code, took = post(admins[k % n], {"phase": nxt})
    answered = time.time()
    done = until_all(nxt)
    lag = max(done.values()) - answered if len(done) == n else None
    changes_res.append({"via": k % n + 1, "to": nxt, "code": code, "post_ms": took * 1000,
                        "all_ms": None if lag is None else max(0.0, lag * 1000), "instances": len(done)})
    phase = nxt
if phase == "off":
    post(admins[0], {"phase": "dual_write"})
    until_all("dual_write")
post(admins[0], {"phase": "shift_reads", "read_percent": 0})
until_all("shift_reads")
fenced_res = []
phase = "shift_reads"
for k in range(fenced):
    nxt = "cutover" if phase == "shift_reads" else "shift_reads"
    code, took = post(admins[(k + 1) % n], {"phase": nxt})
    answered = time.time()
    done = until_all(nxt)
    lag = max(done.values()) - answered if len(done) == n else None
    fenced_res.append({"via": (k + 1) % n + 1, "to": nxt, "code": code, "post_ms": took * 1000,
                       "all_ms": None if lag is None else max(0.0, lag * 1000), "instances": len(done)})
    phase = nxt
json.dump({"instances": n, "idle_s": secs, "idle": idle_res, "changes": changes_res, "fenced": fenced_res},
          open(out, "w"), indent=1)
PY
rc=$?
((rc == 0)) || die "the measurement failed (exit $rc); logs in $WORK"

python3 - "$WORK/fleet.json" "$RESULTS" "$(pgshift_commit)" "$HEARTBEAT" "$NOTE" "$PGSHIFT" "$(host_facts_md)" <<'PY'
import json, sys, statistics, datetime
d = json.load(open(sys.argv[1]))
results, commit, hb, note, binary, host = sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6], sys.argv[7]
n, i = d["instances"], d["idle"]
def stats(rows, key):
    v = [r[key] for r in rows if r[key] is not None]
    return (statistics.median(v), max(v)) if v else (float("nan"), float("nan"))
ok = lambda rows: sum(1 for r in rows if r["code"] == 200 and r["instances"] == n)
cm, cx = stats(d["changes"], "all_ms"); pm, px = stats(d["changes"], "post_ms")
fm, fx = stats(d["fenced"], "post_ms"); gm, gx = stats(d["fenced"], "all_ms")
md = [f"\n## Fleet control table, {n} instances ({datetime.datetime.now():%Y-%m-%d %H:%M})\n",
      f"bench/fleet.sh, pgshift {commit} (`{binary}`), heartbeat_interval {hb}. {note}\n",
      host, "",
      f"Idle, {d['idle_s']:.0f} s, {n} instances: the store's {i['backends']} fleet backends used "
      f"{i['cpu_ms_per_s']:.2f} ms CPU per second in all ({i['cpu_ms_per_s'] / n:.3f} ms/s per instance); "
      f"{i['wal_bytes_per_s']:.0f} bytes of WAL per second ({i['wal_bytes_per_s'] / n:.0f} per instance); "
      f"{i['rows_written_per_s']:.1f} rows written and {i['index_scans_per_s']:.1f} index scans per second "
      f"on the pgshift tables.\n",
      "| measure | median | max | ok |", "|---|---|---|---|",
      f"| phase change (off <-> dual_write): POST answered, ms | {pm:.0f} | {px:.0f} | {ok(d['changes'])}/{len(d['changes'])} |",
      f"| ... then in force on all {n}, ms after the answer | {cm:.0f} | {cx:.0f} | |",
      f"| fenced change (shift_reads <-> cutover), POST answered, ms | {fm:.0f} | {fx:.0f} | {ok(d['fenced'])}/{len(d['fenced'])} |",
      f"| ... then in force on all {n}, ms after the answer | {gm:.0f} | {gx:.0f} | |", ""]
text = "\n".join(md)
print(text)
if results != "none":
    open(results, "a").write(text)
PY
