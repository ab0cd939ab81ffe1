-- Records how a running call ended: only a running call ends, and only
-- from the run of the attempt it is on (a compare-and-set), so a call ends
-- once, with the outcome of the attempt it reports.
-- KEYS[1] the call's hash.
-- ARGV: prefix, id, ended state code, now_ms, expires_ms, the attempt
-- that ended ('0': whichever), how many outcome fields follow, those
-- fields as name, value pairs, then the names of the outcome fields to
-- delete.
-- Answers 1 when recorded, 0 when the call was not running (or is on
-- another attempt: a replica whose lease lapsed finishing late).

local key, id, state = KEYS[1], ARGV[2], ARGV[3]
local now = redis.call('HMGET', key, 'state', 'attempt')
if now[1] ~= '1' then
  return 0
end
if ARGV[6] ~= '0' and now[2] ~= ARGV[6] then
  return 0
end
local set_count = tonumber(ARGV[7])
local fields = {'state', state}
for i = 8, 7 + 2 * set_count do
  fields[#fields + 1] = ARGV[i]
end
redis.call('HSET', key, unpack(fields))
local dropped = {}
for i = 8 + 2 * set_count, #ARGV do
  dropped[#dropped + 1] = ARGV[i]
end
if #dropped > 0 then
  redis.call('HDEL', key, unpack(dropped))
end
redis.call('ZREM', prefix .. 'leases', id)
ended(id, key, ARGV[4], ARGV[5])
count_state('1', state)
redis.call('PUBLISH', prefix .. 'events', 'e ' .. id)
return 1
