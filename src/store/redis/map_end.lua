-- The end of a spawned map whose inputs have all ended, shared by the
-- insert (a map with nothing to run) and an input's end (its last one):
-- `succeeded`, with the embedded store's summary of its inputs as its
-- result, expiring at `expires`, its webhook queued (unless it already
-- is), out of the open maps, and `e {id}` published. Prepended to the
-- scripts that call it.
local function end_map(k, id, now, expires)
  local counts = redis.call('HMGET', k.call, 'map_inputs', 'inputs_succeeded',
    'inputs_failed', 'callback_url')
  local summary = '{"failed":' .. (counts[3] or '0') .. ',"inputs":' .. (counts[1] or '0')
    .. ',"succeeded":' .. (counts[2] or '0') .. '}'
  redis.call('HSET', k.call, 'state', '2', 'result', summary, 'finished_ms', now,
    'expires_ms', expires)
  redis.call('ZADD', k.expiry, expires, id)
  if counts[4] and not redis.call('ZSCORE', k.deliveries, id) then
    redis.call('ZADD', k.deliveries, now, id)
    redis.call('HSET', k.delivery, 'url', counts[4], 'attempts', '0')
  end
  redis.call('SREM', k.maps, id)
  redis.call('DEL', k.running)
  redis.call('HINCRBY', k.states, '1', -1)
  redis.call('HINCRBY', k.states, '2', 1)
  redis.call('PUBLISH', k.events, 'e ' .. id)
end
