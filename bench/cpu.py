"""Runs a load command and says how much CPU each part of the topology used meanwhile.

Usage: cpu.py OUT.json ROLE=PIDS [ROLE=PIDS ...] -- COMMAND...

PIDS is a comma-separated list of process ids or @pidfile paths; each process counts with its
children (nginx's workers under its master). Writes {"roles": {ROLE: cpu seconds}, "client":
cpu seconds of COMMAND itself, "machine": busy seconds of all cores, "wall": seconds}. CPU time is
user + system time from /proc (every thread of a process), so it does not depend on how the
scheduler shared the cores, only on the work done; divided by the requests served it is what a
request costs each part.
"""

import json
import os
import resource
import subprocess
import sys
import time

TICK = os.sysconf("SC_CLK_TCK")


def parse_pids(spec):
    pids = []
    for item in spec.split(","):
        item = item.strip()
        if not item:
            continue
        if item.startswith("@"):
            with open(item[1:]) as f:
                item = f.read().strip()
        pids.append(int(item))
    return pids


def children():
    """parent pid -> child pids, from /proc/*/stat."""
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out.setdefault(int(fields[1]), []).append(int(d))
    return out


def with_children(pids, tree):
    seen, todo = set(), list(pids)
    while todo:
        p = todo.pop()
        if p not in seen:
            seen.add(p)
            todo.extend(tree.get(p, []))
    return sorted(seen)


def cpu_seconds(pid):
    """utime + stime of every thread of a process (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def machine_busy():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    return (sum(v[:8]) - idle) / TICK


def main():
    args = sys.argv[1:]
    if "--" not in args or len(args) < 3:
        sys.exit("usage: cpu.py OUT.json ROLE=PIDS [ROLE=PIDS ...] -- COMMAND...")
    cut = args.index("--")
    out, specs, command = args[0], args[1:cut], args[cut + 1:]
    tree = children()
    roles = {}
    for spec in specs:
        name, _, pids = spec.partition("=")
        if not name or not pids:
            sys.exit(f"cpu.py: '{spec}' is not ROLE=PIDS")
        roles[name] = with_children(parse_pids(pids), tree)
    before = {n: sum(cpu_seconds(p) for p in ps) for n, ps in roles.items()}
    m0, t0 = machine_busy(), time.monotonic()
    c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    rc = subprocess.call(command)
    c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    m1, t1 = machine_busy(), time.monotonic()
    after = {n: sum(cpu_seconds(p) for p in ps) for n, ps in roles.items()}
    client = (c1.ru_utime - c0.ru_utime) + (c1.ru_stime - c0.ru_stime)
    doc = {"roles": {n: round(after[n] - before[n], 3) for n in roles},
           "pids": roles, "client": round(client, 3), "machine": round(m1 - m0, 3),
           "wall": round(t1 - t0, 3)}
    with open(out, "w") as f:
        json.dump(doc, f)
    sys.exit(rc)


if __name__ == "__main__":
    main()
