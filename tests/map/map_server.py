"""An HTTP instance for the map tests (fngate starts it with PORT set;
JsonHandler comes from json_http.py, copied beside it).

POST /invoke takes the invocation request and honours these kwargs, in
this order: "count" (a file: appends the call id, one line per run, when
the run starts), "sleep" (seconds), "fail" (answers 500 with a ValueError
carrying that message), "fail_below" (fails while the attempt is below
it). Otherwise it answers {"x", "square", "call_id", "attempt", "args",
"token" (the call token header)},
plus "pad": "p" * pad when "pad" is given. GET /ready answers 200.

Each answer leaves in one write: a head and a body written apart would
wait for the gateway's delayed ACK (Nagle), some 40 ms a call.
"""

import json
import os
import time
from http.server import ThreadingHTTPServer

from json_http import JsonHandler


class Handler(JsonHandler):

    def answer(self, status, document):
        body = json.dumps(document).encode()
        head = "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % (
            status, self.responses[status][0], len(body))
        self.wfile.write(head.encode() + body)

    def do_GET(self):
        self.answer(200, {"ready": True})

    def do_POST(self):
        request = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
        kwargs = request.get("kwargs") or {}
        if kwargs.get("count"):
            with open(kwargs["count"], "a") as f:
                f.write(request["call_id"] + "\n")
        time.sleep(float(kwargs.get("sleep", 0)))
        failure = kwargs.get("fail")
        if not failure and request["attempt"] < int(kwargs.get("fail_below", 0)):
            failure = "attempt %d fails" % request["attempt"]
        if failure:
            return self.answer(500, {"error": {"type": "ValueError", "message": failure}})
        x = kwargs.get("x", 0)
        out = {
            "x": x,
            "square": x * x if isinstance(x, (int, float)) else None,
            "call_id": request["call_id"],
            "attempt": request["attempt"],
            "args": request.get("args"),
            "token": self.headers.get("X-Fngate-Call-Token"),
        }
        if kwargs.get("pad"):
            out["pad"] = "p" * int(kwargs["pad"])
        self.answer(200, out)


ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
