#!/usr/bin/env python3
"""api: square.py as an HTTP instance (backend = "http" with command).

fngate starts each instance with PORT set; this one serves, on
127.0.0.1:$PORT, HTTP/1.1 with keep-alive and one thread per connection:

  POST /invoke   the invocation request JSON in; x * x out as a bare JSON
                 number (x taken as square.py takes it), or on bad input
                 500 {"error": {"type": "TypeError", "message": "..."}}
  GET  /healthz  200 {"status": "ok"} (the function's ready_path)

Standard library only, no request logging; SIGTERM stops it with status 0.
"""

import json
import math
import os
import re
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

INTEGER = re.compile(r"[+-]?[0-9]+")


def number(x):
    if isinstance(x, bool):
        raise TypeError("x must be a number, not a boolean")
    if isinstance(x, (int, float)):
        return x
    if isinstance(x, str):
        text = x.strip()
        if INTEGER.fullmatch(text):
            return int(text)
        try:
            value = float(text)
        except ValueError:
            pass
        else:
            if math.isfinite(value):
                return value
        raise ValueError(f"x must be a number, got the string {x!r}")
    raise TypeError(f"x must be a number, got {type(x).__name__}")


def square(request):
    kwargs = request.get("kwargs") or {}
    args = request.get("args") or []
    if "x" in kwargs:
        x = kwargs["x"]
    elif args:
        x = args[0]
    else:
        raise TypeError("square() missing required argument 'x' "
                        "(send {\"x\": 42}, [42] or ?x=42)")
    x = number(x)
    result = x * x
    if isinstance(result, float) and not math.isfinite(result):
        raise OverflowError("x * x is too large for a JSON number")
    return result


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    disable_nagle_algorithm = True  # TCP_NODELAY on each connection

    def log_message(self, format, *args):
        pass

    def answer(self, status, document):
        body = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def error(self, status, kind, message):
        self.answer(status, {"error": {"type": kind, "message": message}})

    def read_body(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0], 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline().strip():  # trailers
                pass
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def do_GET(self):
        if self.path == "/healthz":
            self.answer(200, {"status": "ok"})
        else:
            self.error(404, "NotFound", f"no route GET {self.path}")

    def do_POST(self):
        body = self.read_body()
        if self.path != "/invoke":
            self.error(404, "NotFound", f"no route POST {self.path}")
            return
        try:
            self.answer(200, square(json.loads(body)))
        except Exception as e:  # the function's error, as fngate reads it
            self.error(500, type(e).__name__, str(e))


def main():
    if hasattr(sys, "set_int_max_str_digits"):
        sys.set_int_max_str_digits(0)  # big integers stay exact both ways
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server = ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler)
    try:
        server.serve_forever()
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
