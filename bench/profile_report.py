#!/usr/bin/env python3
"""Tables for bench/profile.sh (and the CPU table of bench/floor.sh): user/system CPU, system calls and instructions per transaction.

Inputs: cpu.tsv (rep, target, tx, user_ticks, sys_ticks), strace -c summaries, instr.tsv (target,
instructions for N and 2N transactions per client, N * clients), and callgrind_annotate outputs of
the N and 2N runs of each target, so per-function costs per transaction cancel start-up and logins.
"""
import argparse
import csv
import re
import statistics
import sys

from report import LABEL, md_table  # noqa: E402 (bench/report.py, beside this file)


def cpu_table(path, clk_tck):
    rows = list(csv.DictReader(open(path), delimiter="\t"))
    with_tps = bool(rows) and "tps" in rows[0]
    per = {}
    for r in rows:
        tx = int(r["tx"])
        u = int(r["user_ticks"]) / clk_tck / tx * 1e6
        s = int(r["sys_ticks"]) / clk_tck / tx * 1e6
        per.setdefault(r["target"], []).append((u, s, float(r.get("tps") or 0)))
    out, med = [], {}
    for t, v in per.items():
        u = statistics.median(x[0] for x in v)
        s = statistics.median(x[1] for x in v)
        med[t] = (u, s)
        share = f"{s / (u + s) * 100:.0f}%" if u + s else "-"
        tps = [f"{statistics.median(x[2] for x in v):.0f}"] if with_tps else []
        out.append([LABEL.get(t, t), f"{u:.1f}", f"{s:.1f}", f"{u + s:.1f}", share, *tps, str(len(v))])
    if "pgshift" in med and "pgbouncer" in med:
        (pu, ps), (bu, bs) = med["pgshift"], med["pgbouncer"]
        # A short run can leave a whole clock tick (10 ms) unspent: no ratio then.
        ratio = lambda a, b: f"{a / b:.2f}" if b else "-"  # noqa: E731
        out.append(["pgshift / PgBouncer", ratio(pu, bu), ratio(ps, bs), ratio(pu + ps, bu + bs), "", *([""] * with_tps), ""])
    head = ["target", "user us/tx", "system us/tx", "total us/tx", "system share", *(["TPS"] * with_tps), "runs"]
    return md_table(head, out), med


def parse_strace(path):
    calls = {}
    for line in open(path):
        f = line.split()
        if len(f) < 5 or not re.match(r"^[\d.]+$", f[0]) or f[-1] == "total":
            continue
        try:
            calls[f[-1]] = int(f[3])
        except ValueError:
            continue
    return calls


def strace_table(specs):
    per = {}
    for spec in specs:
        name, rest = spec.split("=", 1)
        path, tx = rest.rsplit(":", 1)
        per[name] = {k: v / int(tx) for k, v in parse_strace(path).items()}
    names = sorted({k for v in per.values() for k in v}, key=lambda k: -max(v.get(k, 0) for v in per.values()))
    targets = list(per)
    rows = []
    for k in names:
        vals = [per[t].get(k, 0) for t in targets]
        if max(vals) < 0.01:
            continue
        rows.append([k] + [f"{x:.2f}" for x in vals])
    rows.append(["**all**"] + [f"**{sum(per[t].values()):.2f}**" for t in targets])
    return md_table(["system call"] + [f"{LABEL.get(t, t)} calls/tx" for t in targets], rows)


LINE = re.compile(r"^\s*([\d,]+)\s+(?:\(\s*[\d.]+%\)\s+)?(.+?)\s*$")


def short(fn):
    fn = re.sub(r"\s*\[[^\]]*\]$", "", fn)          # the object file
    fn = re.sub(r"^(\?\?\?|[^ ]*?\.(rs|c|h|S|cpp)):", "", fn)  # the source file
    fn = re.sub(r"::h[0-9a-f]{16}$", "", fn)
    fn = fn.replace("|", "\\|")
    return fn if len(fn) <= 100 else fn[:97] + "..."


def parse_annotate(path):
    cost, started = {}, False
    for line in open(path):
        if "file:function" in line:
            started = True
            continue
        if not started:
            continue
        m = LINE.match(line)
        if m and not m.group(2).startswith("PROGRAM TOTALS"):
            k = short(m.group(2))
            cost[k] = cost.get(k, 0) + int(m.group(1).replace(",", ""))
    return cost


def instr_table(path):
    rows = []
    for r in csv.reader(open(path), delimiter="\t"):
        t, a, b, tx = r[0], int(r[1]), int(r[2]), int(r[3])
        rows.append([LABEL.get(t, t), f"{(b - a) / tx:,.0f}"])
    return md_table(["target", "user-space instructions per transaction (callgrind)"], rows)


def top_table(small, big, tx, top):
    a, b = parse_annotate(small), parse_annotate(big)
    diff = {k: (b.get(k, 0) - a.get(k, 0)) / tx for k in set(a) | set(b)}
    total = sum(v for v in diff.values() if v > 0)
    rows = []
    for k, v in sorted(diff.items(), key=lambda kv: -kv[1])[:top]:
        rows.append([f"`{k}`", f"{v:,.0f}", f"{v / total * 100:.1f}%"])
    return md_table(["function (self cost)", "instructions/tx", "share"], rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--cpu", required=True)
    ap.add_argument("--clk-tck", type=int, default=100)
    ap.add_argument("--strace", action="append", default=[], help="NAME=FILE:TRANSACTIONS")
    ap.add_argument("--instr", help="without it, only the CPU table (bench/floor.sh)")
    ap.add_argument("--annotate", action="append", default=[], help="NAME=SMALL,BIG,TRANSACTIONS")
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--markdown", required=True)
    a = ap.parse_args()
    cpu, _ = cpu_table(a.cpu, a.clk_tck)
    text = "CPU of the pooler process per transaction (utime and stime from /proc/PID/stat, median of the runs):\n\n"
    text += cpu + "\n"
    if not a.instr:
        with open(a.markdown, "w") as fh:
            fh.write(text)
        return 0
    text += "System calls per transaction, all threads of the pooler (strace -c -f):\n\n" + strace_table(a.strace) + "\n"
    text += instr_table(a.instr) + "\n"
    for spec in a.annotate:
        name, rest = spec.split("=", 1)
        small, big, tx = rest.split(",")
        text += (f"{LABEL.get(name, name)}'s user-space instructions per transaction by function, self cost "
                 f"(callgrind_annotate of the 2N run minus the N run), top {a.top}:\n\n")
        text += top_table(small, big, int(tx), a.top) + "\n"
    with open(a.markdown, "w") as fh:
        fh.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
