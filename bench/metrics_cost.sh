#!/usr/bin/env bash
# bench/metrics_cost.sh OUT.json: what counting costs the request path, in instructions.
# Runs one sidecar (Redis store, one worker) under callgrind twice, for N1 and N2 limited
# requests, and reports the instructions per request of the whole process and of the metrics
# code (prometheus and src/metrics.rs, self cost) from the difference of the two runs, so
# start-up cancels out. Instruction counts do not depend on the machine's load.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
. "$REPO/scripts/lib.sh"
OUT=$1
BIN=$(release_dir "$REPO")
WORK=$(mktemp -d)
P_UP=19150 P_REDIS=19151 P_SC=19152 P_ADMIN=19153
N1=${N1:-200} N2=${N2:-1200}
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
"$BIN/upstream-demo" --listen 127.0.0.1:$P_UP >"$WORK/up.log" 2>&1 &
redis-server --port $P_REDIS --bind 127.0.0.1 --save "" --appendonly no >"$WORK/redis.log" 2>&1 &
cat >"$WORK/s.yaml" <<YAML
server: { listen: "127.0.0.1:$P_SC", admin_listen: "127.0.0.1:$P_ADMIN", threads: 1 }
upstream: { addrs: ["127.0.0.1:$P_UP"] }
store: { backend: redis, url: "redis://127.0.0.1:$P_REDIS", timeout: 5s }
routes: [{ name: api, match: { path_prefix: /api/ }, limits: [{ requests: 100, window: 60s }] }]
YAML
for _ in $(seq 50); do port_answers $P_UP && port_answers $P_REDIS && break; sleep 0.1; done

run() { # run N -> "total_ir metrics_ir"
    valgrind --tool=callgrind --callgrind-out-file="$WORK/cg.$1" "$BIN/sluice" --config "$WORK/s.yaml" \
        >"$WORK/sluice.$1.log" 2>&1 &
    local pid=$!
    for _ in $(seq 300); do port_answers $P_SC && break; sleep 0.1; done
    python3 - "$P_SC" "$1" <<'PY'
import http.client, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
for i in range(n):
    c.request("GET", f"/api/data?user_id=u{i}")
    r = c.getresponse(); r.read()
    assert r.status == 200, r.status
PY
    kill -INT $pid; wait $pid 2>/dev/null || true
    python3 - "$WORK/cg.$1" <<'PY'
import re, subprocess, sys
text = subprocess.run(["callgrind_annotate", "--inclusive=no", "--threshold=100", sys.argv[1]],
                      capture_output=True, text=True).stdout
total = metrics = 0
for line in text.splitlines():
    m = re.match(r"\s*([\d,]+) .*?(\S+):(\S.*)$", line)
    if not m:
        continue
    ir = int(m.group(1).replace(",", ""))
    if "PROGRAM TOTALS" in line:
        total = ir
    elif "/prometheus-" in m.group(2) or m.group(2).endswith("src/metrics.rs") or "prometheus::" in m.group(3):
        metrics += ir
if not total:
    total = int(re.search(r"([\d,]+) \(100.0%\)\s+PROGRAM TOTALS", text).group(1).replace(",", ""))
print(total, metrics)
PY
}
read -r t1 m1 < <(run "$N1")
read -r t2 m2 < <(run "$N2")
python3 - "$OUT" "$N1" "$N2" "$t1" "$m1" "$t2" "$m2" <<'PY'
import json, sys
out, n1, n2, t1, m1, t2, m2 = sys.argv[1], *map(int, sys.argv[2:])
per = (t2 - t1) / (n2 - n1)
metrics = (m2 - m1) / (n2 - n1)
json.dump({"requests": [n1, n2], "instructions_per_request": round(per),
           "metrics_instructions_per_request": round(metrics, 1),
           "metrics_share": metrics / per if per else None}, open(out, "w"))
print(f"metrics: {metrics:.1f} of {per:,.0f} instructions per request ({100 * metrics / per:.3f}%)")
PY
