"""h2load's summary as the JSON the bench reports read (the fields bench/wrk/report.lua writes).

Usage: h2load_json.py H2LOAD_OUTPUT.txt > OUT.json

requests: responses received; rps: h2load's req/s; non2xx: every request that did not end in a
2xx (3xx-5xx statuses, failures, errors, timeouts); mean_ms: the mean time for a request (h2load
prints no percentiles); p99_ms: null.
"""

import json
import re
import sys

text = open(sys.argv[1]).read()


def number(pattern):
    m = re.search(pattern, text)
    if not m:
        sys.exit(f"h2load_json.py: no '{pattern}' in {sys.argv[1]}:\n{text}")
    return float(m.group(1))


def ms(value, unit):
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


done = number(r"(\d+) done")
unanswered = sum(number(rf"(\d+) {what}") for what in ("failed", "errored", "timeout"))
other = sum(number(rf"(\d+) {c}xx") for c in "345")
mean = re.search(r"time for request:\s+\S+\s+\S+\s+([\d.]+)(us|ms|s)\s", text)
print(json.dumps({
    "requests": int(done),
    "rps": number(r"finished in [\d.]+s, ([\d.]+) req/s"),
    "non2xx": int(unanswered + other),
    "mean_ms": ms(*mean.groups()) if mean else None,
    "p99_ms": None,
}))
