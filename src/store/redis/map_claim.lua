-- Takes up to ARGV[2] of a running map's pending inputs, lowest first
-- (as they were pushed), marks them running with their attempt counted,
-- and leases each (`{id}-{index}`) for ARGV[3] ms from Redis' clock.
--
-- KEYS: call hash, inputs hash, pending list, running set, leases.
-- ARGV: id, limit, claim timeout (ms).
-- Answers {{index, attempt, arguments}, ...}; none for a map that is not
-- running (ended, cancelled, unknown).
if redis.call('HGET', KEYS[1], 'state') ~= '1' then
  return {}
end
local limit = tonumber(ARGV[2])
local time = redis.call('TIME')
local lapses = string.format('%.0f',
  tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000) + tonumber(ARGV[3]))
local claimed = {}
while #claimed < limit do
  local indexes = redis.call('LPOP', KEYS[3], limit - #claimed)
  if not indexes then
    break
  end
  for _, index in ipairs(indexes) do
    local state = index .. ':s'
    -- Only a pending input is in the list; anything else is dropped.
    if redis.call('HGET', KEYS[2], state) == '0' then
      redis.call('HSET', KEYS[2], state, '1')
      local attempt = redis.call('HINCRBY', KEYS[2], index .. ':a', 1)
      redis.call('SADD', KEYS[4], index)
      redis.call('ZADD', KEYS[5], lapses, ARGV[1] .. '-' .. index)
      claimed[#claimed + 1] = {index, attempt, redis.call('HGET', KEYS[2], index .. ':in') or ''}
    end
  end
end
if #claimed > 0 then
  redis.call('HINCRBY', KEYS[1], 'inputs_pending', -#claimed)
  redis.call('HINCRBY', KEYS[1], 'inputs_running', #claimed)
end
return claimed
