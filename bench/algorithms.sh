#!/usr/bin/env bash
# bench/algorithms.sh: what each algorithm costs in Redis and how accurate it is.
#   accuracy:   cargo run --release --example accuracy (seeded traces, every decision checked)
#   memory:     MEMORY USAGE of one caller's state after filling a limit of 10, 1,000, 100,000
#   throughput: redis-benchmark running the store's code (FCALL) for 100,000 random callers, on one
#               Redis and on a three-master Redis Cluster, under the same load (-c 50)
# Writes bench/results/algorithms.json and bench/ALGORITHMS.md. Loopback only; bounded runs.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
. scripts/lib.sh
ensure_packages redis-server:redis-server redis-cli:redis-tools redis-benchmark:redis-tools python3:python3
N=${N:-200000}          # script calls per throughput run
P_ONE=19500 P_CL=19510  # one Redis; cluster nodes 19510-19512
WORK=$(mktemp -d)
trap 'for p in $P_ONE 19510 19511 19512; do redis-cli -p $p shutdown nosave >/dev/null 2>&1 || true; done; rm -rf "$WORK"' EXIT
for p in $P_ONE 19510 19511 19512; do port_answers $p && { echo "port $p in use" >&2; exit 1; }; done

echo "algorithms: accuracy (seeded traces)" >&2
cargo run --release --quiet --example accuracy >"$WORK/accuracy.json"

redis-server --port $P_ONE --bind 127.0.0.1 --save "" --appendonly no --daemonize yes --dir "$WORK" >/dev/null
for p in 19510 19511 19512; do
    redis-server --port $p --bind 127.0.0.1 --save "" --appendonly no --daemonize yes --dir "$WORK" \
        --cluster-enabled yes --cluster-config-file "nodes-$p.conf" >/dev/null
done
for p in $P_ONE 19510 19511 19512; do
    for _ in $(seq 50); do [ "$(redis-cli -p $p ping 2>/dev/null)" = PONG ] && break; sleep 0.1; done
done
redis-cli --cluster create 127.0.0.1:19510 127.0.0.1:19511 127.0.0.1:19512 --cluster-yes >/dev/null
for _ in $(seq 100); do redis-cli -p 19510 cluster info | grep -q cluster_state:ok && break; sleep 0.1; done
# The store's code as the sidecars load it (a function library; its name on the first line).
cargo build --release --quiet --example script_source
LIBRARY=$("$(release_dir "$REPO")/examples/script_source" function)
FN=$(head -n 1 <<<"$LIBRARY" | sed 's/^#!lua name=//')
for p in $P_ONE 19510 19511 19512; do redis-cli -p $p FUNCTION LOAD REPLACE "$LIBRARY" >/dev/null; done
# One decision's arguments after its key (limiter/layout.rs, redis/ops.rs): the clock ("0":
# Redis TIME), one operation, OP_CHECK with a member, no request id, cost 1 and one limit.
one() { echo "0 1 1 $1 0 0 1 1"; }

suffix() { case $1 in 1) echo "" ;; 2) echo ":sw" ;; 3) echo ":gcra" ;; esac; }

echo "algorithms: memory per caller" >&2
: >"$WORK/memory.txt"
for algo in 1 2 3; do
    for limit in 10 1000 100000; do
        key="sluice:{mem:a$algo-$limit}:3600000$(suffix $algo)"
        # Fill the limit: one call per request, each with its own member, window 1 h.
        redis-benchmark -p $P_ONE -c 1 -P $((limit < 100 ? limit : 100)) -n $limit -r 1000000000 \
            FCALL "$FN" 1 "$key" $(one "m__rand_int__") $algo $limit 3600000000 $limit 3600000 >/dev/null
        bytes=$(redis-cli -p $P_ONE MEMORY USAGE "$key" SAMPLES 0)
        entries=$(redis-cli -p $P_ONE TYPE "$key" | grep -q zset && redis-cli -p $P_ONE ZCARD "$key" || echo 1)
        echo "$algo $limit $bytes $entries" >>"$WORK/memory.txt"
    done
done

echo "algorithms: throughput ($N calls, 100,000 callers, -c 50)" >&2
: >"$WORK/throughput.txt"
for algo in 1 2 3; do
    redis-cli -p $P_ONE CONFIG RESETSTAT >/dev/null
    one=$(redis-benchmark -p $P_ONE --csv -c 50 -n "$N" -r 100000 \
        FCALL "$FN" 1 "sluice:{api:__rand_int__}:60000$(suffix $algo)" $(one "m__rand_int__") $algo 100 60000000 100 60000 \
        | tail -n 1 | cut -d, -f2 | tr -d '"')
    cluster=$(redis-benchmark --cluster -p 19510 --csv -c 50 -n "$N" -r 100000 \
        FCALL "$FN" 1 "sluice:{tag}:__rand_int__:60000$(suffix $algo)" $(one "m__rand_int__") $algo 100 60000000 100 60000 \
        | tail -n 1 | cut -d, -f2 | tr -d '"')
    # Redis's own CPU per script call (INFO commandstats), which the client's speed does not move.
    usec=$(redis-cli -p $P_ONE INFO commandstats | tr -d '\r' | sed -n 's/^cmdstat_fcall:.*usec_per_call=\([0-9.]*\).*/\1/p')
    # The same decisions 16 to a call, as a sidecar under load sends them, on callers that
    # already have requests in their window (10,000 callers, each decided ~20 times).
    keys="" decisions=""
    for i in $(seq 16); do
        keys="$keys sluice:{b$i:__rand_int__}:60000$(suffix $algo)"
        decisions="$decisions 1 m$i-__rand_int__ 0 0 1 1 $algo 100 60000000 100 60000"
    done
    redis-benchmark -p $P_ONE -c 50 -n $((N / 16)) -r 10000 FCALL "$FN" 16 $keys 0 16 $decisions >/dev/null
    redis-cli -p $P_ONE CONFIG RESETSTAT >/dev/null
    redis-benchmark -p $P_ONE -c 50 -n $((N / 16)) -r 10000 FCALL "$FN" 16 $keys 0 16 $decisions >/dev/null
    batched=$(redis-cli -p $P_ONE INFO commandstats | tr -d '\r' | sed -n 's/^cmdstat_fcall:.*usec_per_call=\([0-9.]*\).*/\1/p')
    batched=$(python3 -c "print(f'{$batched / 16:.2f}')")
    echo "$algo $one $cluster $usec $batched" >>"$WORK/throughput.txt"
done

python3 - "$WORK" "$REPO/bench" "$(nproc)" <<'PY'
import json, sys
work, bench, cores = sys.argv[1], sys.argv[2], int(sys.argv[3])
names = {"1": "sliding_log", "2": "sliding_window", "3": "gcra"}
accuracy = json.load(open(f"{work}/accuracy.json"))
memory = [dict(zip(["algorithm", "limit", "bytes", "entries"], l.split())) for l in open(f"{work}/memory.txt")]
throughput = [dict(zip(["algorithm", "one_redis", "cluster_3_masters", "redis_usec_per_call", "redis_usec_per_decision_16_per_call"], l.split())) for l in open(f"{work}/throughput.txt")]
for m in memory:
    m["algorithm"] = names[m["algorithm"]]
    for k in ("limit", "bytes", "entries"):
        m[k] = int(m[k])
for t in throughput:
    t["algorithm"] = names[t["algorithm"]]
    t["one_redis"], t["cluster_3_masters"] = float(t["one_redis"]), float(t["cluster_3_masters"])
    t["redis_usec_per_call"] = float(t["redis_usec_per_call"])
    t["redis_usec_per_decision_16_per_call"] = float(t["redis_usec_per_decision_16_per_call"])
json.dump({"accuracy": accuracy, "memory": memory, "throughput": throughput, "cores": cores},
          open(f"{bench}/results/algorithms.json", "w"), indent=1)

rows = ["| algorithm | wrong: over / under (steady) | (bursty) | (on/off) | (many callers) | (mixed) | worst caller in any window (limit 100) | bytes per caller at limit 10 / 1,000 / 100,000 | Redis µs per decision: alone / 16 per call | script calls/s, one Redis | 3-master cluster |",
        "|---|---|---|---|---|---|---|---|---:|---:|---:|"]
for name in names.values():
    acc = {a["trace"]: a for a in accuracy if a["algorithm"] == name}
    cell = lambda t: f"{acc[t]['wrong_over_pct']:.2f} % / {acc[t]['wrong_under_pct']:.2f} %"
    worst = max(a["worst_window"] for a in acc.values())
    mem = " / ".join(f"{m['bytes']:,}" for m in memory if m["algorithm"] == name)
    tp = next(t for t in throughput if t["algorithm"] == name)
    rows.append(f"| `{name}` | {cell('steady')} | {cell('bursty')} | {cell('on_off')} | {cell('many_callers')} | {cell('mixed')} | "
                f"{worst} | {mem} | {tp['redis_usec_per_call']:.2f} / {tp['redis_usec_per_decision_16_per_call']:.2f} | {tp['one_redis']:,.0f} | {tp['cluster_3_masters']:,.0f} |")
log = [m for m in memory if m["algorithm"] == "sliding_log"]
per_entry = log[-1]["bytes"] / max(1, log[-1]["entries"])
tp_one = {t["algorithm"]: t["one_redis"] for t in throughput}
text = f"""# Algorithms: accuracy, memory, throughput

Measured by `bench/algorithms.sh` on this {cores}-core machine (Redis, the benchmark client and
the cluster's nodes share the cores).

{chr(10).join(rows)}

- **wrong** is the share of all decisions that the exact rule, applied to what the algorithm
  itself admitted before, would have decided the other way (over: admitted though the caller
  already had the limit in the trailing window; under: refused though it had less). Traces are
  seeded (examples/accuracy.rs): limit 100 per 10 s, 20 windows; steady = 100 callers at 1.2x
  their limit; bursty = bursts of 3x the limit; on/off = 2x the limit for half a window, then
  silence; many callers = 10,000 callers at 1.05x; mixed = nine callers in ten at 0.3x and one
  at 1.5x. Every decision of the sliding log is exact by construction (0 %), in Redis as in
  memory, whichever sidecar makes it.
- **worst caller** is the most any caller got admitted in any sliding window of 10 s.
- **concurrency across sidecars adds no error** to any algorithm: each decision is one atomic
  script call, so three sidecars deciding at once are Redis deciding one after another
  (tests/algorithms.rs: 600 concurrent requests through three sidecars admit exactly 100 with
  `sliding_window` and with `gcra`; tests/limits.rs, tests/cluster.rs and bench/run's accuracy
  trials: exactly 100 of 1,000 with the sliding log).
- **bytes per caller**: `MEMORY USAGE` of one caller's key after admitting the limit (sliding
  log: {per_entry:.0f} B per entry at 100,000 entries).
- **Redis µs per decision**: Redis's own CPU time per script call (`INFO commandstats`
  `usec_per_call`): alone, one decision per call, for a caller's first request in its window
  (100,000 random callers); 16 per call, as a sidecar under load batches them, for callers that
  already have requests in the window (10,000 random callers), per decision.
- **script calls/s**: `redis-benchmark -c 50` running check.lua for 100,000 random callers; on
  two shared cores this is bound by the benchmark client as much as by Redis, so it moves
  between runs more than the µs per decision does.
"""
open(f"{bench}/ALGORITHMS.md", "w").write(text)
print(text)
PY
