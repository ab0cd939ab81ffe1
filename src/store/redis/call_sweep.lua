-- Deletes up to `limit` calls whose retention has passed, each with every
-- key that belongs to it.
-- ARGV: prefix, now_ms, limit.
-- Answers {expiry members looked at, calls deleted}.

local expired = redis.call('ZRANGEBYSCORE', prefix .. 'expiry', '-inf', ARGV[2], 'LIMIT', 0,
  ARGV[3])
local deleted = 0
for _, id in ipairs(expired) do
  if delete_call(id) then
    deleted = deleted + 1
  end
end
return {#expired, deleted}
