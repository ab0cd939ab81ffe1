"""Calls the gateway from inside a function, with the standard library
only, as examples/cube.py does: FNGATE_URL, a call token, and the dev CA
from FNGATE_CA_FILE (copied beside the fixtures that import it)."""

import json
import os
import ssl
import urllib.error
import urllib.request


def call(path, body, token, method="POST"):
    """(status, parsed body, headers) of `method path` with `body` as JSON
    and `token` as the Bearer credential."""
    context = ssl.create_default_context(cafile=os.environ.get("FNGATE_CA_FILE"))
    request = urllib.request.Request(
        os.environ["FNGATE_URL"] + path,
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={"Content-Type": "application/json", "Authorization": "Bearer " + token},
    )
    try:
        with urllib.request.urlopen(request, context=context, timeout=60) as answer:
            return answer.status, json.load(answer), dict(answer.headers)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error), dict(error.headers)
