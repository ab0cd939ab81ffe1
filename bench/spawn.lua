-- wrk: spawn a call with a small JSON body; counts non-202 answers.
wrk.method = "POST"
wrk.body   = '{"x":42}'
wrk.headers["Content-Type"] = "application/json"

local bad = 0
function response(status, headers, body)
  if status ~= 202 then bad = bad + 1 end
end

function done(summary, latency, requests)
  io.write(string.format("non-202 answers: %d\n", bad))
end
