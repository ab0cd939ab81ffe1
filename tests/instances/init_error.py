"""A Lambda handler module whose set-up fails, for the init error tests.

Importing it raises RuntimeError("no model file"), as a function whose
model is missing would: the runtime client posts that to
/runtime/init/error and exits, and no call ever reaches `handler`.
"""

raise RuntimeError("no model file")


def handler(event, context):  # never reached
    return None
