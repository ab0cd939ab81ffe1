"""Time to the first streamed item: GETs URL (https, the dev CA) REPS times
over one fresh TLS connection each and prints, per call, the milliseconds
from sending the request to the answer's head, to the first complete item
(NDJSON line, or SSE `data:` event with Accept: text/event-stream), and to
the end of the stream, tab-separated.

    python3 bench/first_item.py URL CA REPS [ndjson|sse]
"""

import http.client
import ssl
import sys
import time
import urllib.parse


def one(url, context, accept):
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPSConnection(parts.hostname, parts.port, context=context)
    conn.connect()  # the handshake is not part of the figure
    path = parts.path + ("?" + parts.query if parts.query else "")
    start = time.perf_counter()
    conn.request("GET", path, headers={"Accept": accept})
    response = conn.getresponse()
    head = time.perf_counter()
    if response.status != 200:
        raise SystemExit(f"{url}: {response.status} {response.read()[:200]!r}")
    first = None
    while True:
        line = response.readline()
        if not line:
            break
        if first is None and line.strip() and (accept != "text/event-stream" or line.startswith(b"data:")):
            first = time.perf_counter()
    end = time.perf_counter()
    conn.close()
    ms = lambda t: f"{(t - start) * 1000:.2f}"
    return ms(head), ms(first or end), ms(end)


def main():
    url, ca, reps = sys.argv[1], sys.argv[2], int(sys.argv[3])
    kind = sys.argv[4] if len(sys.argv) > 4 else "ndjson"
    accept = "text/event-stream" if kind == "sse" else "application/x-ndjson"
    context = ssl.create_default_context(cafile=ca)
    for _ in range(reps):
        print("\t".join(one(url, context, accept)), flush=True)


if __name__ == "__main__":
    main()
