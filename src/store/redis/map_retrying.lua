-- A running input of a running map about to run again counts the
-- attempt. KEYS: call hash, inputs hash. ARGV: index.
-- Answers 1, or 0 when it is not running (or its map is not).
if redis.call('HGET', KEYS[1], 'state') ~= '1' then
  return 0
end
if redis.call('HGET', KEYS[2], ARGV[1] .. ':s') ~= '1' then
  return 0
end
redis.call('HINCRBY', KEYS[2], ARGV[1] .. ':a', 1)
return 1
