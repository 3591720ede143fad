"""One scenario's runs in a bench work directory: every round's wrk figures (NAME.sat.I.json,
bench/wrk/report.lua) with the CPU each process spent per request in it (NAME.cpu.I.json,
bench/cpu.py). Shared by model_report.py and features_report.py."""

import glob
import json


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
