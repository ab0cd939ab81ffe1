#!/usr/bin/env python3
"""lambda_runtime: a small AWS Lambda Runtime API client, standard library only.

Runs a Python handler as a warm instance of a `backend = "lambda"` function
with nothing installed beyond Python 3. Handler strings are awslambdaric's,
so a module runs unchanged under either of these, from the repository root:

    python3 examples/lambda_runtime.py examples/warm.handler
    python3 -m awslambdaric examples/warm.handler

The module ("examples/warm" is examples.warm, found from the current
directory) is imported once: its top level is the instance's set-up, and a
failure there is posted to /runtime/init/error before exiting with status 1.
Then, one call at a time: GET the next event, call handler(event, context),
POST its JSON result, or its exception (errorType = the class name) as an
error. A handler that is a generator streams: what it yields is POSTed as
it comes, one JSON line per item, in the Runtime API's streaming response
mode (`Lambda-Runtime-Function-Response-Mode: streaming`, a chunked body);
an exception while it yields ends the body with the error trailers
`Lambda-Runtime-Function-Error-Type` and `Lambda-Runtime-Function-Error-Body`
(the base64 error document), as AWS's Node runtime client does. SIGTERM
ends the process with status 0.
"""

import base64
import http.client
import importlib
import inspect
import json
import os
import signal
import socket
import sys
import time
import traceback

API = "/2018-06-01/runtime"
CORK = getattr(socket, "TCP_CORK", None)
HERE = os.path.abspath(__file__)


class Fault(Exception):
    """An error of the runtime itself, reported with a Runtime.* type."""

    def __init__(self, error_type, message, stack=()):
        super().__init__(message)
        self.error_type, self.stack = error_type, list(stack)


class Obj:
    """Named attributes from a dict, as awslambdaric gives the context's parts."""

    def __init__(self, fields, values):
        for name in fields:
            setattr(self, name, values.get(name))


class Context:
    """What awslambdaric passes as the handler's second argument."""

    def __init__(self, headers):
        env = os.environ.get
        self.aws_request_id = headers.get("Lambda-Runtime-Aws-Request-Id")
        self.invoked_function_arn = headers.get("Lambda-Runtime-Invoked-Function-Arn")
        self.tenant_id = headers.get("Lambda-Runtime-Aws-Tenant-Id")
        self.function_name = env("AWS_LAMBDA_FUNCTION_NAME")
        self.function_version = env("AWS_LAMBDA_FUNCTION_VERSION")
        self.memory_limit_in_mb = env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE")
        self.log_group_name = env("AWS_LAMBDA_LOG_GROUP_NAME")
        self.log_stream_name = env("AWS_LAMBDA_LOG_STREAM_NAME")
        self._deadline_ms = int(headers.get("Lambda-Runtime-Deadline-Ms") or 0)
        self.client_context = None
        client_context = json_header(headers, "Client-Context", "Client Context")
        if client_context is not None:
            self.client_context = Obj(("custom", "env", "client"), client_context)
            if self.client_context.client is not None:
                self.client_context.client = Obj(
                    ("installation_id", "app_title", "app_version_name",
                     "app_version_code", "app_package_name"),
                    self.client_context.client)
        identity = json_header(headers, "Cognito-Identity", "Cognito Identity") or {}
        self.identity = Obj(("cognito_identity_id", "cognito_identity_pool_id"), {
            "cognito_identity_id": identity.get("cognitoIdentityId"),
            "cognito_identity_pool_id": identity.get("cognitoIdentityPoolId")})

    def get_remaining_time_in_millis(self):
        return max(self._deadline_ms - int(time.time() * 1000), 0)


def json_header(headers, header, name):
    value = headers.get("Lambda-Runtime-" + header)
    if not value:
        return None
    try:
        return json.loads(value)
    except ValueError as e:
        raise Fault("Runtime.LambdaContextUnmarshalError",
                    f"Unable to parse {name} JSON: {e}") from None


class Connection(http.client.HTTPConnection):
    def connect(self):
        super().connect()
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class RuntimeAPI:
    """One keep-alive HTTP/1.1 connection to the Runtime API, reopened on failure."""

    def __init__(self, address):
        host, _, port = address.rpartition(":")
        self.conn = Connection(host, int(port))

    def request(self, method, path, body=None, headers=None):
        for attempt in range(6):
            try:
                if self.conn.sock is None:
                    self.conn.connect()
                # http.client writes a request's head and body apart: held
                # back (TCP_CORK, Linux) until both are written, they leave
                # as one.
                self.cork(1)
                self.conn.request(method, API + path, body, headers or {})
                self.cork(0)
                response = self.conn.getresponse()
                return response.status, response.headers, response.read()
            except (OSError, http.client.HTTPException) as e:
                self.conn.close()
                if attempt == 5:
                    sys.exit(f"lambda_runtime: {method} {path} failed: {e}")
                time.sleep(0.05 * 2 ** attempt)

    def cork(self, on):
        if CORK is not None:
            self.conn.sock.setsockopt(socket.IPPROTO_TCP, CORK, on)

    def post(self, path, body, headers=None):
        headers = {"Content-Type": "application/json", **(headers or {})}
        status, _, answer = self.request("POST", path, body, headers)
        if not 200 <= status < 300:
            print(f"lambda_runtime: POST {path}: {status} {answer[:200]!r}",
                  file=sys.stderr)


    def stream(self, path, items, request_id):
        """POSTs each item of the generator `items` as it comes, one JSON line a
        chunk; an exception it raises ends the body with the error trailers."""
        conn = self.conn
        try:
            if conn.sock is None:
                conn.connect()
            conn.putrequest("POST", API + path, skip_accept_encoding=True)
            conn.putheader("Content-Type", "application/x-ndjson")
            conn.putheader("Lambda-Runtime-Function-Response-Mode", "streaming")
            conn.putheader("Transfer-Encoding", "chunked")
            conn.putheader("Trailer", "Lambda-Runtime-Function-Error-Type, "
                           "Lambda-Runtime-Function-Error-Body")
            conn.endheaders()
            trailers = b""
            while True:
                try:
                    item = next(items)
                    try:
                        line = json.dumps(item, allow_nan=False).encode() + b"\n"
                    except (TypeError, ValueError) as e:
                        raise Fault("Runtime.MarshalError",
                                    f"Unable to marshal response: {e}") from None
                except StopIteration:
                    break
                except Exception as e:
                    report = base64.b64encode(error_body(e, request_id)).decode()
                    trailers = (f"Lambda-Runtime-Function-Error-Type: {error_type(e)}\r\n"
                                f"Lambda-Runtime-Function-Error-Body: {report}\r\n").encode()
                    break
                conn.send(b"%x\r\n%s\r\n" % (len(line), line))
            conn.send(b"0\r\n" + trailers + b"\r\n")
            response = conn.getresponse()
            answer = response.read()
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            sys.exit(f"lambda_runtime: streaming POST {path} failed: {e}")
        if not 200 <= response.status < 300:
            print(f"lambda_runtime: POST {path}: {response.status} {answer[:200]!r}",
                  file=sys.stderr)


def load_handler(spec):
    try:
        name, attribute = spec.rsplit(".", 1)
    except ValueError as e:
        raise Fault("Runtime.MalformedHandlerName",
                    f"Bad handler '{spec}': {e}") from None
    if name.split(".")[0] in sys.builtin_module_names:
        raise Fault("Runtime.BuiltInModuleConflict",
                    f"Cannot use built-in module {name} as a handler module")
    try:
        module = importlib.import_module(name.replace("/", "."))
    except ImportError as e:
        raise Fault("Runtime.ImportModuleError",
                    f"Unable to import module '{name}': {e}") from None
    except SyntaxError as e:
        raise Fault("Runtime.UserCodeSyntaxError",
                    f"Syntax error in module '{name}': {e}",
                    [f'  File "{e.filename}" Line {e.lineno}\n    {e.text}']) from None
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise Fault("Runtime.HandlerNotFound",
                    f"Handler '{attribute}' missing on module '{name}'") from None


def error_type(e):
    return e.error_type if isinstance(e, Fault) else type(e).__name__


def error_body(e, request_id=""):
    """The error document awslambdaric posts, this file's frames left out."""
    stack = e.stack if isinstance(e, Fault) else None
    if stack is None:
        frames = [tuple(f) for f in traceback.extract_tb(e.__traceback__)]
        while frames and frames[0][0] == HERE:
            frames.pop(0)
        stack = traceback.format_list(frames)
    print(f"[ERROR] {error_type(e)}: {e}", file=sys.stderr)
    sys.stderr.write("".join(stack))
    return json.dumps({"errorMessage": str(e), "errorType": error_type(e),
                       "requestId": request_id, "stackTrace": stack}).encode()


def serve(api, handler):
    while True:
        status, headers, body = api.request("GET", "/invocation/next")
        if status != 200:
            sys.exit(f"lambda_runtime: GET /invocation/next: {status} {body[:200]!r}")
        request_id = headers.get("Lambda-Runtime-Aws-Request-Id")
        if not request_id:
            sys.exit("lambda_runtime: no Lambda-Runtime-Aws-Request-Id in next event")
        os.environ.pop("_X_AMZN_TRACE_ID", None)
        if headers.get("Lambda-Runtime-Trace-Id"):
            os.environ["_X_AMZN_TRACE_ID"] = headers["Lambda-Runtime-Trace-Id"]
        try:
            context = Context(headers)
            try:
                event = json.loads(body)
            except ValueError as e:
                raise Fault("Runtime.UnmarshalError",
                            f"Unable to unmarshal input: {e}") from None
            result = handler(event, context)
            streamed = result if inspect.isgenerator(result) else None
            if streamed is None:
                try:
                    answer = json.dumps(result, allow_nan=False).encode()
                except (TypeError, ValueError) as e:
                    raise Fault("Runtime.MarshalError",
                                f"Unable to marshal response: {e}") from None
        except Exception as e:
            api.post(f"/invocation/{request_id}/error", error_body(e, request_id),
                     {"Lambda-Runtime-Function-Error-Type": "Unhandled"})
        else:
            if streamed is not None:
                api.stream(f"/invocation/{request_id}/response", streamed, request_id)
            else:
                api.post(f"/invocation/{request_id}/response", answer)


def main(argv):
    if len(argv) != 2:
        sys.exit("usage: lambda_runtime.py MODULE.FUNCTION, e.g. examples/warm.handler")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    for stream in (sys.stdout, sys.stderr):
        stream.reconfigure(line_buffering=True)
    sys.path[0] = os.getcwd()  # as `python3 -m awslambdaric`, not this file's folder
    api = RuntimeAPI(os.environ["AWS_LAMBDA_RUNTIME_API"])
    try:
        handler = load_handler(argv[1])
    except Exception as e:
        api.post("/init/error", error_body(e),
                 {"Lambda-Runtime-Function-Error-Type": error_type(e)})
        sys.exit(1)
    serve(api, handler)


if __name__ == "__main__":
    main(sys.argv)
