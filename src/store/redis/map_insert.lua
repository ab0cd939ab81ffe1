-- Stores a spawned map and every input at once, or finds the map (or
-- call) its idempotency key made.
--
-- KEYS: call hash, inputs hash, pending list, running set, open maps,
-- states, events, expiry, deliveries, delivery hash, [idempotency key].
-- ARGV: id, prefix, now (ms), expires (ms), request digest, inputs,
-- runnable inputs, call field count F, F name/value pairs, then per input
-- its state code ('0' runs, '3' refused) and its arguments or problem.
--
-- The existing call's key is made from the prefix (no cluster support:
-- every key must be on one node).
--
-- Answers {0, 0, {}} when stored, {1, same request (0/1), its fields}
-- when the key was taken.
local k = {
  call = KEYS[1], inputs = KEYS[2], pending = KEYS[3], running = KEYS[4],
  maps = KEYS[5], states = KEYS[6], events = KEYS[7], expiry = KEYS[8],
  deliveries = KEYS[9], delivery = KEYS[10],
}
local idem = KEYS[11]
local id, prefix, now, expires, digest = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local count, runnable, nfields = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])

if idem then
  local existing = redis.call('GET', idem)
  if existing then
    local key = prefix .. 'call:' .. existing
    local fields = redis.call('HGETALL', key)
    if #fields > 0 then
      local ends = tonumber(redis.call('HGET', key, 'expires_ms'))
      if not ends or ends > tonumber(now) then
        local same = redis.call('HGET', key, 'idem_hash') == digest and 1 or 0
        return {1, same, fields}
      end
      -- It expired with its call: the key is free again, and the sweep
      -- that deletes the old call no longer deletes the key.
      redis.call('HDEL', key, 'idem')
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

redis.call('HINCRBY', k.states, '1', 1)
if runnable == 0 then
  end_map(k, id, now, expires)
else
  redis.call('SADD', k.maps, id)
  redis.call('PUBLISH', k.events, 'm ' .. id)
end
return {0, 0, {}}
