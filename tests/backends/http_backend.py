#!/usr/bin/env python3
"""A real HTTP/1.1 function backend for fngate's black-box tests.

Standard library only. Binds 127.0.0.1 on a free port (or --port N), prints
exactly one line `LISTENING <port>` to stdout, then serves with keep-alive,
one daemon thread per connection, and no request logging.

Invocation routes (POST; the body is the gateway's invocation request):

  /invoke/echo          200 {"received": <request body spliced in verbatim>,
                              "headers": {<lowercased name>: <value>}}
  /invoke/square        200 kwargs.x ** 2 (or args[0]), a bare number
  /invoke/error         500 {"error": {"type": "ValueError", "message": "bad x"}}
  /invoke/garbage       200 text/plain `not json`
  /invoke/slow?seconds=N   sleeps N seconds (default 5), then 200 {"ok": true}
  /invoke/die           closes the connection without answering
  /invoke/exit          ends this whole process mid-request (exit status 1)
  /invoke/count         200 {"count": n}, n = calls to this route so far

Any other path or method (passthrough tests):

  200 {"method", "path" (raw, with query), "headers", "body" (utf-8 text)}
  with `X-Backend: yes`; a request header `x-status: NNN` picks the status.
  Chunked request bodies are decoded. GET /stream answers text/plain in
  three chunks `a`, `b`, `c`, 100 ms apart.
"""

import argparse
import json
import os
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

if hasattr(sys, "set_int_max_str_digits"):
    sys.set_int_max_str_digits(0)  # big integers stay exact in /invoke/square

COUNT_LOCK = threading.Lock()
COUNT = 0


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def version_string(self):
        return "fngate-test-backend"

    def __getattr__(self, name):
        # BaseHTTPRequestHandler dispatches to do_<METHOD>; every method,
        # including unusual ones (PROPFIND, PURGE), goes to one router.
        if name.startswith("do_"):
            return self.route
        raise AttributeError(name)

    def log_message(self, format, *args):
        pass

    # ---- routing ---------------------------------------------------------

    def route(self):
        body = self.read_body()
        if body is None:
            return
        path = urlsplit(self.path).path
        if self.command == "POST" and path.startswith("/invoke/"):
            action = INVOKE_ROUTES.get(path[len("/invoke/"):])
            if action is not None:
                try:
                    action(self, body)
                except Exception as exc:  # a malformed request in a test
                    error = {"type": type(exc).__name__, "message": str(exc)}
                    self.send(500, json.dumps({"error": error}).encode())
                return
        if path == "/stream":
            self.stream()
            return
        self.passthrough(body)

    def invoke_echo(self, body):
        received = body if body.strip() else b"null"
        headers = json.dumps(self.header_map()).encode()
        self.send(200, b'{"received":' + received + b',"headers":' + headers + b"}")

    def invoke_square(self, body):
        request = json.loads(body)
        kwargs = request.get("kwargs") or {}
        args = request.get("args") or []
        x = kwargs["x"] if "x" in kwargs else args[0]
        if isinstance(x, str):
            x = int(x)
        self.send(200, json.dumps(x**2).encode())

    def invoke_error(self, body):
        error = {"error": {"type": "ValueError", "message": "bad x"}}
        self.send(500, json.dumps(error).encode())

    def invoke_garbage(self, body):
        self.send(200, b"not json", "text/plain")

    def invoke_slow(self, body):
        query = parse_qs(urlsplit(self.path).query)
        time.sleep(float(query.get("seconds", ["5"])[0]))
        self.send(200, b'{"ok": true}')

    def invoke_die(self, body):
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.connection.close()

    def invoke_exit(self, body):
        os._exit(1)

    def invoke_count(self, body):
        global COUNT
        with COUNT_LOCK:
            COUNT += 1
            count = COUNT
        self.send(200, json.dumps({"count": count}).encode())

    def passthrough(self, body):
        status = 200
        wanted = self.headers.get("x-status")
        if wanted is not None:
            try:
                status = int(wanted)
            except ValueError:
                status = 400
        answer = {
            "method": self.command,
            "path": self.path,
            "headers": self.header_map(),
            "body": body.decode("utf-8", errors="replace"),
        }
        self.send(status, json.dumps(answer).encode(), extra={"X-Backend": "yes"})

    def stream(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("X-Backend", "yes")
        self.end_headers()
        for i, chunk in enumerate((b"a", b"b", b"c")):
            if i:
                time.sleep(0.1)
            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    # ---- plumbing --------------------------------------------------------

    def read_body(self):
        """The request body, de-chunked; None after answering a bad request."""
        encoding = self.headers.get("Transfer-Encoding", "").lower()
        if "chunked" in encoding:
            return self.read_chunked()
        length = self.headers.get("Content-Length")
        if length is None:
            return b""
        try:
            size = int(length)
        except ValueError:
            self.close_connection = True
            self.send(400, b'{"error": "bad content-length"}')
            return None
        return self.rfile.read(size)

    def read_chunked(self):
        body = bytearray()
        while True:
            line = self.rfile.readline(65537)
            size = int(line.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                break
            body += self.rfile.read(size)
            self.rfile.readline()  # CRLF after the chunk data
        while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
            pass  # trailers
        return bytes(body)

    def header_map(self):
        headers = {}
        for name, value in self.headers.items():
            name = name.lower()
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        return headers

    def send(self, status, body, content_type="application/json", extra=None):
        self.send_response(status)
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        no_body = status in (204, 304) or 100 <= status < 200
        if not no_body:
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not no_body and self.command != "HEAD":
            self.wfile.write(body)


INVOKE_ROUTES = {
    "echo": Handler.invoke_echo,
    "square": Handler.invoke_square,
    "error": Handler.invoke_error,
    "garbage": Handler.invoke_garbage,
    "slow": Handler.invoke_slow,
    "die": Handler.invoke_die,
    "exit": Handler.invoke_exit,
    "count": Handler.invoke_count,
}


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request, client_address):
        # A gateway that hung up (timeout, cancel) is expected; stay quiet.
        pass


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="0: any free port")
    options = parser.parse_args()
    server = Server(("127.0.0.1", options.port), Handler)
    print(f"LISTENING {server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
