"""An HTTP instance that calls demo/square through the gateway with the
X-Fngate-Call-Token header of each invocation, at the X-Fngate-Url one
(which must match its FNGATE_URL environment)."""

import json
import os
from http.server import ThreadingHTTPServer

from gateway_client import call
from json_http import JsonHandler


class Handler(JsonHandler):
    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        request = json.loads(self.rfile.read(length))
        token = self.headers["X-Fngate-Call-Token"]
        status, body, _ = call("/demo/square", {"x": request["kwargs"]["x"]}, token)
        self.answer(200, {
            "status": status,
            "square": body,
            "same_url": self.headers.get("X-Fngate-Url") == os.environ.get("FNGATE_URL"),
        })


ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
