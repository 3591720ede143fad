"""Writes bench/RESULTS.md and bench/chart.svg from bench/results/*.json.

Usage: report.py RESULTS_DIR MODE COMMAND
Ratios compare scenarios measured in the same run (the machine is shared and absolute numbers
drift between runs). bench/optimisations.md, written by hand, is appended as it is.
"""

import datetime
import html
import json
import os
import sys

ORDER = ["direct", "nginx-proxy", "nginx-limit-req", "sluice-passthrough", "sluice-redis-many",
         "sluice-redis-down", "sluice-redis-hot", "sluice-memory", "cluster"]


def load_all(results):
    out = {}
    for name in ORDER + ["accuracy", "memory", "metrics-cost"]:
        path = os.path.join(results, f"{name}.json")
        if os.path.exists(path):
            with open(path) as f:
                out[name] = json.load(f)
    return out


def sat(r, key="rps"):
    return (r.get("saturation") or {}).get(key)


def at_rate(r, rate):
    return next((x for x in r.get("fixed_rate", []) if x["rate"] == rate), {})


def fmt(v, digits=2):
    return "–" if v is None else f"{v:,.{digits}f}" if isinstance(v, float) else f"{v:,}"


def ratio(a, b):
    return f"{a / b:.2f}×" if a and b else "–"


def table(res):
    direct, nginx = sat(res.get("direct", {})), sat(res.get("nginx-proxy", {}))
    lines = [
        "| scenario | saturation req/s | vs direct | vs nginx-proxy | sat. p50 / p99 ms | non-2xx | "
        "@1000/s p50 / p90 / p99 / p99.9 ms | @2000/s p50 / p90 / p99 / p99.9 ms | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in ORDER:
        r = res.get(name)
        if not r:
            continue
        q1, q2 = at_rate(r, 1000), at_rate(r, 2000)
        pct = lambda q: " / ".join(fmt(q.get(k)) for k in ("p50_ms", "p90_ms", "p99_ms", "p999_ms")) if q else "–"
        errors = sum(q.get("errors", 0) for q in r.get("fixed_rate", [])) + (sat(r, "socket_errors") or 0)
        lines.append(
            f"| {name} | {fmt(sat(r), 0)} | {ratio(sat(r), direct)} | {ratio(sat(r), nginx)} | "
            f"{fmt(sat(r, 'p50_ms'))} / {fmt(sat(r, 'p99_ms'))} | {fmt(sat(r, 'non2xx'))} | {pct(q1)} | {pct(q2)} | {errors} |"
        )
    return "\n".join(lines)


def verdict(ok):
    return "**met**" if ok else "**not met**"


def targets(res):
    g = lambda n, k="rps": sat(res.get(n, {}), k)
    rows = ["| target | measured (same run) | |", "|---|---|---|"]
    p, n = g("sluice-passthrough"), g("nginx-proxy")
    pp99, np99 = g("sluice-passthrough", "p99_ms"), g("nginx-proxy", "p99_ms")
    if p and n:
        rows.append(f"| passthrough ≥ nginx-proxy throughput, P99 no worse | {p:,.0f} vs {n:,.0f} req/s "
                    f"({p / n:.2f}×); P99 {pp99:.2f} vs {np99:.2f} ms | {verdict(p >= n and pp99 <= np99)} |")
    m = g("sluice-redis-many")
    if m and p:
        rows.append(f"| redis-many ≥ 0.7 × passthrough | {m:,.0f} vs {p:,.0f} req/s ({m / p:.2f}×) | {verdict(m >= 0.7 * p)} |")
    d, dp99, mp99 = g("sluice-redis-down"), g("sluice-redis-down", "p99_ms"), g("sluice-redis-many", "p99_ms")
    if d and m:
        down_q, up_q = at_rate(res.get("sluice-redis-down", {}), 1000), at_rate(res.get("sluice-redis-many", {}), 1000)
        fixed = (f"; @1000/s P99 {down_q['p99_ms']:.2f} vs {up_q['p99_ms']:.2f} ms"
                 if down_q.get("p99_ms") and up_q.get("p99_ms") else "")
        rows.append(f"| Redis down (on_error: allow): no slower than Redis up | {d:,.0f} vs {m:,.0f} req/s "
                    f"({d / m:.2f}×); P99 {dp99:.2f} vs {mp99:.2f} ms{fixed} | {verdict(d >= m and dp99 <= mp99 * 1.1)} |")
    h = g("sluice-redis-hot")
    if h and p:
        rows.append(f"| redis-hot ≥ passthrough | {h:,.0f} vs {p:,.0f} req/s ({h / p:.2f}×) | {verdict(h >= p)} |")
    c = at_rate(res.get("cluster", {}), 1000)
    if c:
        ok = c["p99_ms"] < 5 and c["p50_ms"] < 1.5 and c["errors"] == 0
        rows.append(f"| cluster @1000/s: P99 < 5 ms, P50 < 1.5 ms, no errors | P50 {c['p50_ms']:.2f} ms, "
                    f"P99 {c['p99_ms']:.2f} ms, {c['errors']} errors | {verdict(ok)} |")
    mc = res.get("metrics-cost")
    if mc:
        rows.append(f"| counting (metrics) costs the request path < 1 % | {mc['metrics_instructions_per_request']:.0f} of "
                    f"{mc['instructions_per_request']:,} instructions per request ({100 * mc['metrics_share']:.3f} %, callgrind, "
                    f"bench/metrics_cost.sh) | {verdict(mc['metrics_share'] < 0.01)} |")
    a = (res.get("accuracy") or {}).get("data")
    if a:
        counts = [t["admitted"] for t in a["trials"]]
        rows.append(f"| accuracy: exactly 100 of 1,000 every trial | admitted {counts} | {verdict(a['all_exact'])} |")
    mem = (res.get("memory") or {}).get("data")
    if mem:
        growth = mem["rss_last_kib"] - mem["rss_first_kib"]
        rows.append(f"| sidecar RSS flat over {mem['seconds']} s, 100,000 users | after warm-up {mem['rss_first_kib']:,} KiB, "
                    f"at the end {mem['rss_last_kib']:,} KiB, max {mem['rss_max_kib']:,} KiB (growth {growth:+,} KiB) | "
                    f"{verdict(growth <= max(2048, mem['rss_first_kib'] // 10))} |")
    return "\n".join(rows)


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
        return ""
    r = mem["redis"]
    series = ", ".join(f"{s['t_s']:.0f}s: {s['rss_kib'] // 1024} MiB" for s in mem["rss_samples"][:: max(1, len(mem["rss_samples"]) // 12)])
    return (f"Sidecar RSS during {mem['seconds']} s of saturation with 100,000 users ({series}).\n\n"
            f"Redis after the run: {r['callers']:,} caller keys, used_memory {r['used_memory']:,} B, "
            f"**{r['bytes_per_caller']} B per active caller** (used_memory / keys). `MEMORY USAGE` over "
            f"{r['sampled_keys']} sampled keys: {r['memory_usage_per_key']} B per key holding "
            f"{r['entries_per_key']} entries on average ({r['bytes_per_entry']} B per entry).")


def chart(res, path):
    names = [n for n in ORDER if n in res and sat(res[n])]
    if not names:
        return
    w, bar_h, left = 900, 26, 190
    top = 40
    h1 = top + len(names) * (bar_h + 8) + 30
    peak = max(sat(res[n]) for n in names)
    parts = [f'<text x="10" y="24" font-size="16" font-weight="bold">Saturation throughput (req/s, wrk -c64, same run)</text>']
    for i, n in enumerate(names):
        y = top + i * (bar_h + 8)
        v = sat(res[n])
        bw = (w - left - 120) * v / peak
        color = "#d9822b" if n.startswith("sluice") or n == "cluster" else "#5c7080"
        parts.append(f'<text x="{left - 8}" y="{y + 18}" font-size="13" text-anchor="end">{html.escape(n)}</text>')
        parts.append(f'<rect x="{left}" y="{y}" width="{bw:.1f}" height="{bar_h}" fill="{color}"/>')
        parts.append(f'<text x="{left + bw + 6:.1f}" y="{y + 18}" font-size="13">{v:,.0f}</text>')
    # Latency percentiles at 1000 req/s, log scale.
    import math
    pcts = [("p50_ms", "P50"), ("p90_ms", "P90"), ("p99_ms", "P99"), ("p999_ms", "P99.9")]
    rows = [(n, at_rate(res[n], 1000)) for n in ORDER if n in res and at_rate(res[n], 1000)]
    y0 = h1 + 30
    ph = 260
    parts.append(f'<text x="10" y="{y0 - 6}" font-size="16" font-weight="bold">Latency at a fixed 1,000 req/s (oha -q 1000), ms, log scale</text>')
    lo, hi = 0.05, max([max((q.get(k) or 0.05) for k, _ in pcts) for _, q in rows] + [1]) * 1.5
    ly = lambda v: y0 + 20 + ph - (math.log10(max(v, lo)) - math.log10(lo)) / (math.log10(hi) - math.log10(lo)) * ph
    for tick in [0.1, 0.3, 1, 3, 10, 30, 100, 300, 1000]:
        if lo <= tick <= hi:
            parts.append(f'<line x1="{left}" x2="{w - 20}" y1="{ly(tick):.1f}" y2="{ly(tick):.1f}" stroke="#ddd"/>')
            parts.append(f'<text x="{left - 8}" y="{ly(tick) + 4:.1f}" font-size="11" text-anchor="end">{tick}</text>')
    colors = ["#2b95d6", "#15b371", "#d9822b", "#db3737"]
    gw = (w - left - 40) / max(1, len(rows))
    for i, (n, q) in enumerate(rows):
        x = left + i * gw + 6
        for j, (k, label) in enumerate(pcts):
            v = q.get(k)
            if v is None:
                continue
            bx = x + j * (gw - 12) / 4
            parts.append(f'<rect x="{bx:.1f}" y="{ly(v):.1f}" width="{(gw - 12) / 4 - 2:.1f}" height="{y0 + 20 + ph - ly(v):.1f}" fill="{colors[j]}"/>')
        label_y = y0 + ph + 34 + (i % 2) * 12  # alternate rows so long names never overlap
        parts.append(f'<text x="{x + (gw - 12) / 2:.1f}" y="{label_y}" font-size="10" text-anchor="middle">{html.escape(n)}</text>')
    for j, (_, label) in enumerate(pcts):
        parts.append(f'<rect x="{left + j * 80}" y="{y0 + ph + 58}" width="12" height="12" fill="{colors[j]}"/>'
                     f'<text x="{left + j * 80 + 16}" y="{y0 + ph + 69}" font-size="12">{label}</text>')
    height = y0 + ph + 80
    svg = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{height}" font-family="sans-serif">'
           f'<rect width="100%" height="100%" fill="white"/>{"".join(parts)}</svg>\n')
    with open(path, "w") as f:
        f.write(svg)


def main():
    results, mode, command = sys.argv[1], sys.argv[2], sys.argv[3]
    res = load_all(results)
    any_r = next(iter(res.values()), {})
    machine, versions = any_r.get("machine", {}), any_r.get("versions", {})
    bench_dir = os.path.dirname(os.path.abspath(results))
    chart(res, os.path.join(bench_dir, "chart.svg"))
    commands = []
    for n in ORDER:
        r = res.get(n, {})
        if r.get("saturation", {}).get("command"):
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

Saturation: `wrk -t2 -c64` for a fixed time, users drawn at random from 100,000 (one user in
`sluice-redis-hot`). Fixed rate: `oha -q RATE -c 32`, the same users. "non-2xx" at saturation
is 429s where a limit refuses (expected only in `sluice-redis-hot`).

{table(res)}

## Targets

{targets(res)}

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
