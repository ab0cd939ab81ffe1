// A Node Lambda handler for the warm-instance black-box tests, run by
// aws-lambda-ric (the AWS runtime interface client for Node.js).
//
// Loading it is the instance's set-up: it appends this process's pid to the
// file named by SETUP_COUNT_FILE. The handler answers as
// tests/instances/setup_counter.py does: {pid, function, params, kwargs,
// class, parameters}; kwargs "sleep" (seconds) holds the instance busy and
// "fail" throws Error("asked to fail").
"use strict";

const fs = require("node:fs");

if (process.env.SETUP_COUNT_FILE) {
  fs.appendFileSync(process.env.SETUP_COUNT_FILE, `${process.pid}\n`);
}

exports.handler = async (event) => {
  const kwargs = event.kwargs || {};
  if (kwargs.sleep) {
    await new Promise((resolve) => setTimeout(resolve, Number(kwargs.sleep) * 1000));
  }
  if (kwargs.fail) {
    throw new Error("asked to fail");
  }
  const params = {};
  for (const [key, value] of Object.entries(process.env)) {
    if (key.startsWith("FNGATE_PARAM_")) params[key] = value;
  }
  return {
    pid: process.pid,
    function: event.function,
    params,
    kwargs: event.kwargs,
    class: event.class ?? null,
    parameters: event.parameters ?? null,
  };
};
