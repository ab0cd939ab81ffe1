-- The end of a spawned map whose inputs have all ended, shared by the
-- insert (a map with nothing to run) and an input's end (its last one):
-- `succeeded`, with the embedded store's summary of its inputs as its
-- result, ended as any call ends (`ended`: expiry, its webhook queued
-- once), out of the open maps, and `e {id}` published. Prepended, after
-- `call_common.lua`, to the scripts that call it; `k` holds the map's
-- own keys.
local function end_map(k, id, now, expires)
  local counts = redis.call('HMGET', k.call, 'map_inputs', 'inputs_succeeded', 'inputs_failed')
  local summary = '{"failed":' .. (counts[3] or '0') .. ',"inputs":' .. (counts[1] or '0')
    .. ',"succeeded":' .. (counts[2] or '0') .. '}'
  redis.call('HSET', k.call, 'state', '2', 'result', summary)
  ended(id, k.call, now, expires)
  redis.call('SREM', prefix .. 'maps', id)
  redis.call('DEL', k.running)
  count_state('1', '2')
  redis.call('PUBLISH', prefix .. 'events', 'e ' .. id)
end
