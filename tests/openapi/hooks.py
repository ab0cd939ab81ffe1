"""Schemathesis hooks for the quick-start gateway (tests/openapi.rs).

- `no_gateway_server_error`: the 5xx check that matters for a gateway. A
  function that fails on the input it was given answers `500
  function_error` (and one that runs too long `504 function_timeout`):
  that is the function's own outcome, documented as such, and the quick
  start's functions fail on most random inputs by design. Any other 5xx
  is the gateway's own failure, and fails the run.
- `before_call`: the quick start's two functions that take their time
  (demo/slow sleeps a second, demo/countdown pauses half a second per
  item) get `seconds=0` / `pause=0` in the query, so the run stays short.
  A body that names the key itself keeps it (the gateway then answers
  400 for the key given twice, which the document lists). A map's body
  keeps its first three inputs: each input runs a process, and three show
  whatever more would.
"""

import json

import schemathesis

FUNCTIONS_OWN = {(500, "function_error"), (504, "function_timeout")}

QUICK = {"/demo/slow": "seconds", "/demo/countdown": "pause"}

MAP_INPUTS = 3


@schemathesis.check
def no_gateway_server_error(ctx, response, case):
    if response.status_code < 500:
        return None
    try:
        code = json.loads(response.content).get("code")
    except (ValueError, AttributeError):
        code = None
    if (response.status_code, code) in FUNCTIONS_OWN:
        return None
    raise AssertionError(
        f"the gateway answered {response.status_code} {code!r}: "
        f"{response.content[:500]!r}"
    )


@schemathesis.hook
def before_call(context, case, kwargs):
    is_map = case.path.endswith("/map") or case.path.endswith("/map/spawn")
    if is_map and isinstance(case.body, list):
        case.body = case.body[:MAP_INPUTS]
    for prefix, key in QUICK.items():
        if not case.path.startswith(prefix):
            continue
        if isinstance(case.body, dict) and key in case.body:
            return
        query = dict(case.query or {})
        query.setdefault(key, "0")
        case.query = query
