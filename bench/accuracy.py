"""Accuracy through the cluster: N trials of 1,000 concurrent requests for a fresh user.

Usage: accuracy.py LB_PORT TRIALS ADMIN_PORTS(comma list). Prints JSON. Every trial opens all
connections first, then sends every request at once, and counts the statuses; the limit is
the shipped policy (100 per 60 s), so exactly 100 must be admitted every time.
"""

import asyncio
import json
import sys
import time
import uuid

CONCURRENT = 1000


async def one(reader, writer, path, start):
    writer.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), timeout=30)
    writer.close()
    return int(data.split(b" ", 2)[1]), time.perf_counter() - start


async def trial(port, user):
    conns = await asyncio.gather(*(asyncio.open_connection("127.0.0.1", port) for _ in range(CONCURRENT)))
    start = time.perf_counter()
    path = f"/api/data?user_id={user}"
    results = await asyncio.gather(*(one(r, w, path, start) for r, w in conns), return_exceptions=True)
    errors = [str(r) for r in results if isinstance(r, Exception)]
    ok = [r for r in results if not isinstance(r, Exception)]
    statuses = {}
    for status, _ in ok:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    latencies = sorted(t for _, t in ok)
    return {
        "user": user,
        "admitted": statuses.get("200", 0),
        "statuses": statuses,
        "errors": len(errors),
        "decide_all_ms": round(latencies[-1] * 1000, 2) if latencies else None,
        "p50_ms": round(latencies[len(latencies) // 2] * 1000, 2) if latencies else None,
    }


async def stats(port, user):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET /stats/{user} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode())
    data = await reader.read()
    writer.close()
    body = json.loads(data.split(b"\r\n\r\n", 1)[1])
    return body["routes"][0]["limits"][0]["used"]


async def main():
    port, trials, admin = int(sys.argv[1]), int(sys.argv[2]), [int(p) for p in sys.argv[3].split(",")]
    run = uuid.uuid4().hex[:8]
    out = []
    for i in range(trials):
        result = await trial(port, f"acc-{run}-{i}")
        result["stats_used"] = [await stats(p, result["user"]) for p in admin]
        out.append(result)
    print(json.dumps({"limit": 100, "concurrent": CONCURRENT, "trials": out,
                      "all_exact": all(t["admitted"] == 100 and t["errors"] == 0 for t in out)}))


asyncio.run(main())
