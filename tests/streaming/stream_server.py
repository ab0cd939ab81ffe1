"""An HTTP server that streams gated.py's items, for the black-box tests of
the http backend (`urls`) and of http instances (`command`, with PORT).

It answers every POST with the items of gated.items(invocation request),
chunked, each chunk flushed as it is written: `application/x-ndjson` lines,
or Server-Sent Events when kwargs `sse` is set (with a comment before the
first event and each item's JSON cut over two `data:` lines). kwargs
`whole` answers one plain JSON result instead; `fail` ends NDJSON by
dropping the connection mid-answer, and events with an `error` event. When
a write fails (the gateway dropped the request) it creates the file
`<pidfile>.dropped`. Prints `LISTENING <port>` once it listens.
"""

import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gated  # noqa: E402


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def chunk(self, data):
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def do_POST(self):
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        kw = request.get("kwargs") or {}
        if kw.get("whole"):
            body = json.dumps({"whole": True}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        sse = bool(kw.get("sse"))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream" if sse else "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            if sse:
                self.chunk(b": the items follow\n\n")
            try:
                for item in gated.items(request):
                    text = json.dumps(item)
                    if sse:
                        head, _, tail = text.partition(" ")
                        self.chunk(f"data: {head}\ndata: {tail}\n\n".encode())
                    else:
                        self.chunk(text.encode() + b"\n")
            except ValueError as e:
                if not sse:
                    self.close_connection = True
                    self.wfile.flush()
                    self.connection.shutdown(2)
                    return
                error = json.dumps({"type": "ValueError", "message": str(e)})
                self.chunk(f"event: error\ndata: {error}\n\n".encode())
            self.chunk(b"")
        except OSError:
            if kw.get("pidfile"):
                open(kw["pidfile"] + ".dropped", "w").close()
            self.close_connection = True


def main():
    server = ThreadingHTTPServer(("127.0.0.1", int(os.environ.get("PORT", "0"))), Handler)
    server.daemon_threads = True
    print(f"LISTENING {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
