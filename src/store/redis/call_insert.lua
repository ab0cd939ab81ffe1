-- Stores a new call, or answers the one its idempotency key made.
-- KEYS[1] the call's hash, KEYS[2] (optional) its idempotency key.
-- ARGV: prefix, id, now_ms, claim_timeout_ms, request digest, then the
-- hash's fields as name, value pairs (`state` among them).
-- Answers {1, pending} when stored, {2, same request 0/1, the existing
-- call's fields} when the key was used.

local key, idem_key = KEYS[1], KEYS[2]
local id, now = ARGV[2], tonumber(ARGV[3])

if idem_key then
  local existing = redis.call('GET', idem_key)
  if existing then
    local existing_key = prefix .. 'call:' .. existing
    local stored = redis.call('HMGET', existing_key, 'expires_ms', 'idem_hash', 'id')
    if stored[1] and tonumber(stored[1]) <= now then
      -- The key expired with its call: the key is free again.
      delete_call(existing)
    elseif stored[3] then
      local same = stored[2] == ARGV[5] and 1 or 0
      return {2, same, redis.call('HGETALL', existing_key)}
    end
  end
end

if redis.call('EXISTS', key) == 1 then
  return redis.error_reply('call id ' .. id .. ' is taken')
end

local fields, state, app, fn = {}, nil, nil, nil
for i = 6, #ARGV, 2 do
  local name, value = ARGV[i], ARGV[i + 1]
  fields[#fields + 1] = name
  fields[#fields + 1] = value
  if name == 'state' then
    state = value
  elseif name == 'app' then
    app = value
  elseif name == 'function' then
    fn = value
  end
end
redis.call('HSET', key, unpack(fields))
if idem_key then
  redis.call('HSET', key, 'idem', idem_key, 'idem_hash', ARGV[5])
  redis.call('SET', idem_key, id)
end
count_state(nil, state)

if state == '0' then
  return {1, enqueue(id, key, app, fn)}
end
if state == '1' then
  -- An adopted sync call runs here from now on.
  redis.call('ZADD', prefix .. 'leases', lease_until(ARGV[4]), id)
end
return {1, pending_now()}
