"""Records the command that produced a result file inside it (usage: stamp.py FILE COMMAND)."""

import json
import sys

path, command = sys.argv[1], sys.argv[2]
try:
    with open(path) as f:
        data = json.load(f)
except (OSError, ValueError):
    data = {"error": "no result (the load generator failed; see its log)"}
data["command"] = command
with open(path, "w") as f:
    json.dump(data, f)
