"""Sidecar RSS and Redis memory against distinct callers: every request a new caller (wrk with
bench/wrk/unique.lua), sampled when Redis holds 10,000, 100,000 and 1,000,000 callers.

Usage: callers.py SIDECAR_PID REDIS_PORT URL  (prints JSON; stops by itself after 1M callers or
150 s, whichever comes first)
"""

import json
import subprocess
import sys
import time

pid, redis_port, url = int(sys.argv[1]), sys.argv[2], sys.argv[3]
MARKS = [10_000, 100_000, 1_000_000]


def rss_kib():
    with open(f"/proc/{pid}/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))


def redis(*args):
    return subprocess.run(["redis-cli", "-p", redis_port, *args], capture_output=True, text=True).stdout


def used_memory():
    return int(next(l.split(":")[1] for l in redis("INFO", "memory").splitlines() if l.startswith("used_memory:")))


samples = [{"callers": 0, "rss_kib": rss_kib(), "redis_used_memory": used_memory()}]
load = subprocess.Popen(["wrk", "-t2", "-c32", "-d150s", "-s", "bench/wrk/unique.lua", url],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
start = time.monotonic()
try:
    marks = list(MARKS)
    while marks and time.monotonic() - start < 150 and load.poll() is None:
        callers = int(redis("DBSIZE").strip() or 0)
        if callers >= marks[0]:
            samples.append({"callers": callers, "rss_kib": rss_kib(), "redis_used_memory": used_memory(),
                            "seconds": round(time.monotonic() - start, 1)})
            marks.pop(0)
        time.sleep(0.2)
finally:
    load.terminate()
    load.wait()
print(json.dumps({"samples": samples}))
