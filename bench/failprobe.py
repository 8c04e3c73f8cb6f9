#!/usr/bin/env python3
"""failprobe.py: a TPC-B load that survives a failover, and the figures of that failover.

Used by bench/failover.sh. pgbench aborts a client at the first lost connection, so it cannot say
how long a pooler kept writes stalled; this probe can. Stdlib only (the protocol and login code is
bench/holdconns.py's).

  failprobe.py run --port P -c 8 --duration 25 --out run.tsv
      N clients, each a thread with its own connection, run pgbench's built-in TPC-B transaction
      (BEGIN; UPDATE pgbench_accounts; SELECT abalance; UPDATE pgbench_tellers; UPDATE
      pgbench_branches; INSERT INTO pgbench_history; END) one statement per round trip, as
      `pgbench -M simple` sends it, with a unique id in pgbench_history.hid (a column the caller
      adds). A client whose connection ends logs in again at once (every 50 ms while that fails).
      No statement may take longer than --hang s: past that it counts as a hang and the client
      reconnects. One line per transaction or failed login goes to --out:
      client, start, end (Unix s), outcome (ok | failed | ambiguous | login | hang), stage, hid,
      SQLSTATE (or "closed"), message.

  failprobe.py report --log run.tsv --events events --check-port NEW_PRIMARY --label NAME
      Reads the events file ("kill <unix s>", "promote <unix s>" = when pg_ctl promote returned,
      optional "repoint <unix s>") and prints, as one JSON object: transactions ok, failed,
      ambiguous (COMMIT sent, the connection lost before its answer), failed logins, errors by
      SQLSTATE and message, seconds from promote to the first acknowledged write and to every
      client writing again, the longest stall any client saw, and acknowledged commits missing on
      the node at --check-port (lost).

  failprobe.py pgbench-report --output pgbench.out --events events --clients 8 --duration 25 LOGS...
      The same figures (as far as they go) for a plain pgbench run with -l: pgbench aborts a client
      whose connection is lost, so it shows how many clients a failover takes out.

  failprobe.py table results.jsonl
      The reports (one JSON object a line) as a markdown table.
"""
import argparse
import json
import os
import random
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from holdconns import connect, recv_msg, send_msg  # noqa: E402


class Lost(Exception):
    """The connection ended (with the server's last error, if it sent one)."""

    def __init__(self, code, message):
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message


def error_fields(payload):
    fields = {}
    for part in payload.split(b"\0"):
        if part:
            fields[chr(part[0])] = part[1:].decode(errors="replace")
    return fields.get("C", "?"), fields.get("M", "")


def simple(s, sql):
    """Runs one simple query; returns (error or None, data rows). Raises Lost if the connection ends."""
    err, rows = None, []
    try:
        send_msg(s, b"Q", sql.encode() + b"\0")
        while True:
            typ, p = recv_msg(s)
            if typ == b"E":
                err = error_fields(p)
            elif typ == b"D":
                rows.append(p)
            elif typ == b"Z":
                return err, rows
    except socket.timeout:
        raise
    except (OSError, ConnectionError) as e:
        code, msg = err if err else ("closed", str(e))
        raise Lost(code, msg) from None


def connection_class(code):
    return code == "closed" or code.startswith("08") or code.startswith("57P")


def client(n, a, scale, stop, out):
    rnd = random.Random(n * 7919 + 17)
    seq, s = 0, None
    while not stop.is_set():
        t0 = time.time()
        if s is None:
            try:
                s = connect(a.host, a.port, a.user, a.db, a.password, a.login_timeout)
                s.settimeout(a.hang)
            except Exception as e:  # noqa: BLE001 - a failed login is a figure, not a crash
                msg = str(e)
                out.append((n, t0, time.time(), "login", "login", -1, msg.split(":")[0].split()[-1] if ":" in msg else "closed", msg))
                time.sleep(0.05)
                continue
        hid = n * 1_000_000_000 + seq
        seq += 1
        aid, tid, bid = rnd.randint(1, 100000 * scale), rnd.randint(1, 10 * scale), rnd.randint(1, scale)
        delta = rnd.randint(-5000, 5000)
        body = [
            "BEGIN",
            f"UPDATE pgbench_accounts SET abalance = abalance + {delta} WHERE aid = {aid}",
            f"SELECT abalance FROM pgbench_accounts WHERE aid = {aid}",
            f"UPDATE pgbench_tellers SET tbalance = tbalance + {delta} WHERE tid = {tid}",
            f"UPDATE pgbench_branches SET bbalance = bbalance + {delta} WHERE bid = {bid}",
            "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime, hid) "
            f"VALUES ({tid}, {bid}, {aid}, {delta}, CURRENT_TIMESTAMP, {hid})",
            "END",
        ]
        stage = "body"
        try:
            err = None
            for i, sql in enumerate(body):
                stage = "commit" if i == len(body) - 1 else "body"
                err, _ = simple(s, sql)
                if err:
                    break
            if err is None:
                out.append((n, t0, time.time(), "ok", stage, hid, "", ""))
                continue
            outcome = "ambiguous" if stage == "commit" and connection_class(err[0]) else "failed"
            out.append((n, t0, time.time(), outcome, stage, hid, err[0], err[1]))
            if simple(s, "ROLLBACK")[0]:
                raise Lost("closed", "ROLLBACK failed")
            time.sleep(0.05)  # an application retries, but not in a tight loop
        except Lost as e:
            outcome = "ambiguous" if stage == "commit" else "failed"
            if not out or out[-1][5] != hid:
                out.append((n, t0, time.time(), outcome, stage, hid, e.code, e.message))
            s = None
            time.sleep(0.05)
        except socket.timeout:
            out.append((n, t0, time.time(), "hang", stage, hid, "timeout", f"no answer within {a.hang}s"))
            s.close()
            s = None
    if s is not None:
        try:
            send_msg(s, b"X", b"")
            s.close()
        except OSError:
            pass


def run(a):
    s = connect(a.host, a.port, a.user, a.db, a.password, a.login_timeout)
    err, rows = simple(s, "SELECT count(*) FROM pgbench_branches")
    if err:
        sys.exit(f"cannot read the scale: {err}")
    scale = int(rows[0][6:].decode())
    send_msg(s, b"X", b"")
    s.close()
    stop, outs, threads = threading.Event(), [], []
    for n in range(a.clients):
        out = []
        outs.append(out)
        threads.append(threading.Thread(target=client, args=(n, a, scale, stop, out), daemon=True))
    for t in threads:
        t.start()
    time.sleep(a.duration)
    stop.set()
    end = time.time()
    for t in threads:
        t.join(a.hang + 5)
    with open(a.out, "w") as f:
        f.write(f"# end {end:.6f} clients {a.clients} scale {scale}\n")
        for out in outs:
            for r in out:
                f.write("\t".join(str(x).replace("\t", " ").replace("\n", " ") for x in r) + "\n")
    ok = sum(1 for out in outs for r in out if r[3] == "ok")
    print(f"{ok} transactions ok in {a.duration}s ({ok / a.duration:.0f} tps)", flush=True)


def read_log(path):
    rows, end, clients = [], None, 0
    with open(path) as f:
        for line in f:
            if line.startswith("#"):
                w = line.split()
                end, clients = float(w[2]), int(w[4])
                continue
            c, t0, t1, outcome, stage, hid, code, msg = line.rstrip("\n").split("\t", 7)
            rows.append((int(c), float(t0), float(t1), outcome, stage, int(hid), code, msg))
    return rows, end, clients


def history_ids(port, a):
    s = connect(a.host, port, a.user, a.db, a.password, a.login_timeout)
    err, rows = simple(s, "SELECT hid FROM pgbench_history WHERE hid IS NOT NULL")
    if err:
        sys.exit(f"cannot read pgbench_history on port {port}: {err}")
    return {int(r[6:].decode()) for r in rows}


def report(a):
    rows, end, clients = read_log(a.log)
    ev = {}
    with open(a.events) as f:
        for line in f:
            k, v = line.split()
            ev[k] = float(v)
    kill, promote = ev["kill"], ev["promote"]
    ok = [r for r in rows if r[3] == "ok"]
    bad = [r for r in rows if r[3] != "ok"]
    errors = {}
    for r in bad:
        key = f"{r[3]} {r[6]} {r[7][:160]}"
        errors[key] = errors.get(key, 0) + 1
    stall, back, never = 0.0, [], 0
    for c in range(clients):
        times = sorted(r[2] for r in ok if r[0] == c)
        prev = None
        for t in times + [end]:
            if prev is not None:
                stall = max(stall, t - prev)
            prev = t
        after = [t for t in times if t > promote]
        if after:
            back.append(after[0] - promote)
        else:
            never += 1
    present = history_ids(a.check_port, a)
    acked = {r[5] for r in ok}
    ambiguous = {r[5] for r in bad if r[3] == "ambiguous"}
    res = {
        "label": a.label,
        "ok": len(ok),
        "ok_after_promote": sum(1 for r in ok if r[2] > promote),
        "failed": sum(1 for r in bad if r[3] == "failed"),
        "ambiguous": len(ambiguous),
        "ambiguous_committed": len(ambiguous & present),
        "login_failures": sum(1 for r in bad if r[3] == "login"),
        "hangs": sum(1 for r in bad if r[3] == "hang"),
        "errors_before_kill": sum(1 for r in bad if r[2] < kill),
        "kill_to_promote_s": round(promote - kill, 3),
        "promote_to_first_write_s": round(min(back), 3) if back else None,
        "promote_to_all_writing_s": round(max(back), 3) if back and not never else None,
        "clients_never_back": never,
        "longest_stall_s": round(stall, 3),
        "lost": len(acked - present),
        "errors": errors,
    }
    if "repoint" in ev:
        res["promote_to_repoint_s"] = round(ev["repoint"] - promote, 3)
    print(json.dumps(res))


def pgbench_report(a):
    """What pgbench itself saw across the failover, from its -l logs and its output."""
    ev = dict((k, float(v)) for k, v in (line.split() for line in open(a.events)))
    kill, promote = ev["kill"], ev["promote"]
    ends, failed = {}, 0
    for path in a.logs:
        for line in open(path):
            w = line.split()
            if len(w) < 6:
                continue
            if w[2] in ("failed", "skipped"):
                failed += 1
                continue
            ends.setdefault(int(w[0]), []).append(int(w[4]) + int(w[5]) / 1e6)
    text = open(a.output).read()
    aborted = [line.strip() for line in text.splitlines() if " aborted " in line and line.startswith("pgbench: error: client")]
    end = ev.get("start", kill) + a.duration
    stall, back = 0.0, []
    for c in range(a.clients):
        times = sorted(ends.get(c, []))
        for x, y in zip(times, times[1:] + [end]):
            stall = max(stall, y - x)
        after = [t for t in times if t > promote]
        if after:
            back.append(after[0] - promote)
    errors = {}
    for line in aborted:
        key = "aborted " + line.split("aborted", 1)[1].strip()[:160]
        errors[key] = errors.get(key, 0) + 1
    res = {
        "label": a.label, "ok": sum(len(v) for v in ends.values()),
        "ok_after_promote": sum(1 for v in ends.values() for t in v if t > promote), "failed": failed,
        "ambiguous": None, "ambiguous_committed": None, "login_failures": 0, "hangs": 0,
        "aborted_clients": len(aborted), "kill_to_promote_s": round(promote - kill, 3),
        "promote_to_first_write_s": round(min(back), 3) if back else None,
        "promote_to_all_writing_s": round(max(back), 3) if len(back) == a.clients else None,
        "clients_never_back": a.clients - len(back), "longest_stall_s": round(stall, 3), "lost": None,
        "errors": errors,
    }
    print(json.dumps(res))


def table(a):
    """A markdown table of report lines (JSON, one per drill)."""
    cols = ["run", "replication", "pooler", "load", "tx ok", "tx ok after promote", "failed tx", "ambiguous (committed)",
            "failed logins", "hangs", "kill -> promote s", "longest stall s", "promote -> first write s", "promote -> all writing s", "lost commits",
            "errors seen (count x outcome SQLSTATE message)"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for line in open(a.results):
        if not line.strip():
            continue
        r = json.loads(line)
        words = r["label"].split()
        rep, mode, target, load = (words + ["?"] * (3 - len(words)) + ["failprobe"])[:4]
        na = lambda v: "n/a" if v is None else v  # noqa: E731
        errs = "; ".join(f"{n} x {k}" for k, n in sorted(r["errors"].items(), key=lambda kv: -kv[1])[:4])
        if len(r["errors"]) > 4:
            errs += f"; ... ({len(r['errors']) - 4} more kinds)"
        fmt = lambda v: "never" if v is None else f"{v:.2f}"  # noqa: E731
        all_back = fmt(r["promote_to_all_writing_s"])
        if r["clients_never_back"]:
            all_back = f"never ({r['clients_never_back']} clients)"
        if r.get("aborted_clients"):
            all_back += f"; {r['aborted_clients']} clients aborted"
        cells = [rep, mode, target, load, r["ok"], r["ok_after_promote"], r["failed"],
                 f"{na(r['ambiguous'])} ({na(r['ambiguous_committed'])})", r["login_failures"], r["hangs"],
                 f"{r['kill_to_promote_s']:.2f}", f"{r['longest_stall_s']:.2f}", fmt(r["promote_to_first_write_s"]),
                 all_back, na(r["lost"]),
                 errs.replace("|", "/") or "-"]
        print("| " + " | ".join(str(c) for c in cells) + " |")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("run", "report"):
        p = sub.add_parser(name)
        p.add_argument("--host", default="127.0.0.1")
        p.add_argument("--user", default="app")
        p.add_argument("--db", default="app")
        p.add_argument("--password", default=os.environ.get("PGPASSWORD", "app"))
        p.add_argument("--login-timeout", type=float, default=10)
    r = sub.choices["run"]
    r.add_argument("--port", type=int, required=True)
    r.add_argument("-c", "--clients", type=int, default=8)
    r.add_argument("--duration", type=float, default=25)
    r.add_argument("--hang", type=float, default=60, help="a statement unanswered this long is a hang")
    r.add_argument("--out", required=True)
    p = sub.choices["report"]
    p.add_argument("--log", required=True)
    p.add_argument("--events", required=True)
    p.add_argument("--check-port", type=int, required=True)
    p.add_argument("--label", default="")
    g = sub.add_parser("pgbench-report")
    g.add_argument("--output", required=True, help="pgbench's output (stdout and stderr)")
    g.add_argument("--events", required=True)
    g.add_argument("--clients", type=int, required=True)
    g.add_argument("--duration", type=float, required=True, help="pgbench -T")
    g.add_argument("--label", default="")
    g.add_argument("logs", nargs="*", help="pgbench -l per-transaction logs")
    t = sub.add_parser("table")
    t.add_argument("results", help="report lines (JSON), one per drill")
    a = ap.parse_args()
    {"run": run, "report": report, "pgbench-report": pgbench_report, "table": table}[a.cmd](a)


if __name__ == "__main__":
    main()
