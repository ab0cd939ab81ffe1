// A Node Lambda handler module whose set-up fails, for the init error tests:
// loading it throws, so aws-lambda-ric posts the error to
// /runtime/init/error and exits before any call.
"use strict";

throw new Error("no model file");
