#!/usr/bin/env python3
"""bench/script_load.py CODE PORT USERS CALLS LIMIT [PER_CALL]: sends the store's code what a
sidecar sends it: calls of PER_CALL (default ten, a busy sidecar's batch) OP_CHECK decisions
(cost 1, no request id), each with one limit (LIMIT: its five arguments, comma-separated) on a
random one of USERS callers' keys, pipelined 16 calls deep. CODE is a function library
(`#!lua name=...`: FUNCTION LOAD, FCALL) or a script (SCRIPT LOAD, EVALSHA). Fails on any error
reply. Used by bench/script.sh."""
import random
import socket
import sys

DEPTH = 16


def main():
    source = open(sys.argv[1], "rb").read()
    port, users, calls = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    limit = sys.argv[5].split(",")
    per_call = int(sys.argv[6]) if len(sys.argv) > 6 else 10
    sock = socket.create_connection(("127.0.0.1", port))
    replies = sock.makefile("rb")

    def encode(*args):
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            a = a if isinstance(a, bytes) else str(a).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(a), a))
        return b"".join(out)

    def read():
        line = replies.readline()
        kind, rest = line[:1], line[1:-2]
        if kind == b"-":
            sys.exit(f"script_load: Redis answered {rest.decode()}")
        if kind in b"+:":
            return rest
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else replies.read(n + 2)[:-2]
        return [read() for _ in range(max(int(rest), 0))]

    def command(*args):
        sock.sendall(encode(*args))
        return read()

    command("FLUSHALL")
    if source.startswith(b"#!lua name="):
        name = source.split(b"\n", 1)[0][len(b"#!lua name="):].decode()
        command("FUNCTION", "LOAD", "REPLACE", source)
        call = ["FCALL", name]
    else:
        call = ["EVALSHA", command("SCRIPT", "LOAD", source).decode()]
    seq = 0
    for _ in range(0, calls, DEPTH):
        batch = []
        for _ in range(DEPTH):
            keys, argv = [], ["0", per_call]
            for _ in range(per_call):
                seq += 1
                keys.append("{api:u%d}" % random.randrange(users))
                # OP_CHECK, member, retry window ms, max retries, cost, n limits, the limit
                argv += [1, "m%x" % seq, 0, 0, 1, 1] + limit
            batch.append(encode(*call, len(keys), *keys, *argv))
        sock.sendall(b"".join(batch))
        for _ in range(DEPTH):
            read()


if __name__ == "__main__":
    main()
