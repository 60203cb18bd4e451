#!/usr/bin/env python3
"""Open N idle keep-alive HTTP/1.1 client connections to a proxy and hold them.

Each connection sends one complete request (GET / with the given Host) and reads the
whole response, so the proxy holds it as a real keep-alive client connection waiting
for its next request. Prints "ready N" (N = connections that got a response) once all
are open, then holds them until stdin reaches end of file, or until SIGTERM/SIGINT with
--until-signal. Standard library only.

    python3 idle_conns.py --port 8080 --conns 10000 --host bench.local --until-signal
"""

import argparse
import resource
import signal
import socket
import sys
import time


def raise_nofile(needed):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    if soft != resource.RLIM_INFINITY and soft < needed:
        print(
            f"idle_conns: open-files limit {soft} < {needed} needed; raise the hard limit "
            f"(ulimit -Hn) or ask for fewer connections",
            file=sys.stderr,
        )
        sys.exit(2)


def read_response(sock):
    """Reads one HTTP/1.1 response; returns its status code."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the response headers")
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length = None
    chunked = False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value.strip())
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if length is not None:
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed in the response body")
            body += chunk
    elif chunked:
        while not body.endswith(b"0\r\n\r\n"):
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed in the chunked response body")
            body += chunk
    return status


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--addr", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--conns", type=int, default=10000)
    ap.add_argument("--host", default="bench.local", help="Host header")
    ap.add_argument("--batch", type=int, default=500, help="connections opened at once")
    ap.add_argument(
        "--until-signal",
        action="store_true",
        help="hold until SIGTERM/SIGINT instead of until stdin closes",
    )
    args = ap.parse_args()

    raise_nofile(args.conns + 32)
    request = f"GET / HTTP/1.1\r\nHost: {args.host}\r\n\r\n".encode()
    socks = []
    statuses = {}
    failed = 0
    started = time.monotonic()
    for first in range(0, args.conns, args.batch):
        batch = []
        for _ in range(min(args.batch, args.conns - first)):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.settimeout(30)
            try:
                s.connect((args.addr, args.port))
                s.sendall(request)
                batch.append(s)
            except OSError as e:
                failed += 1
                s.close()
                if failed == 1:
                    print(f"idle_conns: connect/send failed: {e}", file=sys.stderr)
        for s in batch:
            try:
                code = read_response(s)
                statuses[code] = statuses.get(code, 0) + 1
                socks.append(s)
            except (OSError, ValueError, IndexError) as e:
                failed += 1
                s.close()
                if failed == 1:
                    print(f"idle_conns: response failed: {e}", file=sys.stderr)
    took = time.monotonic() - started
    codes = " ".join(f"{k}={v}" for k, v in sorted(statuses.items()))
    print(f"ready {len(socks)} failed={failed} statuses: {codes} in {took:.1f}s", flush=True)

    if args.until_signal:
        def stop(_sig, _frame):
            raise SystemExit(0)

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        while True:
            signal.pause()
    else:
        sys.stdin.read()


if __name__ == "__main__":
    main()
