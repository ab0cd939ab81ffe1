-- A running call whose run was lost goes back to the end of its queue,
-- its lease dropped; it runs again with its attempt counted at the claim.
-- KEYS[1] the call's hash. ARGV: prefix, id.
-- Answers {1, pending} when requeued, {0} when it was not running.

local key, id = KEYS[1], ARGV[2]
local call = redis.call('HMGET', key, 'state', 'app', 'function')
if call[1] ~= '1' then
  return {0}
end
redis.call('HSET', key, 'state', 0)
redis.call('ZREM', prefix .. 'leases', id)
count_state('1', '0')
return {1, enqueue(id, key, call[2], call[3])}
