-- Takes up to `limit` of a function's pending calls, oldest first, and
-- marks them running with a lease. Entries read are acked and deleted at
-- once; an entry whose call is no longer pending (cancelled, swept) is
-- just dropped, and the reading goes on.
-- KEYS[1] the function's queue.
-- ARGV: prefix, consumer (this replica), limit, now_ms, claim_timeout_ms.
-- Answers {pending, the claimed calls' fields...}.

local queue = KEYS[1]
local consumer, limit, now = ARGV[2], tonumber(ARGV[3]), ARGV[4]
local answer = {0}
if redis.call('EXISTS', queue) == 0 then
  answer[1] = pending_now()
  return answer
end

local lease = lease_until(ARGV[5])
local claimed = 0
local group_made = false
while claimed < limit do
  local count = math.min(limit - claimed, 1000)
  local ok, read = pcall(redis.call, 'XREADGROUP', 'GROUP', 'dispatch', consumer,
    'COUNT', count, 'STREAMS', queue, '>')
  if not ok then
    local message = type(read) == 'table' and read.err or tostring(read)
    if group_made or not string.find(message, 'NOGROUP', 1, true) then
      return redis.error_reply(message)
    end
    redis.call('XGROUP', 'CREATE', queue, 'dispatch', '0', 'MKSTREAM')
    group_made = true
  else
    local entries = read and read[1] and read[1][2]
    if not entries or #entries == 0 then
      break
    end
    local entry_ids = {}
    for i, entry in ipairs(entries) do
      entry_ids[i] = entry[1]
    end
    redis.call('XACK', queue, 'dispatch', unpack(entry_ids))
    redis.call('XDEL', queue, unpack(entry_ids))
    for _, entry in ipairs(entries) do
      local fields, id = entry[2], nil
      for i = 1, #fields, 2 do
        if fields[i] == 'id' then
          id = fields[i + 1]
        end
      end
      local key = id and prefix .. 'call:' .. id
      if key and redis.call('HGET', key, 'state') == '0' then
        redis.call('HSET', key, 'state', 1, 'started_ms', now)
        redis.call('HINCRBY', key, 'attempt', 1)
        redis.call('HDEL', key, 'entry')
        redis.call('ZADD', prefix .. 'leases', lease, id)
        redis.call('DECR', prefix .. 'pending')
        count_state('0', '1')
        claimed = claimed + 1
        answer[claimed + 1] = redis.call('HGETALL', key)
      end
    end
  end
end
answer[1] = pending_now()
return answer
