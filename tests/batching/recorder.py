#!/usr/bin/env python3
"""A batched function as an HTTP service, for tests/batching.rs (standard
library only).

Listens on 127.0.0.1:$PORT when PORT is set (an instance fngate starts),
else on a free port, and prints `LISTENING <port>` to stdout. Every POST is
an invocation request; it is appended as one JSON line (with the
X-Fngate-Subject header it came with, as "_subject") to the file named by
RECORD_FILE (relative to the working directory), then answered with one
element per call of its `batch`:

    {"x": kwargs.x, "square": x * x, "batch_call_id": the invocation's
     call_id, "batch_size": len(batch), "subject", "parameters"}

A call's kwargs change the whole batch's answer: "sleep" (seconds) holds
it, "short" answers one element too few, "scalar" answers an object
instead of an array, "fail" answers a reported ValueError.
"""

import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

RECORD = os.environ.get("RECORD_FILE", "invocations.jsonl")
LOCK = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, status, document):
        body = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        event = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        subject = self.headers.get("X-Fngate-Subject")
        with LOCK, open(RECORD, "a") as f:
            f.write(json.dumps(dict(event, _subject=subject)) + "\n")
        batch = event.get("batch")
        if not isinstance(batch, list):
            return self.answer(200, {"not": "a batch", "event": event})
        kwargs = [call.get("kwargs") or {} for call in batch]
        time.sleep(max([float(kw.get("sleep", 0)) for kw in kwargs] or [0]))
        if any(kw.get("fail") for kw in kwargs):
            return self.answer(500, {"error": {"type": "ValueError", "message": "asked to fail"}})
        if any(kw.get("scalar") for kw in kwargs):
            return self.answer(200, {"not": "an array"})
        results = []
        for kw in kwargs:
            x = kw.get("x") or 0
            results.append({"x": x, "square": x * x, "batch_call_id": event["call_id"],
                            "batch_size": len(batch), "subject": subject,
                            "parameters": event.get("parameters")})
        if any(kw.get("short") for kw in kwargs):
            results.pop()
        self.answer(200, results)


def main():
    server = ThreadingHTTPServer(("127.0.0.1", int(os.environ.get("PORT", "0"))), Handler)
    server.daemon_threads = True
    print(f"LISTENING {server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    sys.exit(0)


if __name__ == "__main__":
    main()
