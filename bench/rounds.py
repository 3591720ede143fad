"""One scenario's runs in a bench work directory: every round's wrk figures (NAME.sat.I.json,
bench/wrk/report.lua) with the CPU each process spent per request in it (NAME.cpu.I.json,
bench/cpu.py). Shared by model_report.py, features_report.py and protocols_report.py."""

import glob
import json
import statistics


def runs(work, name):
    out = []
    for sat in sorted(glob.glob(f"{work}/{name}.sat.*.json")):
        i = sat.rsplit(".", 2)[1]
        with open(sat) as f:
            s = json.load(f)
        try:
            with open(f"{work}/{name}.cpu.{i}.json") as f:
                c = json.load(f)
        except OSError:
            c = {"roles": {}}
        n = max(s["requests"], 1)
        cpu = {role: secs / n * 1e6 for role, secs in c["roles"].items()}
        out.append({"rps": s["rps"], "p99_ms": s["p99_ms"], "non2xx": s["non2xx"], "cpu_us": cpu})
    return out


def summary(what, r):
    """One scenario's runs `r` as its report row: medians of req/s, P99 (None when the load
    generator gave none), each role's CPU per request, and every non-2xx."""
    roles = sorted({k for x in r for k in x["cpu_us"]})
    p99 = [x["p99_ms"] for x in r if x["p99_ms"] is not None]
    return {
        "what": what, "runs": r,
        "rps": statistics.median(x["rps"] for x in r),
        "p99_ms": statistics.median(p99) if p99 else None,
        "cpu_us": {k: statistics.median(x["cpu_us"][k] for x in r) for k in roles},
        "non2xx": sum(x["non2xx"] for x in r),
    }


def against(group, base_name):
    """Each row's req/s ratio and extra proxy CPU against the group's baseline row."""
    base = group[base_name]
    for s in group.values():
        s["rps_ratio"] = round(s["rps"] / base["rps"], 3)
        if "proxy" in s["cpu_us"] and "proxy" in base["cpu_us"]:
            s["proxy_us_more"] = round(s["cpu_us"]["proxy"] - base["cpu_us"]["proxy"], 2)
    return base
