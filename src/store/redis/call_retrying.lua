-- A running call about to run again after a retry's pause counts the
-- attempt. KEYS[1] the call's hash. ARGV: prefix, now_ms.
-- Answers 1 when counted, 0 when it was not running.

local key = KEYS[1]
if redis.call('HGET', key, 'state') ~= '1' then
  return 0
end
redis.call('HINCRBY', key, 'attempt', 1)
redis.call('HSET', key, 'started_ms', ARGV[2])
return 1
