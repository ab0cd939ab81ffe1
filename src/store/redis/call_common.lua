-- What the call and lease scripts share; prepended to each of them.
-- ARGV[1] of every such script is the store's key prefix: scripts build
-- the keys of the calls they meet from it (so the keys a script touches
-- are not all declared: no Redis Cluster support, one node holds all).

local prefix = ARGV[1]

-- Redis' clock in ms: leases are scored by it, so every replica's leases
-- lapse by the same clock.
local function redis_now_ms()
  local time = redis.call('TIME')
  return tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
end

-- When a lease taken now lapses, as an integer text.
local function lease_until(timeout_ms)
  return string.format('%.0f', redis_now_ms() + tonumber(timeout_ms))
end

-- Moves one call from state `from` to state `to` in the counts per state
-- (codes as stored; nil: none, for a call created or deleted).
local function count_state(from, to)
  local states = prefix .. 'states'
  if from then
    redis.call('HINCRBY', states, from, -1)
  end
  if to then
    redis.call('HINCRBY', states, to, 1)
  end
end

-- Puts a call (already in state 0) at the end of its function's queue and
-- tells the replicas (unless `quiet`: they were told already); answers the
-- new pending count.
local function enqueue(id, key, app, fn, quiet)
  local entry = redis.call('XADD', prefix .. 'queue:' .. app .. '/' .. fn, '*', 'id', id)
  redis.call('HSET', key, 'entry', entry)
  local pending = redis.call('INCR', prefix .. 'pending')
  if not quiet then
    redis.call('PUBLISH', prefix .. 'events', 'p ' .. app .. '/' .. fn)
  end
  return pending
end

-- What every end of a call writes (a finish or a cancel): when it ended
-- and expires, its place in the expiry set, and its webhook (once).
local function ended(id, key, now_ms, expires_ms)
  redis.call('HSET', key, 'finished_ms', now_ms, 'expires_ms', expires_ms)
  redis.call('ZADD', prefix .. 'expiry', expires_ms, id)
  local url = redis.call('HGET', key, 'callback_url')
  if url and not redis.call('ZSCORE', prefix .. 'deliveries', id) then
    redis.call('ZADD', prefix .. 'deliveries', now_ms, id)
    redis.call('HSET', prefix .. 'delivery:' .. id, 'url', url, 'attempts', 0)
  end
end

-- Deletes a call and every key that belongs to it; true when it existed.
local function delete_call(id)
  local key = prefix .. 'call:' .. id
  local call = redis.call('HMGET', key, 'state', 'idem')
  local state, idem = call[1], call[2]
  if idem and redis.call('GET', idem) == id then
    redis.call('DEL', idem)
  end
  local map = prefix .. 'map:' .. id
  redis.call('UNLINK', key, map .. ':inputs', map .. ':pending', map .. ':running',
    prefix .. 'delivery:' .. id)
  redis.call('ZREM', prefix .. 'deliveries', id)
  redis.call('ZREM', prefix .. 'expiry', id)
  redis.call('SREM', prefix .. 'maps', id)
  if state then
    count_state(state, nil)
  end
  return state ~= false
end

local function pending_now()
  return tonumber(redis.call('GET', prefix .. 'pending') or '0')
end
