-- Stores a spawned map and every input at once, or finds the map (or
-- call) its idempotency key made. After `call_common.lua` and
-- `map_end.lua`.
--
-- KEYS: call hash, inputs hash, pending list, running set,
-- [idempotency key].
-- ARGV: prefix, id, now (ms), expires (ms), request digest, inputs,
-- runnable inputs, call field count F, F name/value pairs, then per input
-- its state code ('0' runs, '3' refused) and its arguments or problem.
--
-- Answers {0, 0, {}} when stored, {1, same request (0/1), its fields}
-- when the key was taken.
local k = {call = KEYS[1], inputs = KEYS[2], pending = KEYS[3], running = KEYS[4]}
local idem = KEYS[5]
local id, now, expires, digest = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local count, runnable, nfields = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])

if idem then
  local existing = redis.call('GET', idem)
  if existing then
    local key = prefix .. 'call:' .. existing
    local stored = redis.call('HMGET', key, 'expires_ms', 'idem_hash', 'id')
    if stored[1] and tonumber(stored[1]) <= tonumber(now) then
      -- The key expired with its call: the key is free again.
      delete_call(existing)
    elseif stored[3] then
      local same = stored[2] == digest and 1 or 0
      return {1, same, redis.call('HGETALL', key)}
    end
  end
end
if redis.call('EXISTS', k.call) == 1 then
  return redis.error_reply('call id ' .. id .. ' is taken')
end

redis.call('HSET', k.call, unpack(ARGV, 9, 8 + 2 * nfields))
if idem then
  redis.call('SET', idem, id)
end

-- Inputs in chunks: one command takes a few thousand arguments at most.
local first = 9 + 2 * nfields
local fields, pending = {}, {}
for index = 0, count - 1 do
  local code = ARGV[first + 2 * index]
  fields[#fields + 1] = index .. ':s'
  fields[#fields + 1] = code
  if code == '0' then
    fields[#fields + 1] = index .. ':in'
    pending[#pending + 1] = index
  else
    fields[#fields + 1] = index .. ':out'
  end
  fields[#fields + 1] = ARGV[first + 2 * index + 1]
  if #fields >= 2000 then
    redis.call('HSET', k.inputs, unpack(fields))
    fields = {}
  end
  if #pending >= 1000 then
    redis.call('RPUSH', k.pending, unpack(pending))
    pending = {}
  end
end
if #fields > 0 then
  redis.call('HSET', k.inputs, unpack(fields))
end
if #pending > 0 then
  redis.call('RPUSH', k.pending, unpack(pending))
end

count_state(nil, '1')
if runnable == 0 then
  end_map(k, id, now, expires)
else
  redis.call('SADD', prefix .. 'maps', id)
  redis.call('PUBLISH', prefix .. 'events', 'm ' .. id)
end
return {0, 0, {}}
