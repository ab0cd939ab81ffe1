-- Takes over up to `limit` lapsed leases (their replica stopped): a
-- running call goes back to its queue; a running input of a running map
-- back to its map's pending list. Anything else is just dropped.
-- KEYS[1] the leases. ARGV: prefix, limit.
-- Answers {leases looked at, pending, {app, function, ...}, {map id, ...}}.

local leases = KEYS[1]
local lapsed = redis.call('ZRANGEBYSCORE', leases, '-inf', redis_now_ms(), 'LIMIT', 0, ARGV[2])
local functions, maps, seen = {}, {}, {}

local function take_call(id, key)
  local call = redis.call('HMGET', key, 'state', 'map_inputs', 'app', 'function')
  if call[1] ~= '1' or call[2] then
    return
  end
  redis.call('HSET', key, 'state', 0)
  count_state('1', '0')
  local name = 'p ' .. call[3] .. '/' .. call[4]
  enqueue(id, key, call[3], call[4], seen[name])
  if not seen[name] then
    seen[name] = true
    functions[#functions + 1] = call[3]
    functions[#functions + 1] = call[4]
  end
end

-- `{map id}-{index}`: split at the last '-' (call ids may hold '-').
local function take_input(member)
  local map_id, index = string.match(member, '^(.+)%-(%d+)$')
  if not map_id then
    return
  end
  local map_key = prefix .. 'call:' .. map_id
  local map = redis.call('HMGET', map_key, 'state', 'map_inputs')
  local map_keys = prefix .. 'map:' .. map_id
  if map[1] ~= '1' or not map[2]
    or redis.call('HGET', map_keys .. ':inputs', index .. ':s') ~= '1' then
    return
  end
  redis.call('HSET', map_keys .. ':inputs', index .. ':s', 0)
  redis.call('LPUSH', map_keys .. ':pending', index)
  redis.call('SREM', map_keys .. ':running', index)
  redis.call('HINCRBY', map_key, 'inputs_running', -1)
  redis.call('HINCRBY', map_key, 'inputs_pending', 1)
  if not seen['m ' .. map_id] then
    seen['m ' .. map_id] = true
    maps[#maps + 1] = map_id
    redis.call('PUBLISH', prefix .. 'events', 'm ' .. map_id)
  end
end

for _, member in ipairs(lapsed) do
  redis.call('ZREM', leases, member)
  local key = prefix .. 'call:' .. member
  if redis.call('EXISTS', key) == 1 then
    take_call(member, key)
  else
    take_input(member)
  end
end
return {#lapsed, pending_now(), functions, maps}
