-- Records how a running input of a running map ended (its arguments
-- dropped: no run follows), and ends the map with its last open input.
-- After `call_common.lua` and `map_end.lua`.
--
-- KEYS: call hash, inputs hash, pending list, running set, leases.
-- ARGV: prefix, id, index, ended state code, outcome (encoded), now (ms),
-- expires (ms).
-- Answers {recorded, map ended} (0/1 each): nothing is recorded for an
-- input that is not running (taken over) or of a map that is not
-- running (cancelled, swept).
local k = {call = KEYS[1], inputs = KEYS[2], pending = KEYS[3], running = KEYS[4]}
local id, index, code = ARGV[2], ARGV[3], ARGV[4]
if redis.call('HGET', k.call, 'state') ~= '1' then
  return {0, 0}
end
if redis.call('HGET', k.inputs, index .. ':s') ~= '1' then
  return {0, 0}
end
redis.call('HSET', k.inputs, index .. ':s', code, index .. ':out', ARGV[5])
redis.call('HDEL', k.inputs, index .. ':in')
redis.call('SREM', k.running, index)
redis.call('ZREM', KEYS[5], id .. '-' .. index)
local running = redis.call('HINCRBY', k.call, 'inputs_running', -1)
redis.call('HINCRBY', k.call, code == '2' and 'inputs_succeeded' or 'inputs_failed', 1)
if running > 0 or tonumber(redis.call('HGET', k.call, 'inputs_pending') or '0') > 0 then
  return {1, 0}
end
end_map(k, id, ARGV[6], ARGV[7])
return {1, 1}
