#!/usr/bin/env python3
"""report.py: summaries for the bench/ scripts (stdlib only).

  report.py pgbench RESULTS_TSV --targets "direct pgbouncer pgshift" --modes "..." --clients "..." --markdown OUT
      median table of bench/run.sh's results.tsv: printed, and written as Markdown to OUT
  report.py latency --markdown OUT NAME=LOG[,LOG...] ...
      percentiles of pgbench per-transaction logs (-l) per target (bench/latency.sh)
  report.py memory RESULTS_TSV --markdown OUT
      tables of bench/memory.sh's results.tsv
  report.py instructions RESULTS_TSV --markdown OUT
      table of bench/instructions.sh's results.tsv
"""
import argparse
import csv
import statistics
import sys

LABEL = {"direct": "direct", "pgbouncer": "PgBouncer", "pgshift": "pgshift"}


def label(t):
    return LABEL.get(t, t)


def num(x):
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


def med(values):
    v = [x for x in (num(y) for y in values) if x is not None]
    return statistics.median(v) if v else None


def fmt_tps(x):
    if x is None:
        return "-"
    return f"{x / 1000:.2f}k" if x >= 10000 else f"{x:.0f}"


def fmt(x, digits=3):
    return "-" if x is None else f"{x:.{digits}f}"


def ratio(a, b):
    return "-" if a is None or b is None or b == 0 else f"{a / b:.2f}"


def md_table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out) + "\n"


def read_tsv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


# ---- pgbench (run.sh) ----------------------------------------------------------------------------

def cmd_pgbench(a):
    rows = read_tsv(a.results)
    targets, modes, clients = a.targets.split(), a.modes.split(), a.clients.split()
    poolers = [t for t in targets if t != "direct"]
    both = "pgbouncer" in targets and "pgshift" in targets
    cells, failures = {}, []
    for m in modes:
        for c in clients:
            for t in targets:
                rs = [r for r in rows if r["target"] == t and r["mode"] == m and r["clients"] == c]
                ok = [r for r in rs if r["status"] == "ok"]
                bad = [r for r in rs if r["status"] != "ok"]
                cells[m, c, t] = dict(
                    n=len(rs), ok=len(ok),
                    tps=med(r["tps"] for r in ok), lat=med(r["lat_ms"] for r in ok),
                    cpu=med(r["cpu_s_per_10k"] for r in ok))
                if bad:
                    failures.append((m, c, t, len(bad), len(rs), bad[0]["status"], bad[0]["error"]))

    def mark(cell, text):
        if cell["n"] == 0:
            return "-"
        if cell["ok"] == 0:
            return "FAIL"
        return text if cell["ok"] == cell["n"] else f"{text} ({cell['ok']}/{cell['n']} ok)"

    # console
    f = "{:<16} {:>7} {:<10} {:>6} {:>10} {:>9} {:>12}"
    print(f.format("mode", "clients", "target", "ok", "tps_median", "lat_ms", "cpu_s/10k_tx"))
    for m in modes:
        for c in clients:
            for t in targets:
                x = cells[m, c, t]
                print(f.format(m, c, t, f"{x['ok']}/{x['n']}", fmt(x["tps"], 0), fmt(x["lat"]),
                               "n/a" if t == "direct" else fmt(x["cpu"])))
            if both:
                b, s = cells[m, c, "pgbouncer"], cells[m, c, "pgshift"]
                print(f"{'':16} {'':>7} pgshift/PgBouncer: TPS x{ratio(s['tps'], b['tps'])}, "
                      f"CPU per tx x{ratio(s['cpu'], b['cpu'])}")
    for m, c, t, nb, n, st, err in failures:
        print(f"{st}: {t} {m} c{c} ({nb}/{n} runs): {err[:200]}")

    # markdown
    header = ["mode", "clients"] + [f"{label(t)} TPS" for t in targets]
    if both:
        header.append("pgshift / PgBouncer TPS")
    header += [f"{label(t)} lat ms" for t in targets]
    header += [f"{label(t)} CPU s/10k tx" for t in poolers]
    if both:
        header.append("pgshift / PgBouncer CPU")
    out = []
    for m in modes:
        for c in clients:
            x = {t: cells[m, c, t] for t in targets}
            r = [m, c] + [mark(x[t], fmt_tps(x[t]["tps"])) for t in targets]
            if both:
                r.append(ratio(x["pgshift"]["tps"], x["pgbouncer"]["tps"]))
            r += [mark(x[t], fmt(x[t]["lat"])) for t in targets]
            r += [mark(x[t], fmt(x[t]["cpu"])) for t in poolers]
            if both:
                r.append(ratio(x["pgshift"]["cpu"], x["pgbouncer"]["cpu"]))
            out.append(r)
    text = ("\nMedians over the runs that succeeded. TPS without initial connection time; lat = pgbench's "
            "latency average; CPU = utime+stime of the pooler process per 10,000 transactions "
            "(/proc/PID/stat before and after each run). A ratio below 1 is pgshift slower (TPS) "
            "or cheaper (CPU).\n\n")
    text += md_table(header, out)
    if failures:
        text += "\nFailed runs (excluded from the medians):\n\n"
        for m, c, t, nb, n, st, err in failures:
            text += f"- {label(t)} {m}, {c} clients: {nb}/{n} runs {st}: `{err[:200]}`\n"
    if a.markdown:
        with open(a.markdown, "w") as fh:
            fh.write(text)


# ---- latency (latency.sh) ------------------------------------------------------------------------

def pct(sorted_v, p):
    if not sorted_v:
        return None
    k = (len(sorted_v) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(sorted_v) - 1)
    return sorted_v[lo] + (sorted_v[hi] - sorted_v[lo]) * (k - lo)


def read_pgbench_log(path):
    """Latencies in microseconds from a pgbench -l log (3rd field)."""
    out = []
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and parts[2].isdigit():
                out.append(int(parts[2]))
            # 'failed'/'skipped' entries have a non-numeric 3rd field: not latencies
    return out


def cmd_latency(a):
    stats = {}
    order = []
    for spec in a.logs:
        name, _, files = spec.partition("=")
        order.append(name)
        lat = []
        runs = []
        for path in [p for p in files.split(",") if p]:
            v = read_pgbench_log(path)
            lat += v
            if v:
                runs.append(statistics.median(v))
        lat.sort()
        stats[name] = dict(n=len(lat), runs=runs, mean=statistics.fmean(lat) if lat else None,
                           p50=pct(lat, 50), p90=pct(lat, 90), p99=pct(lat, 99), p999=pct(lat, 99.9),
                           max=lat[-1] if lat else None)
    d = stats.get("direct")
    header = ["target", "transactions", "mean us", "median us", "p90 us", "p99 us", "p99.9 us", "max us",
              "median of run medians us", "added median us", "added p99 us"]
    rows = []
    f = "{:<10} {:>12} {:>8} {:>9} {:>8} {:>8} {:>9} {:>9} {:>10} {:>13} {:>12}"
    print(f.format("target", "xacts", "mean", "median", "p90", "p99", "p99.9", "max", "run-med", "+median", "+p99"))
    for name in order:
        s = stats[name]

        def us(x):
            return "-" if x is None else f"{x:.0f}"

        def added(key):
            if d is None or name == "direct" or s[key] is None or d[key] is None:
                return "-"
            return f"{s[key] - d[key]:+.0f}"
        runmed = statistics.median(s["runs"]) if s["runs"] else None
        r = [label(name), str(s["n"]), us(s["mean"]), us(s["p50"]), us(s["p90"]), us(s["p99"]), us(s["p999"]),
             us(s["max"]), us(runmed), added("p50"), added("p99")]
        print(f.format(*r))
        rows.append(r)
    text = ("\nLatency of each transaction from pgbench's per-transaction logs (-l), all repeats pooled; "
            "'added' = the target's figure minus direct's, in microseconds.\n\n") + md_table(header, rows)
    if a.markdown:
        with open(a.markdown, "w") as fh:
            fh.write(text)


# ---- memory (memory.sh) --------------------------------------------------------------------------

def cmd_memory(a):
    rows = read_tsv(a.results)
    header = ["target", "clients", "opened", "RSS idle kB", "RSS with clients kB", "kB per client",
              "CPU s to connect all", "CPU ms per connect", "CPU % while idle-holding", "RSS after close kB",
              "RSS round 2 kB", "RSS after round 2 kB", "open-files limit", "problem"]
    out = []
    for r in rows:
        out.append([label(r["target"]), r["clients"], r["opened"], r["rss0_kb"], r["rss1_kb"], r["kb_per_client"],
                    r["connect_cpu_s"], r["connect_cpu_ms_each"], r["hold_cpu_pct"], r["rss2_kb"],
                    r.get("rss_round2_kb", "-"), r.get("rss2_after_kb", "-"), r["nofile"], r.get("error") or ""])
        print("  ".join(f"{h}={v}" for h, v in zip(header, out[-1])))
    text = ("\nOne fresh pooler process per row. kB per client = (RSS with the clients connected - RSS idle) / "
            "clients opened; CPU = utime+stime of the pooler while the clients connect and log in (SCRAM) one "
            "after another, then while it holds them idle. Round 2 opens the same number again on the same "
            "process: RSS near round one's means freed memory is reused, not leaked.\n\n") + md_table(header, out)
    # growth: per target, how figures scale from the smallest to the largest count
    targets = sorted({r["target"] for r in rows}, key=lambda t: ["pgshift", "pgbouncer"].index(t)
                     if t in ("pgshift", "pgbouncer") else 9)
    counts = sorted({int(r["clients"]) for r in rows})
    gh = ["clients"]
    for t in targets:
        gh += [f"{label(t)} RSS MB", f"{label(t)} kB/client", f"{label(t)} CPU s connect", f"{label(t)} idle CPU %"]
    grows = []
    for n in counts:
        g = [str(n)]
        for t in targets:
            r = next((x for x in rows if x["target"] == t and int(x["clients"]) == n), None)
            if r is None:
                g += ["-"] * 4
                continue
            rss1 = num(r["rss1_kb"])
            g += ["-" if rss1 is None else f"{rss1 / 1024:.1f}", r["kb_per_client"], r["connect_cpu_s"],
                  r["hold_cpu_pct"]]
        grows.append(g)
    text += "\nGrowth with the number of idle clients:\n\n" + md_table(gh, grows)
    if a.markdown:
        with open(a.markdown, "w") as fh:
            fh.write(text)


# ---- instructions (instructions.sh) --------------------------------------------------------------

def cmd_instructions(a):
    rows = read_tsv(a.results)
    header = ["benchmark", "instructions per op", "elements per op", "instructions per element",
              "ns per op (criterion median)"]
    out = [[r["bench"], r["per_op"], r["elems"], r["per_elem"], r.get("ns_per_op", "-")] for r in rows]
    print("{:<36} {:>12} {:>5} {:>10} {:>10}".format("benchmark", "instr/op", "elems", "instr/elem", "ns/op"))
    for r in out:
        print("{:<36} {:>12} {:>5} {:>10} {:>10}".format(*r))
    tool = rows[0]["tool"] if rows else "?"
    iters = rows[0]["iters"] if rows else "?"
    text = (f"\nInstructions counted by {tool} for N = {iters} and 2N iterations of each operation; per op = "
            "(count(2N) - count(N)) / N, so start-up and set-up cancel out. ns per op: criterion's median on "
            "the same machine at the same time (moves with load; the counts do not).\n\n")
    text += md_table(header, out)
    if a.markdown:
        with open(a.markdown, "w") as fh:
            fh.write(text)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pgbench")
    p.add_argument("results")
    p.add_argument("--targets", required=True)
    p.add_argument("--modes", required=True)
    p.add_argument("--clients", required=True)
    p.add_argument("--markdown")
    p = sub.add_parser("latency")
    p.add_argument("logs", nargs="+", help="NAME=LOG[,LOG...]")
    p.add_argument("--markdown")
    p = sub.add_parser("memory")
    p.add_argument("results")
    p.add_argument("--markdown")
    p = sub.add_parser("instructions")
    p.add_argument("results")
    p.add_argument("--markdown")
    a = ap.parse_args()
    {"pgbench": cmd_pgbench, "latency": cmd_latency, "memory": cmd_memory,
     "instructions": cmd_instructions}[a.cmd](a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
