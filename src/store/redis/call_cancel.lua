-- Cancels a pending or running call (a map with its open inputs).
-- KEYS[1] the call's hash.
-- ARGV: prefix, id, now_ms, expires_ms.
-- Answers {0} unknown (or expired), {1, state before, pending} cancelled
-- now, {2, state} already ended in that state.

local key, id, now, expires = KEYS[1], ARGV[2], ARGV[3], ARGV[4]
local call = redis.call('HMGET', key, 'state', 'expires_ms', 'app', 'function', 'entry',
  'map_inputs')
local state = call[1]
if not state or (call[2] and tonumber(call[2]) <= tonumber(now)) then
  return {0}
end
if state ~= '0' and state ~= '1' then
  return {2, tonumber(state)}
end

if state == '0' then
  if call[5] then
    redis.call('XDEL', prefix .. 'queue:' .. call[3] .. '/' .. call[4], call[5])
  end
  redis.call('HDEL', key, 'entry')
  redis.call('DECR', prefix .. 'pending')
else
  redis.call('ZREM', prefix .. 'leases', id)
end

if call[6] then
  -- A map's inputs that had not ended end with it: none is claimed or
  -- taken over again, and their counts move to cancelled.
  local map = prefix .. 'map:' .. id
  for _, index in ipairs(redis.call('SMEMBERS', map .. ':running')) do
    redis.call('ZREM', prefix .. 'leases', id .. '-' .. index)
  end
  redis.call('DEL', map .. ':pending', map .. ':running')
  redis.call('SREM', prefix .. 'maps', id)
  local counts = redis.call('HMGET', key, 'inputs_pending', 'inputs_running')
  local open = tonumber(counts[1] or '0') + tonumber(counts[2] or '0')
  redis.call('HINCRBY', key, 'inputs_cancelled', open)
  redis.call('HSET', key, 'inputs_pending', 0, 'inputs_running', 0)
end

redis.call('HSET', key, 'state', 5)
ended(id, key, now, expires)
count_state(state, '5')
redis.call('PUBLISH', prefix .. 'events', 'c ' .. id)
return {1, tonumber(state), pending_now()}
