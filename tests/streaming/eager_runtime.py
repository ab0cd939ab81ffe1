"""A Lambda runtime client that asks for its next call before its streamed
response has ended, as Node's aws-lambda-ric does after a handler failed:
each call streams {"item": 1}, waits until the file named by its kwargs
`gate` exists (the test creates it once the item reached its client), asks
for the next call on another connection, then ends the response with the
error trailers of ValueError("late").
"""

import base64
import http.client
import json
import os
import time

API = "/2018-06-01/runtime"
host, _, port = os.environ["AWS_LAMBDA_RUNTIME_API"].rpartition(":")
polls = http.client.HTTPConnection(host, int(port))


def ask_next():
    polls.putrequest("GET", API + "/invocation/next")
    polls.endheaders()


ask_next()
while True:
    answer = polls.getresponse()
    gate = (json.loads(answer.read()).get("kwargs") or {})["gate"]
    request_id = answer.headers["Lambda-Runtime-Aws-Request-Id"]
    post = http.client.HTTPConnection(host, int(port))
    post.putrequest("POST", f"{API}/invocation/{request_id}/response")
    post.putheader("Lambda-Runtime-Function-Response-Mode", "streaming")
    post.putheader("Transfer-Encoding", "chunked")
    post.putheader("Trailer", "Lambda-Runtime-Function-Error-Type, Lambda-Runtime-Function-Error-Body")
    post.endheaders()
    line = b'{"item": 1}\n'
    post.send(b"%x\r\n%s\r\n" % (len(line), line))
    while not os.path.exists(gate):
        time.sleep(0.005)
    ask_next()
    # Gives the gateway time to see the early `next` before the end.
    time.sleep(0.2)
    report = json.dumps({"errorType": "ValueError", "errorMessage": "late"}).encode()
    post.send(b"0\r\nLambda-Runtime-Function-Error-Type: ValueError\r\n"
              b"Lambda-Runtime-Function-Error-Body: " + base64.b64encode(report) + b"\r\n\r\n")
    post.getresponse().read()
    post.close()
