"""A warm (lambda) handler that calls demo/square through the gateway with
the event's call_token, and FNGATE_URL from its environment; it says who
started its instance (SERVED_BY: the gateway, or a worker)."""

import os

from gateway_client import call


def handler(event, context):
    x = event["kwargs"]["x"]
    status, body, _ = call("/demo/square", {"x": x}, event["call_token"])
    return {"status": status, "square": body, "served_by": os.environ.get("SERVED_BY")}
