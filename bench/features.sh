#!/usr/bin/env bash
# bench/features.sh [--quick]: what the identity and outcome features cost, each figure a ratio
# to its group's baseline measured in the same run.
#   identity (memory store; baseline: a plain x-user-id header): the same hashed (sha256,
#     hmac_sha256); jwt identities, HS256 (secret), ES256 and EdDSA (a JWKS), every request a
#     caller's token (examples/bench_tokens.rs makes 10,000 callers' header lines and keys);
#   settlement (one Redis; baseline: one per-caller limit): the same limit counting by outcome
#     (count: { status: [401] }, every 200 gives its unit back: one more store call), and a
#     cost_from route (every response settles its reported tokens: one more store call); a
#     calendar quota instead of the limit; the limit with a throttle that never holds.
# One sidecar per scenario (2 workers), limits that never refuse, wrk -c64, CPU per request of
# each process (bench/cpu.py), in rounds. Writes bench/results/features.json and
# bench/FEATURES.md. Loopback only; every run bounded in time.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
. scripts/lib.sh
MODE=full
[ "${1:-}" = "--quick" ] && MODE=quick
if [ "$MODE" = quick ]; then SAT_S=2; TRIALS=1; else SAT_S=6; TRIALS=3; fi
CALLERS=10000
ensure_packages wrk:wrk python3:python3 redis-server:redis-server openssl:openssl
build_release
cargo build --release --example bench_tokens >&2
BIN=$(release_dir "$REPO")
RESULTS=$REPO/bench/results
WORK=$RESULTS/run-features
rm -rf "$WORK"
mkdir -p "$WORK"
"$BIN/examples/bench_tokens" "$WORK" "$CALLERS"
openssl rand -hex 32 >"$WORK/identity.key"
# The settlement rows' callers, each response reporting 1-500 tokens.
python3 -c "
import random
random.seed(3)
for i in range($CALLERS):
    print(f'x-usage-tokens: {random.randint(1, 500)}')
" >"$WORK/usage.txt"

PIDS=()
trap 'for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done' EXIT
P_UP=19600 P_REDIS=19650
start() { local name=$1; shift; "$@" >"$WORK/$name.log" 2>&1 & LAST=$!; PIDS+=("$LAST"); }
wait_port() {
    for _ in $(seq 150); do port_answers "$1" && return 0; sleep 0.1; done
    echo "bench: nothing answers on port $1; logs in $WORK" >&2; exit 1
}
for p in $P_UP $P_REDIS; do port_answers $p && { echo "bench: port $p is in use" >&2; exit 1; }; done
start upstream "$BIN/upstream-demo" --listen 127.0.0.1:$P_UP
UP_PID=$LAST
start redis redis-server --port $P_REDIS --bind 127.0.0.1 --save "" --appendonly no
REDIS_PID=$LAST
PORT=$P_UP
MEMORY="store: { backend: memory }"
REDIS="store: { backend: redis, url: \"redis://127.0.0.1:$P_REDIS\" }"
NEVER="{ requests: 100000000, window: 60s, algorithm: sliding_window }"
sidecar() { # sidecar NAME BODY_YAML (store, identity, and route extras after `limits:`)
    PORT=$((PORT + 2))
    port_answers $PORT && { echo "bench: port $PORT is in use" >&2; exit 1; }
    cat >"$WORK/$1.yaml" <<YAML
server: { listen: "127.0.0.1:$PORT", admin_listen: "127.0.0.1:$((PORT + 1))", threads: 2, instance: $1 }
upstream: { addrs: ["127.0.0.1:$P_UP"] }
$2
YAML
    start "$1" "$BIN/sluice" --config "$WORK/$1.yaml"
    declare -g "PID_$1=$LAST" "PORT_$1=$PORT"
}
route() { # route LIMIT [EXTRA]: the one route, its limit and any extra keys
    printf 'routes:\n  - name: api\n    match: { path_prefix: /api/ }\n    limits: [%s]\n%s' "$1" "${2:-}"
}
HEADER="identity: [{ header: x-user-id }]"
sidecar header "$MEMORY
$HEADER
identity_hash: none
$(route "$NEVER")"
sidecar sha256 "$MEMORY
$HEADER
identity_hash: sha256
$(route "$NEVER")"
sidecar hmac "$MEMORY
$HEADER
identity_hash: hmac_sha256
identity_hash_key_file: \"$WORK/identity.key\"
$(route "$NEVER")"
sidecar hs256 "$MEMORY
identity: [{ jwt: { claim: sub, secret_file: \"$WORK/hs.key\" } }]
$(route "$NEVER")"
sidecar es256 "$MEMORY
identity: [{ jwt: { claim: sub, keys_file: \"$WORK/jwks.json\" } }]
$(route "$NEVER")"
sidecar eddsa "$MEMORY
identity: [{ jwt: { claim: sub, keys_file: \"$WORK/jwks.json\" } }]
$(route "$NEVER")"
sidecar plain "$REDIS
$(route "$NEVER")"
sidecar outcome "$REDIS
$(route "{ requests: 100000000, window: 60s, algorithm: sliding_window, count: { status: [401] } }")"
sidecar cost "$REDIS
$(route "$NEVER" "    cost_from: { response_header: x-usage-tokens }
")"
sidecar quota "$REDIS
$(route "{ requests: 100000000, period: month, timezone: Europe/Berlin }")"
sidecar throttle "$REDIS
$(route "$NEVER" "    throttle: { max_delay: 2s }
")"
NAMES="header sha256 hmac hs256 es256 eddsa plain outcome cost quota throttle"
for n in $P_UP $P_REDIS; do wait_port "$n"; done
for n in $NAMES; do wait_port "$(eval echo "\$PORT_$n")"; done
python3 bench/env.py "$BIN" "-" >"$WORK/env.json"

# NAME|HEADERS FILE|ROLES: the scenarios, measured in rounds.
SCENARIOS=()
for n in header sha256 hmac; do SCENARIOS+=("$n|header.txt|"); done
for n in hs256 es256 eddsa; do SCENARIOS+=("$n|$n.txt|"); done
SCENARIOS+=("plain|usage.txt|redis=$REDIS_PID" "outcome|usage.txt|redis=$REDIS_PID"
    "cost|usage.txt|redis=$REDIS_PID" "quota|usage.txt|redis=$REDIS_PID"
    "throttle|usage.txt|redis=$REDIS_PID")
for i in $(seq $TRIALS); do
    for s in "${SCENARIOS[@]}"; do
        IFS='|' read -r name file roles <<<"$s"
        echo "bench: $name, run $i of $TRIALS" >&2
        port=$(eval echo "\$PORT_$name") pid=$(eval echo "\$PID_$name")
        # The settlement rows name callers by the query (USERS), the identity rows by header.
        users=0
        [ -n "$roles" ] && users=$CALLERS
        WRK_OUT="$WORK/$name.sat.$i.json" WRK_PATH=/api/data HEADERS_FILE="$WORK/$file" USERS=$users \
            python3 bench/cpu.py "$WORK/$name.cpu.$i.json" proxy="$pid" upstream="$UP_PID" $roles -- \
            wrk -t2 -c64 -d${SAT_S}s -s bench/wrk/report.lua "http://127.0.0.1:$port" \
            >"$WORK/$name.wrk.log" 2>&1
    done
done
python3 bench/features_report.py "$WORK" "$RESULTS/features.json" bench/FEATURES.md "$MODE"
