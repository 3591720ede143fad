#!/usr/bin/env bash
# bench/callers_file.sh: what a plans callers file of N callers costs (issue: 1,000,000 must
# load in under 2 s and under 150 MB of RSS).
#   load:  `sluice --check` wall time and peak RSS with the file, less the same config without it
#   held:  RSS of a running sidecar with the file, less one without it (the index it keeps)
# The callers are hashed API keys (64 hex digits, as `identity_hash: sha256` stores them) with a
# tenth listed raw (hashed on load). Writes bench/results/callers-file.json. Loopback only.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
N=${N:-1000000}
BIN=target/release/sluice
[ -x "$BIN" ] || cargo build --release --quiet --bin sluice
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
python3 - "$N" >"$WORK/plans.yaml" <<'PY'
import hashlib, sys
n = int(sys.argv[1])
out = sys.stdout
for i in range(n):
    key = f"sk_live_{i:012d}"
    plan = "pro" if i % 3 else "team"
    if i % 10 == 0:
        out.write(f"{key}: {plan}\n")
    else:
        out.write(f"{hashlib.sha256(key.encode()).hexdigest()}: {plan}\n")
PY
config() { # $1: port, $2: with the callers file (1) or not
    cat <<YAML
server: { listen: "127.0.0.1:$1", admin_listen: "127.0.0.1:$(($1 + 1))", threads: 1 }
upstream: { addrs: ["127.0.0.1:9"] }
identity: [{ api_key: { header: x-api-key } }]
plans:
  free: { limits: [{ requests: 60, window: 60s }] }
  pro: { limits: [{ requests: 6000, window: 60s }] }
  team: { limits: [{ requests: 60000, window: 60s }] }
plan:
  from: [$([ "$2" = 1 ] && echo "{ callers_file: \"$WORK/plans.yaml\" }")]
  default: free
routes: [{ name: api, match: { path_prefix: / }, limits: plan }]
YAML
}
config 19700 1 >"$WORK/with.yaml"
config 19710 0 >"$WORK/without.yaml"
measure() { /usr/bin/time -f "%e %M" "$BIN" --check --config "$1" 2>&1 >/dev/null | tail -1; }
read -r with_s with_kb < <(measure "$WORK/with.yaml")
read -r without_s without_kb < <(measure "$WORK/without.yaml")
rss() { # RSS (KiB) of a sidecar running config $1, once it answers /health
    "$BIN" --config "$1" >/dev/null 2>&1 &
    local pid=$! port=$2
    for _ in $(seq 200); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.05; done
    awk '/VmRSS/ { print $2 }' "/proc/$pid/status"
    kill "$pid"; wait "$pid" 2>/dev/null || true
}
held_with=$(rss "$WORK/with.yaml" 19701)
held_without=$(rss "$WORK/without.yaml" 19711)
bytes=$(stat -c %s "$WORK/plans.yaml")
python3 - "$N" "$bytes" "$with_s" "$with_kb" "$without_s" "$without_kb" "$held_with" "$held_without" <<'PY' | tee bench/results/callers-file.json
import json, sys
n, size, ws, wkb, os_, okb, hw, ho = sys.argv[1:]
print(json.dumps({
    "callers": int(n), "file_bytes": int(size),
    "check_seconds_with": float(ws), "check_seconds_without": float(os_),
    "load_seconds": round(float(ws) - float(os_), 2),
    "check_peak_rss_mib_with": round(int(wkb) / 1024, 1),
    "check_peak_rss_mib_without": round(int(okb) / 1024, 1),
    "load_peak_rss_mib": round((int(wkb) - int(okb)) / 1024, 1),
    "sidecar_rss_mib_with": round(int(hw) / 1024, 1),
    "sidecar_rss_mib_without": round(int(ho) / 1024, 1),
    "held_rss_mib": round((int(hw) - int(ho)) / 1024, 1),
}, indent=2))
PY
