"""Merges one scenario's raw outputs from bench/run into bench/results/<scenario>.json.

Usage: collect.py WORK_DIR SCENARIO DESCRIPTION  (prints the JSON)

Every figure is the median of the scenario's runs, with the range (min, max) beside it, and
every run's status mix is kept: a run whose 429s are not expected must be visible as such.
"""

import glob
import json
import os
import re
import statistics
import sys


def load(path):
    with open(path) as f:
        return json.load(f)


def spread(values):
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3),
            "max": round(max(values), 3), "runs": len(values)}


def saturation(paths):
    """wrk runs -> medians with ranges; requests and non-2xx summed over the runs."""
    runs = [load(p) for p in paths]
    runs = [r for r in runs if "rps" in r]
    if not runs:
        return None
    out = {k: spread([r[k] for r in runs]) for k in ("rps", "p50_ms", "p90_ms", "p99_ms", "p999_ms")}
    out["requests"] = sum(r["requests"] for r in runs)
    out["non2xx"] = sum(r["non2xx"] for r in runs)
    out["socket_errors"] = sum(r["socket_errors"] for r in runs)
    out["non2xx_share"] = out["non2xx"] / out["requests"] if out["requests"] else 0
    out["command"] = runs[0].get("command")
    return out


def cpu_per_request(work, name):
    """bench/cpu.py's figures for each saturation run, divided by that run's requests: the µs of
    CPU a request cost each part of the topology (medians and ranges over the runs)."""
    per_run = {}
    for path in glob.glob(os.path.join(work, f"{name}.cpu.[0-9]*.json")):
        sat_path = path.replace(".cpu.", ".sat.")
        if not os.path.exists(sat_path):
            continue
        cpu, sat = load(path), load(sat_path)
        if not sat.get("requests"):
            continue
        us = lambda seconds: seconds * 1e6 / sat["requests"]
        figures = {role: us(s) for role, s in cpu["roles"].items()}
        figures["parts"] = sum(figures.values())
        figures["client"] = us(cpu["client"])
        figures["machine"] = us(cpu["machine"])
        for k, v in figures.items():
            per_run.setdefault(k, []).append(v)
    return {k: spread(v) for k, v in per_run.items()}


def oha_run(d):
    p = d.get("latencyPercentiles") or {}
    ms = lambda k: p[k] * 1000 if p.get(k) is not None else None
    errors = dict(d.get("errorDistribution") or {})
    # The deadline aborts requests still in flight when the run ends; those are not errors.
    errors.pop("aborted due to deadline", None)
    return {"rps": (d.get("summary") or {}).get("requestsPerSec"), "p50_ms": ms("p50"),
            "p90_ms": ms("p90"), "p99_ms": ms("p99"), "p999_ms": ms("p99.9"),
            "errors": sum(errors.values()), "statuses": d.get("statusCodeDistribution") or {}}


def fixed_rates(work, name):
    by_rate = {}
    for path in glob.glob(os.path.join(work, f"{name}.q*.json")):
        m = re.search(r"\.q(\d+)\.(\d+)\.json$", path)
        if m:
            by_rate.setdefault(int(m.group(1)), []).append(path)
    out = []
    for rate, paths in sorted(by_rate.items()):
        docs = [load(p) for p in sorted(paths)]
        runs = [oha_run(d) for d in docs if "summary" in d]
        if not runs:
            continue
        statuses = {}
        for r in runs:
            for code, n in r["statuses"].items():
                statuses[code] = statuses.get(code, 0) + n
        total = sum(statuses.values())
        entry = {"rate": rate, **{k: spread([r[k] for r in runs]) for k in ("rps", "p50_ms", "p90_ms", "p99_ms", "p999_ms")},
                 "errors": sum(r["errors"] for r in runs), "statuses": statuses,
                 "share_429": statuses.get("429", 0) / total if total else 0,
                 "command": docs[0].get("command")}
        out.append(entry)
    return out


def scaling(work):
    out = {"concurrency": {}, "limits": {}}
    for name in ("sluice-redis-many", "nginx-proxy"):
        for c in (1, 8, 64, 256):
            s = saturation(sorted(glob.glob(os.path.join(work, f"{name}.c{c}.sat.*.json"))))
            if s:
                out["concurrency"].setdefault(name, {})[str(c)] = s
    one = saturation(sorted(glob.glob(os.path.join(work, "sluice-redis-many.sat.*.json"))))
    if one:
        out["limits"]["1"] = one
    for n in (2, 4):
        s = saturation(sorted(glob.glob(os.path.join(work, f"limits{n}.sat.*.json"))))
        if s:
            out["limits"][str(n)] = s
    callers = os.path.join(work, "callers.json")
    if os.path.exists(callers):
        out["callers"] = load(callers)["samples"]
    return out


def main():
    work, name, description = sys.argv[1], sys.argv[2], sys.argv[3]
    env = load(os.path.join(work, "env.json"))
    out = {"scenario": name, "description": description, **env}
    if name == "scaling":
        out["data"] = scaling(work)
        print(json.dumps(out, indent=1))
        return
    paths = sorted(glob.glob(os.path.join(work, f"{name}.sat.[0-9]*.json")))
    single = os.path.join(work, f"{name}.sat.json")
    sat = saturation(paths or ([single] if os.path.exists(single) else []))
    if sat:
        out["saturation"] = sat
        cpu = cpu_per_request(work, name)
        if cpu:
            out["saturation"]["cpu_us_per_request"] = cpu
    rates = fixed_rates(work, name)
    if rates:
        out["fixed_rate"] = rates
    extra = os.path.join(work, f"{name}.json")
    if os.path.exists(extra):
        out["data"] = load(extra)
    print(json.dumps(out, indent=1))


main()
