// A streaming Lambda handler for Node's aws-lambda-ric
// (awslambda.streamifyResponse), as tests/streaming/gated.py streams:
// {"item": n} lines, `count` of them (default 2), waiting after the first
// until the file `gate` exists; `fail` throws after the items.
"use strict";

const fs = require("node:fs");

const opened = (gate) =>
  new Promise((resolve) => {
    const look = () => (fs.existsSync(gate) ? resolve() : setTimeout(look, 5));
    look();
  });

exports.handler = awslambda.streamifyResponse(async (event, responseStream) => {
  const kwargs = event.kwargs || {};
  const count = kwargs.count ?? 2;
  for (let n = 1; n <= count; n++) {
    responseStream.write(JSON.stringify({ item: n }) + "\n");
    if (n === 1 && kwargs.gate) await opened(kwargs.gate);
  }
  if (kwargs.fail) throw new TypeError(kwargs.fail);
  responseStream.end();
});
