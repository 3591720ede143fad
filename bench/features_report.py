"""bench/features.sh's report: medians of each scenario's runs, ratios to each group's
baseline in the same run, FEATURES.md.

Usage: features_report.py WORK OUT.json OUT.md MODE
"""

import json
import sys

import rounds

work, out_json, out_md, mode = sys.argv[1:5]

GROUPS = [
    ("What naming the caller costs (memory store)", "header", [
        ("header", "x-user-id header, clear (the baseline)"),
        ("sha256", "the same, identity_hash: sha256"),
        ("hmac", "the same, identity_hash: hmac_sha256"),
        ("hs256", "jwt, HS256 (secret_file)"),
        ("es256", "jwt, ES256 (JWKS, kid)"),
        ("eddsa", "jwt, EdDSA (JWKS, kid)"),
    ]),
    ("What settling after the response costs (one Redis)", "plain", [
        ("plain", "one per-caller limit (the baseline)"),
        ("outcome", "the same, count: { status: [401] } (every 200 gives its unit back)"),
        ("cost", "the same, cost_from: x-usage-tokens (every response settles 1-500 tokens)"),
        ("quota", "a monthly quota in Europe/Berlin instead (a counter per calendar period)"),
        ("throttle", "the per-caller limit with throttle: { max_delay: 2s } (never held)"),
    ]),
]


def runs(name):
    return rounds.runs(work, name)


res = {"mode": mode, "env": json.load(open(f"{work}/env.json")), "groups": {}}
with open(out_md, "w") as f:
    f.write("# What the identity and outcome features cost (bench/features.sh)\n\n")
    f.write(f"Mode {mode}; medians of each scenario's runs, taken in rounds; one sidecar (2 "
            "workers) per scenario, limits that never refuse, 10,000 callers at random, wrk -c64. "
            "Ratios are to the group's baseline in the same run.\n")
    for title, base_name, names in GROUPS:
        group = {name: rounds.summary(desc, runs(name)) for name, desc in names}
        base = rounds.against(group, base_name)
        res["groups"][title] = group
        redis = "redis" in base["cpu_us"]
        f.write(f"\n## {title}\n\n| scenario | req/s | ratio | p99 ms | sidecar CPU µs/req | "
                f"more than the baseline |{' Redis CPU µs/req |' if redis else ''} non-2xx |\n"
                f"|---|---|---|---|---|---|{'---|' if redis else ''}---|\n")
        for name, desc in names:
            s = group[name]
            extra = f" {s['cpu_us']['redis']:.1f} |" if redis else ""
            f.write(f"| {desc} | {s['rps']:,.0f} | {s['rps_ratio']:.3f} | {s['p99_ms']:.2f} | "
                    f"{s['cpu_us']['proxy']:.1f} | {s['proxy_us_more']:+.1f} |{extra} {s['non2xx']} |\n")
json.dump(res, open(out_json, "w"), indent=2)
print(open(out_md).read())
