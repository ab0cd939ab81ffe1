-- Takes the due webhook deliveries and leases them to this replica: their
-- score moves to now + lease, so no other replica takes them meanwhile; a
-- sender that dies mid-attempt leaves them to come due again then.
-- KEYS[1] P deliveries
-- ARGV[1] now (ms), ARGV[2] most to take, ARGV[3] the lease (ms),
-- ARGV[4] the prefix: a delivery's hash is `P delivery:{id}`, derived
-- here from its id (so this script does not run on a Redis cluster).
-- Answers {{id, url, attempts}, ...} and the lowest score above now after
-- the leases (false when there is none).
local now = tonumber(ARGV[1])
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
local leased_until = now + tonumber(ARGV[3])
local taken = {}
for _, id in ipairs(due) do
  local delivery = redis.call('HMGET', ARGV[4] .. 'delivery:' .. id, 'url', 'attempts')
  if delivery[1] then
    redis.call('ZADD', KEYS[1], leased_until, id)
    taken[#taken + 1] = {id, delivery[1], delivery[2] or '0'}
  else
    -- Its hash is gone (swept with its call): nothing to send.
    redis.call('ZREM', KEYS[1], id)
  end
end
local next = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
local next_due = false
if next[2] then
  next_due = tonumber(next[2])
end
return {taken, next_due}
