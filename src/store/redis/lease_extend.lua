-- Extends the leases of what runs here, by id; an id without a lease (it
-- ended, or was taken over) is left without one.
-- KEYS[1] the leases. ARGV: prefix, claim_timeout_ms, then the ids.

local lease = lease_until(ARGV[2])
local args = {'ZADD', KEYS[1], 'XX'}
for i = 3, #ARGV do
  args[#args + 1] = lease
  args[#args + 1] = ARGV[i]
end
if #args > 3 then
  redis.call(unpack(args))
end
return 1
