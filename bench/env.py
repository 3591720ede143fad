"""The machine and the versions of everything bench/run measures, as JSON (usage: env.py BIN OHA)."""

import json
import subprocess
import sys


def out(cmd):
    try:
        r = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=10)
        return (r.stdout + r.stderr).strip().splitlines()[0]
    except Exception as e:  # a missing tool is reported, not fatal
        return f"unknown ({e})"


print(json.dumps({
    "machine": {"cores": int(out("nproc")), "cpu": out("lscpu | sed -n 's/^Model name: *//p'"),
                "kernel": out("uname -r")},
    "versions": {"sluice": out(f"{sys.argv[1]}/sluice --version"), "nginx": out("nginx -v"),
                 "haproxy": out("haproxy -v"), "redis": out("redis-server --version"),
                 "wrk": out("wrk --version"), "oha": out("oha --version"),
                 "oha_pinned": sys.argv[2]},
}))
