"""Merges one scenario's raw outputs from bench/run into bench/results/<scenario>.json.

Usage: collect.py WORK_DIR SCENARIO DESCRIPTION  (prints the JSON)
"""

import glob
import json
import os
import sys


def load(path):
    with open(path) as f:
        return json.load(f)


def oha_summary(path):
    """The figures of one oha --output-format json run, in milliseconds."""
    d = load(path)
    p = d.get("latencyPercentiles") or {}
    ms = lambda k: round(p[k] * 1000, 3) if p.get(k) is not None else None
    errors = sum((d.get("errorDistribution") or {}).values())
    # The deadline aborts requests still in flight when the run ends; those are not errors.
    errors -= (d.get("errorDistribution") or {}).get("aborted due to deadline", 0)
    statuses = d.get("statusCodeDistribution") or {}
    return {
        "rate": int(os.path.basename(path).split(".q")[1].split(".")[0]),
        "rps": round(d["summary"]["requestsPerSec"], 1),
        "p50_ms": ms("p50"), "p90_ms": ms("p90"), "p99_ms": ms("p99"), "p999_ms": ms("p99.9"),
        "errors": errors,
        "statuses": statuses,
        "command": d.get("command"),
    }


def main():
    work, name, description = sys.argv[1], sys.argv[2], sys.argv[3]
    env = load(os.path.join(work, "env.json"))
    out = {"scenario": name, "description": description, **env}
    sat = os.path.join(work, f"{name}.sat.json")
    if os.path.exists(sat):
        out["saturation"] = load(sat)
    rates = sorted(glob.glob(os.path.join(work, f"{name}.q*.json")), key=lambda p: int(p.split(".q")[1].split(".")[0]))
    if rates:
        out["fixed_rate"] = [oha_summary(p) for p in rates]
    extra = os.path.join(work, f"{name}.json")
    if os.path.exists(extra):
        out["data"] = load(extra)
    print(json.dumps(out, indent=1))


main()
