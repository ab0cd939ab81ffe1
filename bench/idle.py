#!/usr/bin/env python3
"""Hold many idle TLS connections open to a gateway (the idle scenario of run.sh).

Opens COUNT connections to HOST:PORT (at most PARALLEL handshakes at a time),
sends one small keep-alive POST on each and reads its answer, then prints

    ready OK FAILED

and holds the connections, sending nothing, until SIGTERM or SIGINT. It then
prints `held N`: how many of the OK connections the server had not closed,
and exits. A connection is OK when its handshake completed and its answer
was a 200 with the expected body.

    python3 bench/idle.py --port 8443 --path /bench/square --count 10000
"""

import argparse
import asyncio
import signal
import ssl
import sys


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", required=True)
    p.add_argument("--count", type=int, default=10000)
    p.add_argument("--parallel", type=int, default=64, help="connections being opened at a time")
    p.add_argument("--body", default='{"x":42}')
    p.add_argument("--expect", default='{"result":1764}')
    p.add_argument("--cafile", help="verify the server against this CA (default: no verification)")
    p.add_argument("--server-name", default="localhost")
    return p.parse_args()


async def read_answer(reader):
    """Reads one HTTP/1.1 response; returns (status, body)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                break
            body += chunk[:-2]
    else:
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, body


async def open_one(args, context, request, gate):
    """One connection with one answered request, or None."""
    async with gate:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    args.host, args.port, ssl=context, server_hostname=args.server_name
                ),
                timeout=30,
            )
        except (OSError, asyncio.TimeoutError) as e:  # ssl.SSLError is an OSError
            print(f"connect failed: {e!r}", file=sys.stderr)
            return None
        try:
            writer.write(request)
            status, body = await asyncio.wait_for(read_answer(reader), timeout=30)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError) as e:
            print(f"request failed: {e!r}", file=sys.stderr)
            writer.close()
            return None
    if status != 200 or body.decode("utf-8", "replace") != args.expect:
        print(f"unexpected answer: {status} {body[:200]!r}", file=sys.stderr)
        writer.close()
        return None
    return reader, writer


async def main():
    args = parse_args()
    if args.cafile:
        context = ssl.create_default_context(cafile=args.cafile)
    else:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["http/1.1"])
    body = args.body.encode()
    request = (
        f"POST {args.path} HTTP/1.1\r\nHost: {args.server_name}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    gate = asyncio.Semaphore(args.parallel)
    results = await asyncio.gather(
        *(open_one(args, context, request, gate) for _ in range(args.count))
    )
    conns = [c for c in results if c is not None]
    print(f"ready {len(conns)} {args.count - len(conns)}", flush=True)

    await stop.wait()
    held = sum(1 for reader, _ in conns if not reader.at_eof())
    print(f"held {held}", flush=True)
    for _, writer in conns:
        writer.close()


if __name__ == "__main__":
    asyncio.run(main())
