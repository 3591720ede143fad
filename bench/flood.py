"""A flood of fresh callers against a memory-store sidecar, second by second.

Usage: flood.py PORT ADMIN_PORT SECONDS SIDECAR_PID

Runs wrk with bench/wrk/unique.lua (every request a caller never seen before) for SECONDS and
reads the sidecar's /metrics and RSS every second: requests decided by the store (admitted:
the store still had room) and by on_error (store_error: the store was full at
store.max_callers). Prints JSON: the per-second samples, and req/s while the store filled
against req/s once it was full, so the cost of a full store (a new caller's shard is swept for
expired callers before it is refused) shows beside the cost of an empty one.
"""

import json
import subprocess
import sys
import time
import urllib.request

port, admin, seconds, pid = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]


def counts():
    text = urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith('sluice_requests_total{') and 'route="api"' in line:
            decision = line.split('decision="')[1].split('"')[0]
            out[decision] = float(line.rsplit(" ", 1)[1])
    return out


def rss_mib():
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


cmd = ["wrk", "-t2", "-c64", f"-d{seconds}s", "-s", "bench/wrk/unique.lua", f"http://127.0.0.1:{port}"]
wrk = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
samples = []
last, start = counts(), time.time()
while wrk.poll() is None and time.time() - start < seconds + 5:
    time.sleep(1)
    now = counts()
    samples.append({
        "t": round(time.time() - start, 1),
        "admitted": now.get("admitted", 0) - last.get("admitted", 0),
        "full": now.get("store_error", 0) - last.get("store_error", 0),
        "callers": now.get("admitted", 0),
        "rss_mib": round(rss_mib(), 1),
    })
    last = now
wrk.wait()
# Whole seconds only (the last sample may be cut short by wrk's end).
whole = [s for s in samples[:-1] if s["admitted"] + s["full"] > 0]
filling = [s["admitted"] + s["full"] for s in whole if s["full"] == 0]
full = [s["admitted"] + s["full"] for s in whole if s["admitted"] == 0 and s["full"] > 0]
median = lambda v: sorted(v)[len(v) // 2] if v else None
print(json.dumps({
    "command": " ".join(cmd),
    "seconds": seconds,
    "requests": sum(s["admitted"] + s["full"] for s in samples),
    "callers_held": samples[-1]["callers"] if samples else 0,
    "rps_filling_median": median(filling),
    "rps_full_median": median(full),
    "rss_mib_end": samples[-1]["rss_mib"] if samples else 0,
    "samples": samples,
}))
