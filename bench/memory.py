"""Sidecar memory under load: runs a load command, samples the sidecar's RSS every second.

Usage: memory.py PID SECONDS REDIS_PORT -- LOAD_COMMAND...  Prints JSON with the RSS series and,
afterwards, Redis's memory per caller for the sliding log (MEMORY USAGE of sampled keys).
"""

import json
import subprocess
import sys
import time


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return None


def redis(port, *args):
    return subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True, text=True).stdout.strip()


def main():
    pid, seconds, redis_port = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    load = sys.argv[sys.argv.index("--") + 1:]
    samples = []
    proc = subprocess.Popen(load, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    start = time.monotonic()
    while proc.poll() is None and time.monotonic() - start < seconds + 30:
        samples.append({"t_s": round(time.monotonic() - start, 1), "rss_kib": rss_kib(pid)})
        time.sleep(1)
    proc.wait(timeout=60)
    keys = [redis(redis_port, "RANDOMKEY") for _ in range(200)]
    sizes = []
    for k in {k for k in keys if k}:
        usage, card = redis(redis_port, "MEMORY", "USAGE", k), redis(redis_port, "ZCARD", k)
        if usage.isdigit() and card.isdigit() and int(card) > 0:
            sizes.append((int(usage), int(card)))
    info = dict(l.split(":", 1) for l in redis(redis_port, "INFO", "memory").splitlines() if ":" in l)
    dbsize = int(redis(redis_port, "DBSIZE") or 0)
    # After warm-up (the first sixth of the run: pools, caches and buffers fill) the RSS must
    # stay flat: compare the second sixth with the last sixth.
    sixth = max(1, len(samples) // 6)
    first = [s["rss_kib"] for s in samples[sixth: 2 * sixth]] or [samples[0]["rss_kib"]]
    last = [s["rss_kib"] for s in samples[-sixth:]]
    print(json.dumps({
        "seconds": seconds,
        "rss_samples": samples,
        "rss_first_kib": max(first) if first else None,
        "rss_last_kib": max(last) if last else None,
        "rss_max_kib": max(s["rss_kib"] for s in samples) if samples else None,
        "redis": {
            "callers": dbsize,
            "used_memory": int(info.get("used_memory", "0")),
            "bytes_per_caller": round(int(info.get("used_memory", "0")) / dbsize, 1) if dbsize else None,
            "sampled_keys": len(sizes),
            "memory_usage_per_key": round(sum(u for u, _ in sizes) / len(sizes), 1) if sizes else None,
            "entries_per_key": round(sum(c for _, c in sizes) / len(sizes), 2) if sizes else None,
            "bytes_per_entry": round(sum(u for u, _ in sizes) / sum(c for _, c in sizes), 1) if sizes else None,
        },
    }))


main()
