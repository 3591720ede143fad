#!/usr/bin/env bash
# bench/model.sh [--quick]: what the limit model costs, each figure a ratio measured in one run.
#
# - sluice's own cost: pingora-bare (a Pingora proxy that only forwards, same version, profile,
#   allocator and worker layout: examples/pingora_bare.rs) against sluice passing through and
#   limiting in memory (targets: 0.95x and 0.9x of the floor);
# - the plain per-caller limit on Redis against the build before the limit model
#   ($SLUICE_PREVIOUS, default 1e74c3c; built once into target/previous): target 0.97x;
# - per: global on one Redis (a hot key; sliding window and sliding log) and on a three-master
#   Redis Cluster; an in-flight limit (acquire and release per request); a route with four
#   limits of mixed kinds and scopes;
# - lease renewal: Redis calls and CPU while 1,000 slots are held;
# - a flood of fresh callers against the memory store at its default bound (1,000,000), with a
#   window longer than the flood: req/s while the store fills and once it is full.
# Every saturation run is wrk -c64 with CPU per request of each process (bench/cpu.py), taken in
# rounds (run 1 of every scenario, then run 2, ...). Writes bench/results/model.json and
# bench/MODEL.md. All on 127.0.0.1; every load loop is bounded in time.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
. scripts/lib.sh

MODE=full
[ "${1:-}" = "--quick" ] && MODE=quick
if [ "$MODE" = quick ]; then
    SAT_S=2; TRIALS=1; FLOOD_S=6; HOLD_S=4
else
    SAT_S=6; TRIALS=5; FLOOD_S=70; HOLD_S=12
fi
CONNS=64
USERS=100000
PREVIOUS=${SLUICE_PREVIOUS:-1e74c3c}

RESULTS=$REPO/bench/results
WORK=$RESULTS/run-model
rm -rf "$WORK"
mkdir -p "$WORK"

P_UP=19500 P_BARE=19501 P_PASS=19502 P_MEM=19503 P_REDIS=19504 P_PREV=19505 P_GLOBAL=19506
P_GLOG=19507 P_GCL=19508 P_CC=19509 P_MIX=19510 P_FLOOD=19511
R_REDIS=19520 R_PREV=19521 R_GLOBAL=19522 R_GLOG=19523 R_CC=19524 R_MIX=19525
CL1=19560 CL2=19561 CL3=19562
ADMIN_BASE=19530

ensure_packages wrk:wrk redis-server:redis-server redis-cli:redis-tools python3:python3 git:git
build_release
cargo build --release --example pingora_bare >&2
BIN=$(release_dir "$REPO")

# The build before the limit model, once per revision.
PREV_DIR=$REPO/target/previous
if [ "$(cat "$PREV_DIR/REV" 2>/dev/null)" != "$PREVIOUS" ] || [ ! -x "$PREV_DIR/sluice" ]; then
    echo "bench: building sluice at $PREVIOUS (the previous code) into target/previous" >&2
    rm -rf "$PREV_DIR/src"
    mkdir -p "$PREV_DIR"
    git worktree add --detach "$PREV_DIR/src" "$PREVIOUS" >&2
    (cd "$PREV_DIR/src" && CARGO_TARGET_DIR="$PREV_DIR/target" cargo build --release --bin sluice >&2)
    cp "$PREV_DIR/target/release/sluice" "$PREV_DIR/sluice"
    git worktree remove --force "$PREV_DIR/src"
    echo "$PREVIOUS" >"$PREV_DIR/REV"
fi

PIDS=()
cleanup() {
    # SIGINT: stock Pingora (the floor) answers SIGTERM with a graceful shutdown that keeps it,
    # and its port, for minutes; SIGINT is its fast shutdown (sluice and Redis take either).
    for pid in "${PIDS[@]}"; do kill -INT "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT
for port in $P_UP $P_BARE $P_PASS $P_MEM $P_REDIS $P_PREV $P_GLOBAL $P_GLOG $P_GCL $P_CC $P_MIX \
    $P_FLOOD $R_REDIS $R_PREV $R_GLOBAL $R_GLOG $R_CC $R_MIX $CL1 $CL2 $CL3; do
    port_answers "$port" && { echo "bench: port $port is in use; stop what uses it" >&2; exit 1; }
done
start() { # start NAME CMD...: a background process, logging to $WORK/NAME.log; its pid in $LAST
    local name=$1
    shift
    "$@" >"$WORK/$name.log" 2>&1 &
    LAST=$!
    PIDS+=("$LAST")
}
wait_port() {
    for _ in $(seq 150); do port_answers "$1" && return 0; sleep 0.1; done
    echo "bench: nothing answers on port $1; logs in $WORK" >&2
    exit 1
}
redis() { # redis NAME PORT [ARGS...]
    local name=$1 port=$2
    shift 2
    start "$name" redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no "$@"
    declare -g "PID_$name=$LAST"
}

start upstream "$BIN/upstream-demo" --listen 127.0.0.1:$P_UP
UP_PID=$LAST
for r in "rd_redis $R_REDIS" "rd_prev $R_PREV" "rd_global $R_GLOBAL" "rd_glog $R_GLOG" \
    "rd_cc $R_CC" "rd_mix $R_MIX"; do
    redis $r
done
for port in $CL1 $CL2 $CL3; do
    redis "rd_cl$port" "$port" --cluster-enabled yes --cluster-config-file "$WORK/nodes-$port.conf" \
        --dbfilename "dump-$port.rdb"
done
for port in $R_REDIS $R_PREV $R_GLOBAL $R_GLOG $R_CC $R_MIX $CL1 $CL2 $CL3 $P_UP; do wait_port "$port"; done
redis-cli --cluster create 127.0.0.1:$CL1 127.0.0.1:$CL2 127.0.0.1:$CL3 --cluster-replicas 0 \
    --cluster-yes >"$WORK/cluster-create.log" 2>&1
for _ in $(seq 100); do
    redis-cli -p $CL1 cluster info | grep -q "cluster_state:ok" && break
    sleep 0.1
done
CL_PIDS="$(eval echo "\$PID_rd_cl$CL1,\$PID_rd_cl$CL2,\$PID_rd_cl$CL3")"

ADMIN=$ADMIN_BASE
sidecar() { # sidecar NAME PORT BINARY STORE LIMITS: a sidecar with one route /api/ and its limits
    local name=$1 port=$2 bin=$3 store=$4 limits=$5
    ADMIN=$((ADMIN + 1))
    cat >"$WORK/$name.yaml" <<YAML
server: { listen: "127.0.0.1:$port", admin_listen: "127.0.0.1:$ADMIN", threads: 2, instance: $name }
upstream: { addrs: ["127.0.0.1:$P_UP"] }
$store
routes:
  - name: api
    match: { path_prefix: /api/ }
    limits: $limits
YAML
    start "$name" "$bin" --config "$WORK/$name.yaml"
    declare -g "PID_$name=$LAST" "ADMIN_$name=$ADMIN"
}
on() { echo "store: { backend: redis, url: \"redis://127.0.0.1:$1\" }"; }
PER_CALLER="[{ requests: 100, window: 60s }]"
start bare "$BIN/examples/pingora_bare" 127.0.0.1:$P_BARE 127.0.0.1:$P_UP 2
PID_bare=$LAST
sidecar pass $P_PASS "$BIN/sluice" "" "[]"
sidecar memory $P_MEM "$BIN/sluice" "store: { backend: memory }" "$PER_CALLER"
sidecar redis $P_REDIS "$BIN/sluice" "$(on $R_REDIS)" "$PER_CALLER"
sidecar previous $P_PREV "$PREV_DIR/sluice" "$(on $R_PREV)" "$PER_CALLER"
sidecar global $P_GLOBAL "$BIN/sluice" "$(on $R_GLOBAL)" \
    "[{ requests: 10000000, window: 1s, per: global, algorithm: sliding_window }]"
sidecar glog $P_GLOG "$BIN/sluice" "$(on $R_GLOG)" "[{ requests: 10000000, window: 1s, per: global }]"
sidecar gcluster $P_GCL "$BIN/sluice" \
    "store: { backend: redis_cluster, nodes: [\"redis://127.0.0.1:$CL1\"] }" \
    "[{ requests: 10000000, window: 1s, per: global, algorithm: sliding_window }]"
sidecar concurrency $P_CC "$BIN/sluice" "$(on $R_CC)" "[{ concurrency: 1000 }]"
sidecar mixed $P_MIX "$BIN/sluice" "$(on $R_MIX)" "[{ requests: 100, window: 60s }, \
{ requests: 10000000, window: 1s, per: global, algorithm: sliding_window }, \
{ requests: 10000000, window: 1s, per: client_ip, algorithm: gcra }, { concurrency: 1000 }]"
sidecar flood $P_FLOOD "$BIN/sluice" "store: { backend: memory }" "[{ requests: 100, window: 10m }]"
for p in $P_BARE $P_PASS $P_MEM $P_REDIS $P_PREV $P_GLOBAL $P_GLOG $P_GCL $P_CC $P_MIX $P_FLOOD; do
    wait_port "$p"
done
python3 bench/env.py "$BIN" "-" >"$WORK/env.json"

saturate() { # saturate NAME PORT ROLES TRIAL
    local cmd="wrk -t2 -c$CONNS -d${SAT_S}s -s bench/wrk/report.lua http://127.0.0.1:$2"
    WRK_OUT="$WORK/$1.sat.$4.json" WRK_PATH=/api/data USERS=$USERS \
        python3 bench/cpu.py "$WORK/$1.cpu.$4.json" $3 -- $cmd >"$WORK/$1.wrk.log" 2>&1
}
# NAME|PORT|ROLES (cpu.py): the scenarios, measured in rounds.
SCENARIOS=(
    "pingora-bare|$P_BARE|proxy=$PID_bare upstream=$UP_PID"
    "sluice-passthrough|$P_PASS|proxy=$PID_pass upstream=$UP_PID"
    "sluice-memory|$P_MEM|proxy=$PID_memory upstream=$UP_PID"
    "previous-redis|$P_PREV|proxy=$PID_previous upstream=$UP_PID redis=$PID_rd_prev"
    "sluice-redis|$P_REDIS|proxy=$PID_redis upstream=$UP_PID redis=$PID_rd_redis"
    "global-window|$P_GLOBAL|proxy=$PID_global upstream=$UP_PID redis=$PID_rd_global"
    "global-log|$P_GLOG|proxy=$PID_glog upstream=$UP_PID redis=$PID_rd_glog"
    "global-cluster|$P_GCL|proxy=$PID_gcluster upstream=$UP_PID redis=$CL_PIDS"
    "concurrency|$P_CC|proxy=$PID_concurrency upstream=$UP_PID redis=$PID_rd_cc"
    "mixed-four|$P_MIX|proxy=$PID_mixed upstream=$UP_PID redis=$PID_rd_mix"
)
for i in $(seq $TRIALS); do
    for s in "${SCENARIOS[@]}"; do
        IFS='|' read -r name port roles <<<"$s"
        echo "bench: $name, run $i of $TRIALS" >&2
        saturate "$name" "$port" "$roles" "$i"
    done
done

echo "bench: lease renewal (1,000 slots held ${HOLD_S}s)" >&2
redis-cli -p $R_CC config resetstat >/dev/null
python3 - "$P_CC" "$HOLD_S" "$R_CC" "$PID_rd_cc" >"$WORK/renewal.json" <<'PY'
import asyncio, json, subprocess, sys, time
port, hold_s, redis_port, redis_pid = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
def cpu(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100.0
def script_calls():  # FCALL (Redis 7 and later) or EVALSHA (the fallback)
    info = subprocess.check_output(["redis-cli", "-p", redis_port, "info", "commandstats"]).decode()
    calls, usec = 0, 0.0
    for line in info.splitlines():
        if line.startswith(("cmdstat_fcall:", "cmdstat_evalsha:")):
            parts = dict(p.split("=") for p in line.split(":", 1)[1].split(","))
            calls, usec = calls + int(parts["calls"]), usec + float(parts["usec"])
    return calls, usec
async def hold(i):
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(f"GET /api/slow?user_id=h{i} HTTP/1.1\r\nHost: x\r\nx-hold-ms: {(hold_s + 4) * 1000}\r\nConnection: close\r\n\r\n".encode())
    await w.drain()
    await r.read()
    w.close()
async def main():
    tasks = [asyncio.create_task(hold(i)) for i in range(1000)]
    await asyncio.sleep(2)
    calls0, usec0 = script_calls()
    cpu0, t0 = cpu(redis_pid), time.time()
    await asyncio.sleep(hold_s)
    calls1, usec1 = script_calls()
    cpu1, t1 = cpu(redis_pid), time.time()
    for t in tasks:
        t.cancel()
    print(json.dumps({"slots": 1000, "seconds": round(t1 - t0, 2), "script_calls": calls1 - calls0,
                      "script_usec": round(usec1 - usec0), "redis_cpu_s": round(cpu1 - cpu0, 3)}))
asyncio.run(main())
PY

echo "bench: flood of fresh callers (memory store, ${FLOOD_S}s)" >&2
WRK_OUT="$WORK/flood.sat.json" WRK_PATH=/api/data timeout $((FLOOD_S + 30)) \
    python3 bench/flood.py "$P_FLOOD" "$ADMIN_flood" "$FLOOD_S" "$PID_flood" >"$WORK/flood.json"

python3 bench/model_report.py "$WORK" "$RESULTS/model.json" bench/MODEL.md "$MODE" "$PREVIOUS"
echo "bench: wrote bench/MODEL.md and bench/results/model.json" >&2
