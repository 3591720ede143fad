"""Writes bench/RESULTS.md, bench/chart.svg and bench/scaling.svg from bench/results/*.json.

Usage: report.py RESULTS_DIR MODE COMMAND
Ratios compare scenarios measured in the same run (the machine is shared and absolute numbers
drift between runs). Every figure is a median of the scenario's runs with its range.
bench/optimisations.md, written by hand, is appended as it is.
"""

import datetime
import html
import json
import math
import os
import sys

ORDER = ["direct", "nginx-proxy", "nginx-limit-req", "haproxy-proxy", "haproxy-limit",
         "sluice-passthrough", "sluice-redis-many", "sluice-redis-down", "sluice-redis-hot",
         "sluice-memory", "cluster", "nginx-cluster", "seed-design"]
EXPECT_429 = {"sluice-redis-hot"}


def load_all(results):
    out = {}
    for name in ORDER + ["accuracy", "memory", "metrics-cost", "scaling"]:
        path = os.path.join(results, f"{name}.json")
        if os.path.exists(path):
            with open(path) as f:
                out[name] = json.load(f)
    return out


def med(x):
    return x["median"] if isinstance(x, dict) else x


def sat(r, key="rps"):
    s = (r or {}).get("saturation") or {}
    return med(s.get(key))


def at_rate(r, rate):
    return next((x for x in (r or {}).get("fixed_rate", []) if x["rate"] == rate), {})


def p99_at(r, rate):
    """The median P99 (ms) of a scenario at a fixed rate, or None."""
    return med(at_rate(r, rate).get("p99_ms"))


def fmt(v, digits=2):
    if v is None:
        return "–"
    return f"{v:,.{digits}f}" if isinstance(v, float) else f"{v:,}"


def rng(x, digits=0):
    """median [min–max]"""
    if not isinstance(x, dict):
        return fmt(x, digits)
    if x["runs"] == 1:
        return fmt(x["median"], digits)
    return f"{fmt(x['median'], digits)} [{fmt(x['min'], digits)}–{fmt(x['max'], digits)}]"


def ratio(a, b):
    return f"{a / b:.2f}×" if a and b else "–"


def status_mix(name, r):
    s = r.get("saturation") or {}
    share = s.get("non2xx_share", 0)
    text = f"{100 * share:.2f} % non-2xx"
    if name not in EXPECT_429 and share > 0.01:
        text += " ⚠ **not all admitted**"
    for q in r.get("fixed_rate", []):
        if name not in EXPECT_429 and q.get("share_429", 0) > 0.01:
            text += f" ⚠ @{q['rate']}/s {100 * q['share_429']:.1f} % 429"
    return text


def table(res):
    direct, nginx = sat(res.get("direct")), sat(res.get("nginx-proxy"))
    lines = [
        "| scenario | conns | saturation req/s, median [range] | vs direct | vs nginx-proxy | P50 / P99 ms | status mix | "
        "@1000/s P50 / P99 ms | @2000/s P50 / P99 ms | errors |",
        "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for name in ORDER:
        r = res.get(name)
        if not r or not r.get("saturation"):
            continue
        s = r["saturation"]
        conns = (s.get("command") or "").split("-c")[1].split()[0] if "-c" in (s.get("command") or "") else "?"
        q = lambda rate: (f"{fmt(med(at_rate(r, rate).get('p50_ms')))} / {fmt(med(at_rate(r, rate).get('p99_ms')))}"
                          if at_rate(r, rate) else "–")
        errors = sum(x.get("errors", 0) for x in r.get("fixed_rate", [])) + s.get("socket_errors", 0)
        lines.append(
            f"| {name} | {conns} | {rng(s['rps'])} | {ratio(sat(r), direct)} | {ratio(sat(r), nginx)} | "
            f"{fmt(sat(r, 'p50_ms'))} / {rng(s['p99_ms'], 2)} | {status_mix(name, r)} | {q(1000)} | {q(2000)} | {errors} |")
    return "\n".join(lines)


def verdict(ok):
    return "**met**" if ok else "**not met**"


def side_by_side(res):
    seed, cl, ng = res.get("seed-design"), res.get("cluster"), res.get("nginx-cluster")
    if not cl:
        return "_(the cluster scenario did not run)_"
    rows = ["| | seed-design (replaced) | sluice cluster | nginx-cluster (ceiling) | cluster ÷ seed | cluster ÷ nginx-cluster | nginx-cluster ÷ seed |",
            "|---|---:|---:|---:|---:|---:|---:|"]

    def vs_seed(x, a, higher_better):
        if not (x and a):
            return "–"
        return ratio(x, a) if higher_better else f"{a / x:.1f}× lower"

    def row(label, get, higher_better):
        a, b, c = get(seed), get(cl), get(ng)
        rows.append(f"| {label} | {fmt(a)} | {fmt(b)} | {fmt(c)} | {vs_seed(b, a, higher_better)} | {ratio(b, c)} | "
                    f"{vs_seed(c, a, higher_better)} |")

    row("saturation req/s (100 conns)", lambda r: sat(r), True)
    row("P50 ms at saturation", lambda r: sat(r, "p50_ms"), False)
    row("P99 ms at saturation", lambda r: sat(r, "p99_ms"), False)
    for rate in (1000, 2000):
        row(f"P99 ms at a fixed {rate:,}/s", lambda r, rate=rate: p99_at(r, rate), False)
    return "\n".join(rows)


def targets(res):
    g = lambda n, k="rps": sat(res.get(n), k)
    rows = ["| target | measured (same run) | |", "|---|---|---|"]
    c, n = g("cluster"), g("nginx-cluster")
    if c and n:
        cp, np_ = g("cluster", "p99_ms"), g("nginx-cluster", "p99_ms")
        rows.append(f"| cluster ≥ 0.8 × nginx-cluster throughput, P99 ≤ 1.5 × its P99 (100 conns) | {c:,.0f} vs {n:,.0f} req/s "
                    f"({c / n:.2f}×); P99 {cp:.2f} vs {np_:.2f} ms ({cp / np_:.2f}×) | {verdict(c >= 0.8 * n and cp <= 1.5 * np_)} |")
    cq, sq, nq = (p99_at(res.get(name), 2000) for name in ("cluster", "seed-design", "nginx-cluster"))
    # What the same comparison gives for nginx-cluster, which limits nothing: the most any
    # three-hop topology reaches against seed-design on this machine.
    ceiling = lambda text: f"; nginx-cluster, no limiting at all: {text}" if text else ""
    if cq and sq:
        rows.append(f"| cluster P99 at 2,000/s ≤ 1/10 of seed-design's | {cq:.2f} vs {sq:.2f} ms ({sq / cq:.1f}× lower"
                    f"{ceiling(nq and f'{sq / nq:.1f}× lower')}) | {verdict(cq * 10 <= sq)} |")
    s_ = g("seed-design")
    if c and s_:
        rows.append(f"| cluster ≥ 8 × seed-design throughput | {c:,.0f} vs {s_:,.0f} req/s ({c / s_:.1f}×"
                    f"{ceiling(n and f'{n / s_:.1f}×')}) | {verdict(c >= 8 * s_)} |")
    p, ng = g("sluice-passthrough"), g("nginx-proxy")
    if p and ng:
        rows.append(f"| sluice-passthrough ≥ nginx-proxy | {p:,.0f} vs {ng:,.0f} req/s ({p / ng:.2f}×) | {verdict(p >= ng)} |")
    m, h = g("sluice-memory"), g("haproxy-limit")
    if m and h:
        rows.append(f"| sluice-memory ≥ haproxy-limit | {m:,.0f} vs {h:,.0f} req/s ({m / h:.2f}×) | {verdict(m >= h)} |")
    rm = g("sluice-redis-many")
    if rm and p:
        rows.append(f"| sluice-redis-many ≥ 0.8 × sluice-passthrough | {rm:,.0f} vs {p:,.0f} req/s ({rm / p:.2f}×) | {verdict(rm >= 0.8 * p)} |")
    d = g("sluice-redis-down")
    if d and rm:
        # Latency is compared at equal load (the fixed rates): at saturation each runs at its
        # own throughput, and a P99 there says more about the queue than about the request.
        pairs = [(q, p99_at(res.get("sluice-redis-down"), q), p99_at(res.get("sluice-redis-many"), q))
                 for q in (1000, 2000)]
        pairs = [(q, a, b) for q, a, b in pairs if a and b]
        at = "; ".join(f"P99 at {q:,}/s {a:.2f} vs {b:.2f} ms" for q, a, b in pairs)
        ok = d >= 0.95 * rm and all(a <= 1.1 * b for _, a, b in pairs)
        rows.append(f"| Redis down (on_error: allow): no slower than Redis up | {d:,.0f} vs {rm:,.0f} req/s ({d / rm:.2f}×)"
                    f"{'; ' + at if at else ''} | {verdict(ok)} |")
    a = (res.get("accuracy") or {}).get("data")
    if a:
        counts = [t["admitted"] for t in a["trials"]]
        rows.append(f"| accuracy: exactly 100 of 1,000 every trial | admitted {counts} | {verdict(a['all_exact'])} |")
    mem = (res.get("memory") or {}).get("data")
    if mem:
        growth = mem["rss_last_kib"] - mem["rss_first_kib"]
        rows.append(f"| sidecar RSS flat over {mem['seconds']} s, 100,000 users | after warm-up {mem['rss_first_kib']:,} KiB, "
                    f"at the end {mem['rss_last_kib']:,} KiB (growth {growth:+,} KiB) | {verdict(growth <= max(2048, mem['rss_first_kib'] // 10))} |")
    callers = ((res.get("scaling") or {}).get("data") or {}).get("callers")
    if callers and len(callers) > 1:
        first, last = callers[1], callers[-1]
        rows.append(f"| sidecar RSS flat from {first['callers']:,} to {last['callers']:,} distinct callers (Redis store) | "
                    f"{first['rss_kib']:,} → {last['rss_kib']:,} KiB | {verdict(last['rss_kib'] - first['rss_kib'] <= 4096)} |")
    mc = res.get("metrics-cost")
    if mc:
        rows.append(f"| counting (metrics) costs the request path < 1 % | {mc['metrics_instructions_per_request']:.0f} of "
                    f"{mc['instructions_per_request']:,} instructions per request ({100 * mc['metrics_share']:.3f} %, callgrind) | "
                    f"{verdict(mc['metrics_share'] < 0.01)} |")
    return "\n".join(rows)


ROLES = [("balancer", "balancer (nginx)"), ("proxy", "proxy hop(s)"), ("redis", "Redis"),
         ("upstream", "upstream-demo"), ("parts", "all parts"), ("client", "load generator (wrk)"),
         ("machine", "whole machine")]


def cpu_figures(r):
    return ((r or {}).get("saturation") or {}).get("cpu_us_per_request") or {}


def cpu(r, role):
    return med(cpu_figures(r).get(role))


def cpu_section(res):
    """µs of CPU per request for each part (bench/cpu.py), and what they say the machine allows."""
    names = [n for n in ORDER if cpu(res.get(n), "machine")]
    if not names:
        return "_(no CPU figures in this run)_"
    rows = ["| scenario | " + " | ".join(label for _, label in ROLES) + " |",
            "|---|" + "---:|" * len(ROLES)]
    for n in names:
        cells = [rng(cpu_figures(res.get(n)).get(role), 1) for role, _ in ROLES]
        rows.append(f"| {n} | " + " | ".join(cells) + " |")
    out = ["CPU time (user + system, every thread) each process spent during the saturation runs, "
           "divided by the requests served: µs per request, median [range] of the runs. Unlike "
           "req/s these figures barely depend on how busy the shared machine was, and with every "
           "core busy, throughput is about cores ÷ CPU per request.", "", "\n".join(rows)]
    cl, ng = res.get("cluster"), res.get("nginx-cluster")
    if cpu(cl, "machine") and cpu(ng, "machine"):
        cm, nm, cr = cpu(cl, "machine"), cpu(ng, "machine"), cpu(cl, "redis") or 0
        cp, np_ = cpu(cl, "proxy"), cpu(ng, "proxy")
        best = nm / (nm + cr)
        out += ["", f"**What this says about `cluster ≥ 0.8 × nginx-cluster`.** A request through the "
                f"sluice cluster cost the machine {cm:.0f} µs of CPU against {nm:.0f} µs through the "
                f"nginx topology, a CPU ratio of {nm / cm:.2f} (the measured throughput ratio is "
                f"{sat(cl) / sat(ng):.2f}). The three sidecars together spent {cp:.0f} µs per request "
                f"against the three nginx hops' {np_:.0f}, and Redis {cr:.0f} µs, which nginx-cluster "
                f"does not spend at all. Even a sidecar hop as cheap as an nginx hop, with one Redis "
                f"decision per request, would cost the machine about {nm + cr:.0f} µs per request: "
                f"at most **{best:.2f} ×** nginx-cluster's throughput on this machine, where Redis, "
                f"the hops, the balancer, the upstream and the load generator share the same cores."]
    pp, npx = cpu(res.get("sluice-passthrough"), "proxy"), cpu(res.get("nginx-proxy"), "proxy")
    if pp and npx:
        out += ["", f"One proxy: `sluice-passthrough` spent {pp:.1f} µs per request against "
                f"`nginx-proxy`'s {npx:.1f} ({npx / pp:.2f}×): the same system calls per request "
                f"(bench/optimisations.md), the rest is Pingora's user-space work."]
    return "\n".join(out)


def scaling_section(res):
    d = (res.get("scaling") or {}).get("data")
    if not d:
        return "_(full mode only)_"
    lines = ["Throughput and latency against concurrency (wrk, medians):", "",
             "| connections | sluice-redis-many req/s | P50 / P99 ms | nginx-proxy req/s | P50 / P99 ms |", "|---:|---:|---:|---:|---:|"]
    conc = d.get("concurrency", {})
    for c in ("1", "8", "64", "256"):
        a, b = conc.get("sluice-redis-many", {}).get(c), conc.get("nginx-proxy", {}).get(c)
        cell = lambda s: (f"{rng(s['rps'])} | {fmt(med(s['p50_ms']))} / {fmt(med(s['p99_ms']))}" if s else "– | –")
        lines.append(f"| {c} | {cell(a)} | {cell(b)} |")
    lines += ["", "Throughput against the number of limits on the route (sluice-redis-many, 64 connections):", "",
              "| limits | req/s | P99 ms |", "|---:|---:|---:|"]
    for n in ("1", "2", "4"):
        s = d.get("limits", {}).get(n)
        if s:
            lines.append(f"| {n} | {rng(s['rps'])} | {fmt(med(s['p99_ms']))} |")
    callers = d.get("callers")
    if callers:
        lines += ["", "Sidecar RSS and Redis memory against distinct callers (every request a new caller, limit 100 per 60 s):", "",
                  "| distinct callers | sidecar RSS KiB | Redis used_memory | per caller |", "|---:|---:|---:|---:|"]
        for s in callers:
            per = f"{s['redis_used_memory'] / s['callers']:.0f} B" if s["callers"] else "–"
            lines.append(f"| {s['callers']:,} | {s['rss_kib']:,} | {s['redis_used_memory']:,} | {per} |")
    lines += ["", "![scaling](scaling.svg)"]
    return "\n".join(lines)


def accuracy_section(res):
    a = (res.get("accuracy") or {}).get("data")
    if not a:
        return ""
    rows = ["| trial | admitted | statuses | errors | all decided in ms | p50 ms | /stats used (3 sidecars) |", "|---:|---:|---|---:|---:|---:|---|"]
    for i, t in enumerate(a["trials"]):
        rows.append(f"| {i + 1} | {t['admitted']} | {t['statuses']} | {t['errors']} | {t['decide_all_ms']} | {t['p50_ms']} | {t['stats_used']} |")
    return "\n".join(rows)


def memory_section(res):
    mem = (res.get("memory") or {}).get("data")
    if not mem:
        return "_(full mode only)_"
    r = mem["redis"]
    series = ", ".join(f"{s['t_s']:.0f}s: {s['rss_kib'] // 1024} MiB" for s in mem["rss_samples"][:: max(1, len(mem["rss_samples"]) // 12)])
    return (f"Sidecar RSS during {mem['seconds']} s of saturation with 100,000 users ({series}).\n\n"
            f"Redis after the run: {r['callers']:,} caller keys, used_memory {r['used_memory']:,} B, "
            f"**{r['bytes_per_caller']} B per active caller** (used_memory / keys). `MEMORY USAGE` over "
            f"{r['sampled_keys']} sampled keys: {r['memory_usage_per_key']} B per key holding "
            f"{r['entries_per_key']} entries on average ({r['bytes_per_entry']} B per entry).")


def svg(parts, w, h):
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif">'
            f'<rect width="100%" height="100%" fill="white"/>{"".join(parts)}</svg>\n')


def chart(res, path):
    names = [n for n in ORDER if n in res and sat(res[n])]
    if not names:
        return
    w, bar_h, left, top = 900, 24, 190, 40
    peak = max(sat(res[n]) for n in names)
    parts = ['<text x="10" y="24" font-size="16" font-weight="bold">Saturation throughput (req/s, median of the runs, same run)</text>']
    for i, n in enumerate(names):
        y = top + i * (bar_h + 6)
        s = res[n]["saturation"]["rps"]
        v = med(s)
        bw = (w - left - 150) * v / peak
        color = "#d9822b" if n.startswith("sluice") or n == "cluster" else "#5c7080"
        parts.append(f'<text x="{left - 8}" y="{y + 17}" font-size="13" text-anchor="end">{html.escape(n)}</text>')
        parts.append(f'<rect x="{left}" y="{y}" width="{bw:.1f}" height="{bar_h}" fill="{color}"/>')
        if isinstance(s, dict) and s["runs"] > 1:
            x0, x1 = left + (w - left - 150) * s["min"] / peak, left + (w - left - 150) * s["max"] / peak
            parts.append(f'<line x1="{x0:.1f}" x2="{x1:.1f}" y1="{y + bar_h / 2}" y2="{y + bar_h / 2}" stroke="black"/>')
        parts.append(f'<text x="{left + bw + 6:.1f}" y="{y + 17}" font-size="13">{v:,.0f}</text>')
    h1 = top + len(names) * (bar_h + 6) + 30
    pcts = [("p50_ms", "P50"), ("p90_ms", "P90"), ("p99_ms", "P99"), ("p999_ms", "P99.9")]
    rows = [(n, at_rate(res[n], 1000)) for n in ORDER if n in res and at_rate(res[n], 1000)]
    y0, ph = h1 + 30, 260
    parts.append(f'<text x="10" y="{y0 - 6}" font-size="16" font-weight="bold">Latency at a fixed 1,000 req/s (oha, latency-corrected), ms, log scale</text>')
    vals = [med(q.get(k)) or 0.05 for _, q in rows for k, _ in pcts]
    lo, hi = 0.05, max(vals + [1]) * 1.5
    ly = lambda v: y0 + 20 + ph - (math.log10(max(v, lo)) - math.log10(lo)) / (math.log10(hi) - math.log10(lo)) * ph
    for tick in [0.1, 0.3, 1, 3, 10, 30, 100, 300, 1000]:
        if lo <= tick <= hi:
            parts.append(f'<line x1="{left}" x2="{w - 20}" y1="{ly(tick):.1f}" y2="{ly(tick):.1f}" stroke="#ddd"/>')
            parts.append(f'<text x="{left - 8}" y="{ly(tick) + 4:.1f}" font-size="11" text-anchor="end">{tick}</text>')
    colors = ["#2b95d6", "#15b371", "#d9822b", "#db3737"]
    gw = (w - left - 40) / max(1, len(rows))
    for i, (n, q) in enumerate(rows):
        x = left + i * gw + 6
        for j, (k, _) in enumerate(pcts):
            v = med(q.get(k))
            if v is None:
                continue
            bx = x + j * (gw - 12) / 4
            parts.append(f'<rect x="{bx:.1f}" y="{ly(v):.1f}" width="{(gw - 12) / 4 - 2:.1f}" height="{y0 + 20 + ph - ly(v):.1f}" fill="{colors[j]}"/>')
        parts.append(f'<text x="{x + (gw - 12) / 2:.1f}" y="{y0 + ph + 34 + (i % 2) * 12}" font-size="10" text-anchor="middle">{html.escape(n)}</text>')
    for j, (_, label) in enumerate(pcts):
        parts.append(f'<rect x="{left + j * 80}" y="{y0 + ph + 58}" width="12" height="12" fill="{colors[j]}"/>'
                     f'<text x="{left + j * 80 + 16}" y="{y0 + ph + 69}" font-size="12">{label}</text>')
    with open(path, "w") as f:
        f.write(svg(parts, w, y0 + ph + 80))


def line_chart(parts, x0, y0, w, h, title, series, xlabels, ylabel):
    """series: [(name, color, [values or None])] over the points of xlabels."""
    parts.append(f'<text x="{x0}" y="{y0 - 8}" font-size="14" font-weight="bold">{html.escape(title)}</text>')
    vals = [v for _, _, vs in series for v in vs if v is not None]
    if not vals:
        return
    peak = max(vals) * 1.1
    px = lambda i: x0 + 40 + i * (w - 60) / max(1, len(xlabels) - 1)
    py = lambda v: y0 + h - v / peak * h
    parts.append(f'<line x1="{x0 + 40}" x2="{x0 + w - 20}" y1="{y0 + h}" y2="{y0 + h}" stroke="#999"/>')
    parts.append(f'<text x="{x0}" y="{y0 + 10}" font-size="10">{html.escape(ylabel)} (max {peak / 1.1:,.0f})</text>')
    for i, label in enumerate(xlabels):
        parts.append(f'<text x="{px(i):.1f}" y="{y0 + h + 14}" font-size="10" text-anchor="middle">{html.escape(label)}</text>')
    for k, (name, color, vs) in enumerate(series):
        pts = [(px(i), py(v)) for i, v in enumerate(vs) if v is not None]
        if len(pts) > 1:
            parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{" ".join(f"{x:.1f},{y:.1f}" for x, y in pts)}"/>')
        for x, y in pts:
            parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{color}"/>')
        parts.append(f'<text x="{x0 + 50 + k * 170}" y="{y0 + h + 30}" font-size="11" fill="{color}">{html.escape(name)}</text>')


def scaling_chart(res, path):
    d = (res.get("scaling") or {}).get("data")
    if not d:
        return
    parts = []
    conc = d.get("concurrency", {})
    cs = ["1", "8", "64", "256"]
    get = lambda name, c, k: med((conc.get(name, {}).get(c) or {}).get(k))
    line_chart(parts, 10, 30, 430, 160, "req/s against connections", [
        ("sluice-redis-many", "#d9822b", [get("sluice-redis-many", c, "rps") for c in cs]),
        ("nginx-proxy", "#5c7080", [get("nginx-proxy", c, "rps") for c in cs])], cs, "req/s")
    line_chart(parts, 460, 30, 430, 160, "P99 ms against connections", [
        ("sluice-redis-many", "#d9822b", [get("sluice-redis-many", c, "p99_ms") for c in cs]),
        ("nginx-proxy", "#5c7080", [get("nginx-proxy", c, "p99_ms") for c in cs])], cs, "ms")
    ls = ["1", "2", "4"]
    line_chart(parts, 10, 270, 430, 160, "req/s against limits per route", [
        ("sluice-redis-many", "#d9822b", [med((d.get("limits", {}).get(n) or {}).get("rps")) for n in ls])], ls, "req/s")
    callers = d.get("callers") or []
    labels = [f"{s['callers']:,}" for s in callers]
    line_chart(parts, 460, 270, 430, 160, "memory against distinct callers", [
        ("sidecar RSS MiB", "#d9822b", [s["rss_kib"] / 1024 for s in callers]),
        ("Redis MiB", "#2b95d6", [s["redis_used_memory"] / 2 ** 20 for s in callers])], labels, "MiB")
    with open(path, "w") as f:
        f.write(svg(parts, 900, 480))


def main():
    results, mode, command = sys.argv[1], sys.argv[2], sys.argv[3]
    res = load_all(results)
    any_r = next(iter(res.values()), {})
    machine, versions = any_r.get("machine", {}), any_r.get("versions", {})
    bench_dir = os.path.dirname(os.path.abspath(results))
    chart(res, os.path.join(bench_dir, "chart.svg"))
    scaling_chart(res, os.path.join(bench_dir, "scaling.svg"))
    commands = []
    for n in ORDER:
        r = res.get(n, {})
        if (r.get("saturation") or {}).get("command"):
            commands.append(f"- `{n}`: `{r['saturation']['command']}`")
        for q in r.get("fixed_rate", []):
            commands.append(f"- `{n}` @{q['rate']}/s: `{q['command']}`")
    stamps = [os.path.getmtime(os.path.join(results, f)) for f in os.listdir(results) if f.endswith(".json")]
    finished = datetime.datetime.fromtimestamp(max(stamps), datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC") if stamps else "?"
    notes_path = os.path.join(bench_dir, "optimisations.md")
    notes = open(notes_path).read() if os.path.exists(notes_path) else ""
    text = f"""# sluice benchmark results

Measured by `{command}` ({mode} mode); the run finished {finished}.
Machine: {machine.get('cores')} cores, {machine.get('cpu')}, kernel {machine.get('kernel')}; the load
generator, proxies, upstream and Redis all share these cores, so compare **ratios within this run**,
not absolute numbers across runs.
Versions: {'; '.join(f'{k} `{v}`' for k, v in versions.items())}.

![throughput and latency](chart.svg)

## Scenarios

Saturation: `wrk -t2` for a fixed time (64 connections for one proxy, 100 for the three-instance
topologies), users drawn uniformly from 100,000 (one user in `sluice-redis-hot`). Fixed rates:
`oha -q RATE -c 32 --latency-correction` (latency counted from when each request was due, so a
stall is not hidden by coordinated omission), users `u00000`-`u99999`, uniform. Every figure is
the median of the runs, with the range in brackets; the runs are taken in rounds (run 1 of every
one-proxy scenario, then run 2 of every one, ...; the three-instance topologies alternate, sluice's
then nginx's, each round), so a slow spell of this shared machine falls on all of them alike.
The status mix is shown for every row; a
"many users" row with more than 1 % non-2xx would be flagged ⚠ (then it is not "all admitted").

{table(res)}

## The replaced design, side by side

`seed-design` is the design sluice replaces, rebuilt natively from its document (bench/seed:
FastAPI with the Redis sorted-set limiter, three uvicorn processes, nginx round robin, Redis),
loaded exactly like `cluster`; `nginx-cluster` is the same topology with nginx in each sidecar's
place (no limiting, no Redis): the ceiling of this machine for three hops.

{side_by_side(res)}

## Targets

{targets(res)}

## Where the CPU goes

{cpu_section(res)}

## Scaling

{scaling_section(res)}

## Accuracy through the cluster

{accuracy_section(res)}

## Memory

{memory_section(res)}

{notes}

## Exact commands

{chr(10).join(commands)}
"""
    with open(os.path.join(bench_dir, "RESULTS.md"), "w") as f:
        f.write(text)


main()
