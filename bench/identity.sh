#!/usr/bin/env bash
# bench/identity.sh [--quick]: what naming the caller costs, each figure a ratio in one run.
#   - a plain header identity (the baseline), the same hashed (sha256, hmac_sha256);
#   - jwt identities: HS256 (secret), ES256 and EdDSA (a JWKS), every request a caller's token.
# One sidecar per scenario (memory store, one per-caller sliding_window limit that never
# refuses, 2 workers), 10,000 callers sent at random (bench/examples/bench_tokens.rs makes
# their header lines and keys), wrk -c64, CPU per request of each process (bench/cpu.py), in
# rounds. Writes bench/results/identity.json and bench/IDENTITY.md. Loopback only; bounded.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
. scripts/lib.sh
MODE=full
[ "${1:-}" = "--quick" ] && MODE=quick
if [ "$MODE" = quick ]; then SAT_S=2; TRIALS=1; else SAT_S=6; TRIALS=3; fi
CALLERS=10000
ensure_packages wrk:wrk python3:python3
build_release
cargo build --release --example bench_tokens >&2
BIN=$(release_dir "$REPO")
RESULTS=$REPO/bench/results
WORK=$RESULTS/run-identity
rm -rf "$WORK"
mkdir -p "$WORK"
"$BIN/examples/bench_tokens" "$WORK" "$CALLERS"
openssl rand -hex 32 >"$WORK/identity.key"

PIDS=()
trap 'for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done' EXIT
P_UP=19600
start() { local name=$1; shift; "$@" >"$WORK/$name.log" 2>&1 & LAST=$!; PIDS+=("$LAST"); }
wait_port() {
    for _ in $(seq 150); do port_answers "$1" && return 0; sleep 0.1; done
    echo "bench: nothing answers on port $1; logs in $WORK" >&2; exit 1
}
port_answers $P_UP && { echo "bench: port $P_UP is in use" >&2; exit 1; }
start upstream "$BIN/upstream-demo" --listen 127.0.0.1:$P_UP
UP_PID=$LAST
PORT=$P_UP
sidecar() { # sidecar NAME IDENTITY_YAML
    PORT=$((PORT + 2))
    port_answers $PORT && { echo "bench: port $PORT is in use" >&2; exit 1; }
    cat >"$WORK/$1.yaml" <<YAML
server: { listen: "127.0.0.1:$PORT", admin_listen: "127.0.0.1:$((PORT + 1))", threads: 2, instance: $1 }
upstream: { addrs: ["127.0.0.1:$P_UP"] }
store: { backend: memory }
$2
routes:
  - name: api
    match: { path_prefix: /api/ }
    limits: [{ requests: 100000000, window: 60s, algorithm: sliding_window }]
YAML
    start "$1" "$BIN/sluice" --config "$WORK/$1.yaml"
    declare -g "PID_$1=$LAST" "PORT_$1=$PORT"
}
HEADER="identity: [{ header: x-user-id }]"
sidecar header "$HEADER
identity_hash: none"
sidecar sha256 "$HEADER
identity_hash: sha256"
sidecar hmac "$HEADER
identity_hash: hmac_sha256
identity_hash_key_file: \"$WORK/identity.key\""
sidecar hs256 "identity: [{ jwt: { claim: sub, secret_file: \"$WORK/hs.key\" } }]"
sidecar es256 "identity: [{ jwt: { claim: sub, keys_file: \"$WORK/jwks.json\" } }]"
sidecar eddsa "identity: [{ jwt: { claim: sub, keys_file: \"$WORK/jwks.json\" } }]"
for p in $P_UP $PORT_header $PORT_sha256 $PORT_hmac $PORT_hs256 $PORT_es256 $PORT_eddsa; do wait_port "$p"; done
python3 bench/env.py "$BIN" "-" >"$WORK/env.json"

# NAME|HEADERS FILE: the scenarios, measured in rounds.
SCENARIOS=("header|header.txt" "sha256|header.txt" "hmac|header.txt" "hs256|hs256.txt"
    "es256|es256.txt" "eddsa|eddsa.txt")
for i in $(seq $TRIALS); do
    for s in "${SCENARIOS[@]}"; do
        IFS='|' read -r name file <<<"$s"
        echo "bench: $name, run $i of $TRIALS" >&2
        port=$(eval echo "\$PORT_$name") pid=$(eval echo "\$PID_$name")
        WRK_OUT="$WORK/$name.sat.$i.json" WRK_PATH=/api/data HEADERS_FILE="$WORK/$file" \
            python3 bench/cpu.py "$WORK/$name.cpu.$i.json" proxy="$pid" upstream="$UP_PID" -- \
            wrk -t2 -c64 -d${SAT_S}s -s bench/wrk/report.lua "http://127.0.0.1:$port" \
            >"$WORK/$name.wrk.log" 2>&1
    done
done
python3 - "$WORK" "$RESULTS/identity.json" bench/IDENTITY.md "$MODE" <<'PY'
import glob, json, statistics, sys
work, out_json, out_md, mode = sys.argv[1:5]
NAMES = [
    ("header", "x-user-id header, clear (the baseline)"),
    ("sha256", "the same, identity_hash: sha256"),
    ("hmac", "the same, identity_hash: hmac_sha256"),
    ("hs256", "jwt, HS256 (secret_file)"),
    ("es256", "jwt, ES256 (JWKS, kid)"),
    ("eddsa", "jwt, EdDSA (JWKS, kid)"),
]
def runs(name):
    out = []
    for sat in sorted(glob.glob(f"{work}/{name}.sat.*.json")):
        i = sat.rsplit(".", 2)[1]
        s = json.load(open(sat))
        c = json.load(open(f"{work}/{name}.cpu.{i}.json"))
        n = max(s["requests"], 1)
        out.append({"rps": s["rps"], "p99_ms": s["p99_ms"], "non2xx": s["non2xx"],
                    "proxy_us": c["roles"]["proxy"] / n * 1e6})
    return out
res = {"mode": mode, "env": json.load(open(f"{work}/env.json")), "scenarios": {}}
for name, desc in NAMES:
    r = runs(name)
    res["scenarios"][name] = {
        "what": desc, "runs": r,
        "rps": statistics.median(x["rps"] for x in r),
        "p99_ms": statistics.median(x["p99_ms"] for x in r),
        "proxy_us": statistics.median(x["proxy_us"] for x in r),
        "non2xx": sum(x["non2xx"] for x in r),
    }
base = res["scenarios"]["header"]
for name, s in res["scenarios"].items():
    s["rps_ratio"] = round(s["rps"] / base["rps"], 3)
    s["proxy_us_more"] = round(s["proxy_us"] - base["proxy_us"], 2)
json.dump(res, open(out_json, "w"), indent=2)
with open(out_md, "w") as f:
    f.write("# What naming the caller costs (bench/identity.sh)\n\n")
    f.write(f"Mode {mode}; medians of each scenario's runs, taken in rounds; one sidecar (2 workers, "
            "memory store) per scenario; 10,000 callers at random; wrk -c64.\n\n")
    f.write("| identity | req/s | ratio to the header | p99 ms | sidecar CPU µs/req | more than the header | non-2xx |\n|---|---|---|---|---|---|---|\n")
    for name, desc in NAMES:
        s = res["scenarios"][name]
        f.write(f"| {desc} | {s['rps']:,.0f} | {s['rps_ratio']:.3f} | {s['p99_ms']:.2f} | "
                f"{s['proxy_us']:.1f} | {s['proxy_us_more']:+.1f} | {s['non2xx']} |\n")
print(open(out_md).read())
PY
