-- Records an attempt at a webhook delivery.
-- KEYS[1] P deliveries, KEYS[2] P delivery:{id}
-- ARGV[1] the call id, ARGV[2] attempts so far, ARGV[3] when it is due
-- again (ms), or '' for never: the delivery ends.
-- A delivery that is gone (ended meanwhile, or swept) stays gone.
if ARGV[3] == '' then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('DEL', KEYS[2])
elseif redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('ZADD', KEYS[1], 'XX', ARGV[3], ARGV[1])
  redis.call('HSET', KEYS[2], 'attempts', ARGV[2])
end
return 0
