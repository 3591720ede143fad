#!/usr/bin/env bash
# bench/protocols.sh [--quick]: what HTTP/2 and TLS cost per request, and gRPC through sluice
# against direct and against nginx (grpc_pass), each figure a ratio measured in the same run.
#   HTTP (the demo upstream, HTTP/1.1): sluice passing through (a route without limits) and
#     limiting (one per-caller limit on one Redis, never refusing), each driven over HTTP/1.1 in
#     clear (wrk, and h2load --h1), h2c (h2load, prior knowledge), HTTP/1.1 over TLS and HTTP/2
#     over TLS (h2load, ALPN): 64 connections, one request at a time on each, 1,000 callers.
#   gRPC (a grpcio server, the tests' fixture, behind upstream.protocol: h2c): unary calls from
#     h2load (a gRPC request is an HTTP/2 POST; 16 connections, one call at a time on each)
#     straight to the server, through sluice limiting per caller on Redis, and through nginx
#     with grpc_pass. The Python server bounds the calls/s; the proxies' CPU per call is the
#     figure that compares them. Each path is first checked with the real grpcio client.
# CPU per request of each process by bench/cpu.py, in rounds. Writes bench/results/protocols.json
# and bench/PROTOCOLS.md. Loopback only; every run bounded in time.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
. scripts/lib.sh
MODE=full
[ "${1:-}" = "--quick" ] && MODE=quick
if [ "$MODE" = quick ]; then SAT_S=2; TRIALS=1; else SAT_S=6; TRIALS=3; fi
ensure_packages wrk:wrk h2load:nghttp2-client nginx:nginx python3:python3 \
    redis-server:redis-server openssl:openssl
build_release
grpc_venv "$REPO"
BIN=$(release_dir "$REPO")
PY=$REPO/target/grpc-venv/bin/python
RESULTS=$REPO/bench/results
WORK=$RESULTS/run-protocols
rm -rf "$WORK"
mkdir -p "$WORK"

PIDS=()
trap 'for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done' EXIT
P_UP=19700 P_REDIS=19701 P_GRPC=19702 P_NGINX=19703
P_PASS=19710 P_PASS_TLS=19711 P_LIMIT=19712 P_LIMIT_TLS=19713 P_GSL=19714
for p in $P_UP $P_REDIS $P_GRPC $P_NGINX $P_PASS $P_PASS_TLS $P_LIMIT $P_LIMIT_TLS $P_GSL \
    19720 19721 19722; do
    port_answers $p && { echo "bench: port $p is in use" >&2; exit 1; }
done
start() { local name=$1; shift; "$@" >"$WORK/$name.log" 2>&1 & LAST=$!; PIDS+=("$LAST"); }
wait_port() {
    for _ in $(seq 200); do port_answers "$1" && return 0; sleep 0.1; done
    echo "bench: nothing answers on port $1; logs in $WORK" >&2; exit 1
}

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj /CN=127.0.0.1 -addext "subjectAltName=IP:127.0.0.1" \
    -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>/dev/null
# 1,000 callers: h2load takes them in turn from a file of URIs, wrk at random.
for i in $(seq 1000); do echo "/api/data?user_id=u$i"; done >"$WORK/paths.txt"
# A gRPC unary request: an uncompressed message of 5 bytes ("hello").
printf '\x00\x00\x00\x00\x05hello' >"$WORK/call.bin"

start upstream "$BIN/upstream-demo" --listen 127.0.0.1:$P_UP
UP_PID=$LAST
start redis redis-server --port $P_REDIS --bind 127.0.0.1 --save "" --appendonly no
REDIS_PID=$LAST
start grpc "$PY" tests/fixtures/grpc_demo.py serve $P_GRPC
GRPC_PID=$LAST
REDIS_STORE="store: { backend: redis, url: \"redis://127.0.0.1:$P_REDIS\" }"
NEVER="[{ requests: 100000000, window: 60s, algorithm: sliding_window }]"
sidecar() { # sidecar NAME PORT TLS_PORT ADMIN UPSTREAM_YAML BODY_YAML
    local tls=""
    [ -n "$3" ] && tls="
  tls: { listen: \"127.0.0.1:$3\", cert_file: \"$WORK/cert.pem\", key_file: \"$WORK/key.pem\" }"
    cat >"$WORK/$1.yaml" <<YAML
server:
  listen: "127.0.0.1:$2"
  admin_listen: "127.0.0.1:$4"
  threads: 2
  instance: $1$tls
upstream: $5
$6
YAML
    start "$1" "$BIN/sluice" --config "$WORK/$1.yaml"
    declare -g "PID_$1=$LAST"
}
HTTP_UP="{ addrs: [\"127.0.0.1:$P_UP\"] }"
sidecar pass $P_PASS $P_PASS_TLS 19720 "$HTTP_UP" "routes: []"
sidecar limit $P_LIMIT $P_LIMIT_TLS 19721 "$HTTP_UP" "$REDIS_STORE
routes:
  - { name: api, match: { path_prefix: /api/ }, limits: $NEVER }"
sidecar gsluice $P_GSL "" 19722 "{ addrs: [\"127.0.0.1:$P_GRPC\"], protocol: h2c }" \
    "$REDIS_STORE
identity: [{ header: x-user-id }]
routes:
  - { name: echo, match: { path_prefix: /demo.Echo/ }, limits: $NEVER }"
mkdir -p "$WORK/nginx"
cat >"$WORK/nginx.conf" <<CONF
worker_processes 2;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    # HTTP/2 connections serve 1,000 requests by default, then close: h2load's timed clients
    # do not reconnect, so the run would stop early.
    keepalive_requests 100000000;
    client_body_temp_path $WORK/nginx; proxy_temp_path $WORK/nginx;
    fastcgi_temp_path $WORK/nginx; uwsgi_temp_path $WORK/nginx; scgi_temp_path $WORK/nginx;
    upstream grpc_demo { server 127.0.0.1:$P_GRPC; keepalive 32; }
    server {
        listen 127.0.0.1:$P_NGINX http2;
        location / { grpc_pass grpc://grpc_demo; }
    }
}
CONF
start nginx nginx -c "$WORK/nginx.conf" -p "$WORK" -g "daemon off;"
NGINX_PID=$LAST
for p in $P_UP $P_REDIS $P_GRPC $P_NGINX $P_PASS $P_PASS_TLS $P_LIMIT $P_LIMIT_TLS $P_GSL; do
    wait_port $p
done
python3 bench/env.py "$BIN" "-" >"$WORK/env.json"

# The real gRPC client through each path first: every call answered by the server.
for p in $P_GRPC $P_GSL $P_NGINX; do
    "$PY" tests/fixtures/grpc_demo.py whoami $p 3 | grep -q "\[$P_GRPC, $P_GRPC, $P_GRPC\]" ||
        { echo "bench: gRPC calls through port $p fail; logs in $WORK" >&2; exit 1; }
done

# NAME|CLIENT|TARGET|ROLES: CLIENT is wrk, h1, h2c, h1tls, h2tls or grpc.
LIMIT_ROLES="proxy=$PID_limit upstream=$UP_PID redis=$REDIS_PID"
SCENARIOS=(
    "pass-wrk|wrk|$P_PASS|proxy=$PID_pass upstream=$UP_PID"
    "pass-h1|h1|$P_PASS|proxy=$PID_pass upstream=$UP_PID"
    "pass-h2c|h2c|$P_PASS|proxy=$PID_pass upstream=$UP_PID"
    "pass-h1tls|h1tls|$P_PASS_TLS|proxy=$PID_pass upstream=$UP_PID"
    "pass-h2tls|h2tls|$P_PASS_TLS|proxy=$PID_pass upstream=$UP_PID"
    "limit-wrk|wrk|$P_LIMIT|$LIMIT_ROLES"
    "limit-h1|h1|$P_LIMIT|$LIMIT_ROLES"
    "limit-h2c|h2c|$P_LIMIT|$LIMIT_ROLES"
    "limit-h1tls|h1tls|$P_LIMIT_TLS|$LIMIT_ROLES"
    "limit-h2tls|h2tls|$P_LIMIT_TLS|$LIMIT_ROLES"
    "grpc-direct|grpc|$P_GRPC|server=$GRPC_PID"
    "grpc-sluice|grpc|$P_GSL|proxy=$PID_gsluice server=$GRPC_PID redis=$REDIS_PID"
    "grpc-nginx|grpc|$P_NGINX|proxy=$NGINX_PID server=$GRPC_PID"
)
h2load_run() { # h2load_run OUT.json ARGS...: h2load, its figures as JSON
    local out=$1
    shift
    h2load "$@" >"$out.txt" 2>&1
    python3 bench/h2load_json.py "$out.txt" >"$out"
}
for i in $(seq $TRIALS); do
    for s in "${SCENARIOS[@]}"; do
        IFS='|' read -r name client port roles <<<"$s"
        echo "bench: $name, run $i of $TRIALS" >&2
        sat="$WORK/$name.sat.$i.json" cpu="$WORK/$name.cpu.$i.json"
        # shellcheck disable=SC2086 # roles are ROLE=PID words
        case $client in
        wrk)
            WRK_OUT=$sat WRK_PATH=/api/data USERS=1000 python3 bench/cpu.py "$cpu" $roles -- \
                wrk -t2 -c64 -d${SAT_S}s -s bench/wrk/report.lua "http://127.0.0.1:$port" \
                >"$WORK/$name.log" 2>&1 ;;
        grpc)
            python3 bench/cpu.py "$cpu" $roles -- bash -c "$(declare -f h2load_run); cd '$REPO' && \
                h2load_run '$sat' -t1 -c16 -m1 -D$SAT_S -d '$WORK/call.bin' \
                -H 'content-type: application/grpc' -H 'te: trailers' -H 'x-user-id: bench' \
                http://127.0.0.1:$port/demo.Echo/Unary" >"$WORK/$name.log" 2>&1 ;;
        *)
            scheme=http flags=()
            case $client in
            h1) flags=(--h1) ;;
            h1tls) scheme=https flags=(--h1) ;;
            h2tls) scheme=https ;;
            esac
            python3 bench/cpu.py "$cpu" $roles -- bash -c "$(declare -f h2load_run); cd '$REPO' && \
                h2load_run '$sat' -t2 -c64 -m1 -D$SAT_S ${flags[*]} \
                -B $scheme://127.0.0.1:$port -i '$WORK/paths.txt'" >"$WORK/$name.log" 2>&1 ;;
        esac
    done
done
python3 bench/protocols_report.py "$WORK" "$RESULTS/protocols.json" bench/PROTOCOLS.md "$MODE"
