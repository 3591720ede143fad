"""bench/protocols.sh's report: medians of each scenario's runs, ratios to each group's
baseline in the same run, PROTOCOLS.md.

Usage: protocols_report.py WORK OUT.json OUT.md MODE
"""

import glob
import json
import statistics
import sys

import rounds

work, out_json, out_md, mode = sys.argv[1:5]

GROUPS = [
    ("sluice passing through (a route without limits)", "pass-h1", [
        ("pass-wrk", "HTTP/1.1 in clear, wrk"),
        ("pass-h1", "HTTP/1.1 in clear, h2load --h1 (the baseline)"),
        ("pass-h2c", "HTTP/2 in clear (h2c, prior knowledge)"),
        ("pass-h1tls", "HTTP/1.1 over TLS"),
        ("pass-h2tls", "HTTP/2 over TLS (ALPN h2)"),
    ]),
    ("sluice limiting (one per-caller limit, one Redis)", "limit-h1", [
        ("limit-wrk", "HTTP/1.1 in clear, wrk"),
        ("limit-h1", "HTTP/1.1 in clear, h2load --h1 (the baseline)"),
        ("limit-h2c", "HTTP/2 in clear (h2c, prior knowledge)"),
        ("limit-h1tls", "HTTP/1.1 over TLS"),
        ("limit-h2tls", "HTTP/2 over TLS (ALPN h2)"),
    ]),
    ("gRPC unary calls (a grpcio server; h2load, 16 connections)", "grpc-direct", [
        ("grpc-direct", "straight to the server (the baseline)"),
        ("grpc-sluice", "through sluice (h2c upstream, a per-caller limit on Redis)"),
        ("grpc-nginx", "through nginx (grpc_pass, 2 workers, upstream keepalive)"),
    ]),
]


def mean_ms(name):
    values = []
    for sat in sorted(glob.glob(f"{work}/{name}.sat.*.json")):
        v = json.load(open(sat)).get("mean_ms")
        if v is not None:
            values.append(v)
    return statistics.median(values) if values else None


res = {"mode": mode, "env": json.load(open(f"{work}/env.json")), "groups": {}}
with open(out_md, "w") as f:
    f.write("# What HTTP/2, TLS and gRPC cost (bench/protocols.sh)\n\n")
    f.write(f"Mode {mode}; medians of each scenario's runs, taken in rounds; one sidecar (2 "
            "workers) per role; 64 connections with one request at a time on each (h2load -m1: "
            "HTTP/2's multiplexing is not what is measured), 1,000 callers. Ratios are to the "
            "group's baseline in the same run; CPU is user + system time per request of each "
            "process (bench/cpu.py). Latency: P99 from wrk, the mean from h2load (it prints no "
            "percentiles).\n")
    for title, base_name, names in GROUPS:
        group = {}
        for name, desc in names:
            group[name] = rounds.summary(desc, rounds.runs(work, name))
            group[name]["mean_ms"] = mean_ms(name)
        rounds.against(group, base_name)
        res["groups"][title] = group
        cols = [c for c in ("proxy", "upstream", "server", "redis")
                if any(c in s["cpu_us"] for s in group.values())]
        f.write(f"\n## {title}\n\n| scenario | req/s | ratio | latency ms | "
                + " | ".join(f"{c} CPU µs/req" for c in cols)
                + " | proxy µs more than the baseline | non-2xx |\n|---|---|---|---|"
                + "---|" * len(cols) + "---|---|\n")
        for name, desc in names:
            s = group[name]
            lat = (f"P99 {s['p99_ms']:.2f}" if s["p99_ms"] is not None
                   else f"mean {s['mean_ms']:.2f}" if s["mean_ms"] is not None else "")
            cpu = " | ".join(f"{s['cpu_us'][c]:.1f}" if c in s["cpu_us"] else "" for c in cols)
            more = f"{s['proxy_us_more']:+.1f}" if "proxy_us_more" in s else ""
            f.write(f"| {desc} | {s['rps']:,.0f} | {s['rps_ratio']:.3f} | {lat} | {cpu} | "
                    f"{more} | {s['non2xx']} |\n")
json.dump(res, open(out_json, "w"), indent=2)
print(open(out_md).read())
