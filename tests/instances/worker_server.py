"""An HTTP instance on $PORT (standard library only) for the worker tests:
the unit tests of `src/worker/` and the black-box ones in tests/worker.rs.

`GET /healthz` answers 200 (its ready_path), any other GET 404. `POST
/invoke` sleeps kwargs.sleep seconds, then answers who served it and what
it saw:

    {"pid", "served_by" (SERVED_BY), "x" (kwargs.x),
     "call_id" (the X-Fngate-Call-Id header), "event_call_id" (the event's)}

or, with kwargs.fail, 500 with a reported TypeError of that message. A POST
to any other path answers 404 with a reported NotFound.
"""

import json
import os
import time
from http.server import ThreadingHTTPServer

from json_http import JsonHandler


class Handler(JsonHandler):

    def do_GET(self):
        self.answer(200 if self.path == "/healthz" else 404, {})

    def do_POST(self):
        event = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        kw = event.get("kwargs") or {}
        time.sleep(float(kw.get("sleep", 0)))
        if self.path != "/invoke":
            return self.answer(404, {"error": {"type": "NotFound", "message": self.path}})
        if kw.get("fail"):
            return self.answer(500, {"error": {"type": "TypeError", "message": kw["fail"]}})
        self.answer(200, {"pid": os.getpid(), "served_by": os.environ.get("SERVED_BY"),
                          "x": kw.get("x"),
                          "call_id": self.headers.get("X-Fngate-Call-Id"),
                          "event_call_id": event.get("call_id")})


ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
