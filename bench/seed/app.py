"""The design sluice replaces, rebuilt from its document (shared/seed): a FastAPI service that
rate-limits with a Redis sorted-set sliding window, three instances behind nginx round robin.

Run by bench/run as the `seed-design` scenario: uvicorn bench.seed.app:app --port 800N.
Same policy as sluice's default: 100 requests per 60 s per user_id on /api/data.
The limiter is the one such services usually write: trim, add, count and expire in one
MULTI/EXEC pipeline, and take the request back out when the count is over the limit.
"""

import os
import time
import uuid

import redis.asyncio as redis
from fastapi import FastAPI, Query
from fastapi.responses import JSONResponse

LIMIT = int(os.environ.get("SEED_LIMIT", "100"))
WINDOW_S = int(os.environ.get("SEED_WINDOW_S", "60"))
app = FastAPI()
store = redis.Redis(host="127.0.0.1", port=int(os.environ.get("SEED_REDIS_PORT", "6379")))


async def allowed(user_id: str) -> tuple[bool, int]:
    key = f"rate_limit:{user_id}"
    now = time.time()
    member = f"{now}:{uuid.uuid4().hex}"
    async with store.pipeline(transaction=True) as pipe:
        pipe.zremrangebyscore(key, 0, now - WINDOW_S)
        pipe.zadd(key, {member: now})
        pipe.zcard(key)
        pipe.expire(key, WINDOW_S)
        _, _, count, _ = await pipe.execute()
    if count > LIMIT:
        await store.zrem(key, member)
        return False, 0
    return True, LIMIT - count


@app.get("/api/data")
async def data(user_id: str = Query(...)):
    ok, remaining = await allowed(user_id)
    headers = {"X-RateLimit-Limit": str(LIMIT), "X-RateLimit-Remaining": str(remaining)}
    if not ok:
        return JSONResponse({"error": "rate_limited"}, status_code=429, headers=headers)
    return JSONResponse(
        {"user_id": user_id, "data": {"items": [1, 2, 3], "message": "Hello from the API"}},
        headers=headers,
    )


@app.get("/health")
async def health():
    await store.ping()
    return {"status": "ok"}
