-- Records how a running input of a running map ended (its arguments
-- dropped: no run follows), and ends the map with its last open input.
--
-- KEYS: call hash, inputs hash, pending list, running set, open maps,
-- states, events, expiry, deliveries, delivery hash, leases.
-- ARGV: id, index, ended state code, outcome (encoded), now (ms),
-- expires (ms).
-- Answers {recorded, map ended} (0/1 each): nothing is recorded for an
-- input that is not running (taken over) or of a map that is not
-- running (cancelled, swept).
local k = {
  call = KEYS[1], inputs = KEYS[2], pending = KEYS[3], running = KEYS[4],
  maps = KEYS[5], states = KEYS[6], events = KEYS[7], expiry = KEYS[8],
  deliveries = KEYS[9], delivery = KEYS[10],
}
local id, index, code = ARGV[1], ARGV[2], ARGV[3]
if redis.call('HGET', k.call, 'state') ~= '1' then
  return {0, 0}
end
if redis.call('HGET', k.inputs, index .. ':s') ~= '1' then
  return {0, 0}
end
redis.call('HSET', k.inputs, index .. ':s', code, index .. ':out', ARGV[4])
redis.call('HDEL', k.inputs, index .. ':in')
redis.call('SREM', k.running, index)
redis.call('ZREM', KEYS[11], id .. '-' .. index)
local running = redis.call('HINCRBY', k.call, 'inputs_running', -1)
redis.call('HINCRBY', k.call, code == '2' and 'inputs_succeeded' or 'inputs_failed', 1)
if running > 0 or tonumber(redis.call('HGET', k.call, 'inputs_pending') or '0') > 0 then
  return {1, 0}
end
end_map(k, id, ARGV[5], ARGV[6])
return {1, 1}
