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
  report.py routes ROUTES_TSV --targets ... --modes ... --clients ... --markdown OUT
      where pgshift routed the requests (bench/split.sh)
  report.py micro --dir CRITERION_HOME --markdown OUT NAME ...
      criterion's median ns/op of the named micro-benchmarks (bench/split.sh)
  report.py dualwrite RESULTS_TSV SIDE_TSV --targets ... --modes ... --clients ... --markdown OUT
      TPS, latency percentiles and mirror counters per migration phase (bench/dualwrite.sh)
  report.py verify REPORT_JSON [--note TABLE=TEXT ...] --markdown OUT
      a POST /migration/verify report as a table (bench/dualwrite.sh)
  report.py idle IDLE_TSV --markdown OUT
      active clients' latency with idle clients held, and memory per idle client (bench/idle10k.sh)
"""
import argparse
import csv
import json
import statistics
import sys

LABEL = {"direct": "direct", "pgbouncer": "PgBouncer", "pgshift": "pgshift",
         "pgshift-split": "pgshift split on", "pgshift-nosplit": "pgshift split off",
         "pgshift-off": "pgshift phase off", "pgshift-async": "dual_write async",
         "pgshift-sync": "dual_write sync"}


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


def write_markdown(a, text):
    """Writes TEXT to the --markdown file, if one was given."""
    if a.markdown:
        with open(a.markdown, "w") as fh:
            fh.write(text)


def read_tsv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


# ---- pgbench (run.sh) ----------------------------------------------------------------------------

def cmd_pgbench(a):
    rows = read_tsv(a.results)
    targets, modes, clients = a.targets.split(), a.modes.split(), a.clients.split()
    poolers = [t for t in targets if t != "direct"]
    # (a, b) pairs compared as a / b: --pair A:B, or pgshift against PgBouncer when both ran
    pairs = [tuple(p.split(":", 1)) for p in a.pair] if a.pair else []
    if not a.pair and "pgbouncer" in targets and "pgshift" in targets:
        pairs = [("pgshift", "pgbouncer")]
    pairs = [(x, y) for x, y in pairs if x in targets and y in targets]
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
    f = "{:<16} {:>7} {:<16} {:>6} {:>10} {:>9} {:>12}"
    print(f.format("mode", "clients", "target", "ok", "tps_median", "lat_ms", "cpu_s/10k_tx"))
    for m in modes:
        for c in clients:
            for t in targets:
                x = cells[m, c, t]
                print(f.format(m, c, t, f"{x['ok']}/{x['n']}", fmt(x["tps"], 0), fmt(x["lat"]),
                               "n/a" if t == "direct" else fmt(x["cpu"])))
            for x, y in pairs:
                s, b = cells[m, c, x], cells[m, c, y]
                print(f"{'':16} {'':>7} {label(x)}/{label(y)}: TPS x{ratio(s['tps'], b['tps'])}"
                      + (f", CPU per tx x{ratio(s['cpu'], b['cpu'])}" if y != "direct" else ""))
    for m, c, t, nb, n, st, err in failures:
        print(f"{st}: {t} {m} c{c} ({nb}/{n} runs): {err[:200]}")

    # markdown
    cpu_pairs = [(x, y) for x, y in pairs if x != "direct" and y != "direct"]
    header = ["mode", "clients"] + [f"{label(t)} TPS" for t in targets]
    header += [f"{label(x)} / {label(y)} TPS" for x, y in pairs]
    header += [f"{label(t)} lat ms" for t in targets]
    header += [f"{label(t)} CPU s/10k tx" for t in poolers]
    header += [f"{label(x)} / {label(y)} CPU" for x, y in cpu_pairs]
    out = []
    for m in modes:
        for c in clients:
            x = {t: cells[m, c, t] for t in targets}
            r = [m, c] + [mark(x[t], fmt_tps(x[t]["tps"])) for t in targets]
            r += [ratio(x[p]["tps"], x[q]["tps"]) for p, q in pairs]
            r += [mark(x[t], fmt(x[t]["lat"])) for t in targets]
            r += [mark(x[t], fmt(x[t]["cpu"])) for t in poolers]
            r += [ratio(x[p]["cpu"], x[q]["cpu"]) for p, q in cpu_pairs]
            out.append(r)
    first = f"{label(pairs[0][0])} / {label(pairs[0][1])}" if pairs else "the first / the second"
    text = ("\nMedians over the runs that succeeded. TPS without initial connection time; lat = pgbench's "
            "latency average; CPU = utime+stime of the pooler process per 10,000 transactions "
            f"(/proc/PID/stat before and after each run). A ratio ({first}) below 1 is the first slower (TPS) "
            "or cheaper (CPU).\n\n")
    text += md_table(header, out)
    if failures:
        text += "\nFailed runs (excluded from the medians):\n\n"
        for m, c, t, nb, n, st, err in failures:
            text += f"- {label(t)} {m}, {c} clients: {nb}/{n} runs {st}: `{err[:200]}`\n"
    write_markdown(a, text)


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
    write_markdown(a, text)


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
        gh += [f"{label(t)} RSS MB", f"{label(t)} kB/client", f"{label(t)} CPU s to log all in",
               f"{label(t)} CPU ms per login", f"{label(t)} idle CPU %"]
    grows = []
    for n in counts:
        g = [str(n)]
        for t in targets:
            r = next((x for x in rows if x["target"] == t and int(x["clients"]) == n), None)
            if r is None:
                g += ["-"] * 5
                continue
            rss1 = num(r["rss1_kb"])
            g += ["-" if rss1 is None else f"{rss1 / 1024:.1f}", r["kb_per_client"], r["connect_cpu_s"],
                  r["connect_cpu_ms_each"], r["hold_cpu_pct"]]
        grows.append(g)
    span = f" from {counts[0]:,} to {counts[-1]:,} clients" if len(counts) > 1 else ""
    text += (f"\nHow cost grows{span}: RSS with the clients held (total) and per "
             "client, CPU to log them all in and per login, CPU while they sit idle:\n\n") + md_table(gh, grows)
    write_markdown(a, text)


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
    write_markdown(a, text)


# ---- routes (split.sh) ---------------------------------------------------------------------------

def parse_routed(text):
    out = {}
    for kv in (text or "").split():
        k, _, v = kv.partition("=")
        if num(v) is not None:
            out[k] = int(float(v))
    return out


def backend_order(name):
    if name == "primary":
        return (0, 0)
    digits = "".join(ch for ch in name if ch.isdigit())
    return (1, int(digits) if digits else 0, name)


def cmd_routes(a):
    rows = read_tsv(a.results)
    targets = [t for t in a.targets.split() if any(r["target"] == t for r in rows)]
    names = sorted({k for r in rows for k in parse_routed(r["routed"])}, key=backend_order)
    header = ["mode", "clients", "target", "transactions", "requests routed"] + [f"to {n}" for n in names]
    out = []
    for m in a.modes.split():
        for c in a.clients.split():
            for t in targets:
                rs = [r for r in rows if r["target"] == t and r["mode"] == m and r["clients"] == c]
                if not rs:
                    continue
                tot = {n: 0 for n in names}
                for r in rs:
                    for k, v in parse_routed(r["routed"]).items():
                        tot[k] += v
                n_all = sum(tot.values())
                xacts = sum(int(num(r["xacts"]) or 0) for r in rs)
                out.append([m, c, label(t), str(xacts), str(n_all)] +
                           [f"{tot[n]} ({100 * tot[n] / n_all:.1f}%)" if n_all else "0" for n in names])
                print("  ".join(out[-1]))
    text = ("\nWhere the requests went: the per-backend `routed` counters of pgshift's admin `/stats`, read before "
            "and after every run (the difference), summed over the repeats; transactions = pgbench's count. "
            "With the split on, reads go round-robin to the healthy replicas; off, everything goes to the primary.\n\n")
    text += md_table(header, out)
    write_markdown(a, text)


# ---- criterion medians (split.sh) ------------------------------------------------------------------

MICRO_WHAT = {
    "classify/cold_pgbench_select": "router::classify of pgbench -S's SELECT, no cache",
    "classify/cold_orm_select": "router::classify of an ORM-style join, no cache",
    "classify/cached_pgbench_select": "the same SELECT through ClassifierCache, warm",
    "classify/cached_orm_select": "the ORM join through ClassifierCache, warm",
    "classify/cache_miss_pgbench_simple": "pgbench -S -M simple texts (aid inlined: every one new) through the "
                                          "cache: miss, classify, insert (pgshift's path with the split on)",
}


def cmd_micro(a):
    header = ["benchmark", "ns per op (criterion median)", "what"]
    out = []
    for name in a.names:
        try:
            with open(f"{a.dir}/{name}/new/estimates.json") as f:
                ns = f"{json.load(f)['median']['point_estimate']:.1f}"
        except (OSError, ValueError, KeyError):
            ns = "-"
        out.append([name, ns, MICRO_WHAT.get(name, "")])
        print(f"{name:<40} {ns:>10} ns")
    text = ("\nThe classifier's cost per statement, `cargo bench --bench wire` (benches/wire.rs) on the same "
            "machine right after the runs above: criterion's median (moves with load; "
            "`bench/instructions.sh classify/...` counts instructions, which do not).\n\n") + md_table(header, out)
    write_markdown(a, text)


# ---- dual-write (dualwrite.sh) ---------------------------------------------------------------------

def pooled_latencies(files):
    lat = []
    for path in [p for p in (files or "").split(",") if p]:
        try:
            lat += read_pgbench_log(path)
        except OSError:
            pass
    lat.sort()
    return lat


def ms(us):
    return "-" if us is None else f"{us / 1000:.3f}"


def cmd_dualwrite(a):
    rows = read_tsv(a.results)
    side = read_tsv(a.side)
    targets, modes, clients = a.targets.split(), a.modes.split(), a.clients.split()
    base = a.baseline if a.baseline in targets else None
    header = ["workload", "clients", "pgshift", "ok runs", "TPS", "TPS vs off", "lat avg ms", "p50 ms", "p99 ms",
              "p99 added ms", "CPU s/10k tx", "CPU s/10k tx incl. drain", "mirrored", "failed", "diverged", "queue at end", "drain s"]
    out, failures = [], []
    for m in modes:
        for c in clients:
            cell = {}
            for t in targets:
                rs = [r for r in rows if r["target"] == t and r["mode"] == m and r["clients"] == c]
                ok = [r for r in rs if r["status"] == "ok"]
                ss = [r for r in side if r["target"] == t and r["mode"] == m and r["clients"] == c]
                okreps = {r["rep"] for r in ok}
                lat = pooled_latencies(",".join(r["txlogs"] for r in ss if r["rep"] in okreps))
                cell[t] = dict(n=len(rs), ok=len(ok), tps=med(r["tps"] for r in ok), lat=med(r["lat_ms"] for r in ok),
                               cpu=med(r["cpu_s_per_10k"] for r in ok), p50=pct(lat, 50), p99=pct(lat, 99),
                               cpu2=med(r["cpu_s_per_10k_incl_drain"] for r in ss if r["rep"] in okreps),
                               mirrored=sum(int(num(r["mirrored"]) or 0) for r in ss),
                               failed=sum(int(num(r["failed"]) or 0) for r in ss),
                               diverged=sum(int(num(r["diverged"]) or 0) for r in ss),
                               queue=max((int(num(r["queue_end"]) or 0) for r in ss), default=0),
                               drain=max((num(r["drain_s"]) or 0 for r in ss), default=0), dw=bool(ss) and
                               any(r["mirrored"] not in ("", "-") for r in ss))
                for r in rs:
                    if r["status"] != "ok":
                        failures.append((m, c, t, r["rep"], r["status"], r["error"]))
            for t in targets:
                x = cell[t]
                b = cell.get(base) if base and t != base else None
                added = "-" if not b or x["p99"] is None or b["p99"] is None else f"{(x['p99'] - b['p99']) / 1000:+.3f}"
                mirror = [str(x["mirrored"]), str(x["failed"]), str(x["diverged"]), str(x["queue"]),
                          f"{x['drain']:.1f}"] if x["dw"] else ["-"] * 5
                r = [m, c, label(t), f"{x['ok']}/{x['n']}", fmt_tps(x["tps"]),
                     ratio(x["tps"], b["tps"]) if b else "-", fmt(x["lat"]), ms(x["p50"]), ms(x["p99"]), added,
                     fmt(x["cpu"]), fmt(x["cpu2"])] + mirror
                out.append(r)
                print("  ".join(r))
    text = ("\nMedians of TPS, pgbench's latency average and pgshift's CPU (utime+stime of the process, which also "
            "runs the mirror applier) per 10,000 transactions over the runs that succeeded, during the run and "
            "until the mirror queue was empty ('incl. drain'); p50/p99 from pgbench's "
            "per-transaction logs (-l) of all repeats pooled; 'vs off' / 'added' compare with phase off at the same "
            "point. Mirror counters: the change of `GET /migration`'s mirrored / failed / diverged during the run "
            "and until the queue drained, summed over the repeats; queue at end = queue_depth when pgbench "
            "finished (largest of the repeats), drain s = seconds until it was empty (largest).\n\n")
    text += md_table(header, out)
    if failures:
        text += "\nFailed runs (excluded from the medians):\n\n"
        for m, c, t, rep_, st, err in failures:
            text += f"- {label(t)} {m}, {c} clients, repeat {rep_}: {st} `{err[:200]}`\n"
    write_markdown(a, text)


def cmd_verify(a):
    with open(a.report) as f:
        body = f.read()
    try:
        rep_ = json.loads(body.strip().splitlines()[0]) if body.strip() else {}
    except ValueError:
        rep_ = {"error": body.strip()[:300] or "empty answer"}
    notes = dict(n.split("=", 1) for n in a.note)
    header = ["table", "source rows", "target rows", "compared %", "missing on target", "missing on source",
              "differing", "example keys", "why"]
    out = []
    for t in rep_.get("tables", []):
        diff = t["missing_on_target"] + t["missing_on_source"] + t["differing"] + (t["source_rows"] != t["target_rows"])
        out.append([t["table"], str(t["source_rows"]), str(t["target_rows"]), str(t["sampled_percent"]),
                    str(t["missing_on_target"]), str(t["missing_on_source"]), str(t["differing"]),
                    ", ".join(f"`{e}`" for e in t.get("examples", [])[:3]),
                    notes.get(t["table"], "" if diff == 0 else "unexplained")])
        print("  ".join(out[-1]))
    text = (f"\n`POST /migration/verify` on database `{rep_.get('database', '?')}`: "
            f"{rep_.get('differences', '?')} difference(s) in {float(rep_.get('seconds') or 0):.1f} s"
            + (f"; error: `{rep_['error']}`" if rep_.get("error") else "") + ". Rows are matched by primary key "
            "(whole rows for a table without one) and compared by md5 of the row; a table of at least "
            "`verify_full_below` rows is compared on a sample.\n\n")
    text += md_table(header, out) if out else "(no tables in the report)\n"
    write_markdown(a, text)


# ---- idle + active (idle10k.sh) ----------------------------------------------------------------------

def cmd_idle(a):
    rows = read_tsv(a.results)
    order = []
    for r in rows:
        k = (r["target"], r["phase"])
        if k not in order:
            order.append(k)
    header = ["pooler", "idle clients held", "active clients", "ok runs", "TPS", "p50 ms", "p90 ms", "p99 ms",
              "p99.9 ms", "max ms", "CPU s/10k tx", "RSS before idle kB", "RSS with idle kB", "kB per idle client",
              "RSS after the active run kB", "problem"]
    out = []
    for t, ph in order:
        rs = [r for r in rows if r["target"] == t and r["phase"] == ph]
        ok = [r for r in rs if r["status"] == "ok"]
        lat = pooled_latencies(",".join(r["txlogs"] for r in ok))
        held = med(r["idle_opened"] for r in rs)
        probs = "; ".join(sorted({r["error"] for r in rs if r["error"]}))[:200]
        out.append([label(t), "-" if held is None else f"{held:.0f}", rs[0]["active"], f"{len(ok)}/{len(rs)}",
                    fmt_tps(med(r["tps"] for r in ok)), ms(pct(lat, 50)), ms(pct(lat, 90)), ms(pct(lat, 99)),
                    ms(pct(lat, 99.9)), ms(lat[-1] if lat else None), fmt(med(r["cpu_s_per_10k"] for r in ok)),
                    fmt(med(r["rss0_kb"] for r in rs), 0), fmt(med(r["rss1_kb"] for r in rs), 0),
                    fmt(med(r["kb_per_idle"] for r in rs), 2) if ph != "no-idle" else "-",
                    fmt(med(r["rss2_kb"] for r in rs), 0), probs])
        print("  ".join(out[-1]))
    text = ("\nPer pooler and repeat a fresh process: first (unless BASELINE=0) the active clients alone, then "
            "bench/holdconns.py logs in the idle clients and holds them while the same pgbench runs again. "
            "Latencies of the active clients from pgbench's per-transaction logs (-l), all repeats pooled; TPS and "
            "CPU (utime+stime of the pooler per 10,000 transactions) are medians; kB per idle client = (RSS with "
            "the idle clients - RSS before them) / idle clients opened, medians.\n\n")
    text += md_table(header, out)
    write_markdown(a, text)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pgbench")
    p.add_argument("results")
    p.add_argument("--targets", required=True)
    p.add_argument("--modes", required=True)
    p.add_argument("--clients", required=True)
    p.add_argument("--pair", action="append", default=[], help="A:B, a ratio column A / B (repeatable)")
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
    p = sub.add_parser("routes")
    p.add_argument("results")
    p.add_argument("--targets", required=True)
    p.add_argument("--modes", required=True)
    p.add_argument("--clients", required=True)
    p.add_argument("--markdown")
    p = sub.add_parser("micro")
    p.add_argument("names", nargs="+")
    p.add_argument("--dir", required=True)
    p.add_argument("--markdown")
    p = sub.add_parser("dualwrite")
    p.add_argument("results")
    p.add_argument("side")
    p.add_argument("--targets", required=True)
    p.add_argument("--modes", required=True)
    p.add_argument("--clients", required=True)
    p.add_argument("--baseline", default="pgshift-off")
    p.add_argument("--markdown")
    p = sub.add_parser("verify")
    p.add_argument("report")
    p.add_argument("--note", action="append", default=[], help="TABLE=TEXT (repeatable)")
    p.add_argument("--markdown")
    p = sub.add_parser("idle")
    p.add_argument("results")
    p.add_argument("--markdown")
    a = ap.parse_args()
    {"pgbench": cmd_pgbench, "latency": cmd_latency, "memory": cmd_memory,
     "instructions": cmd_instructions, "routes": cmd_routes, "micro": cmd_micro, "dualwrite": cmd_dualwrite,
     "verify": cmd_verify, "idle": cmd_idle}[a.cmd](a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
