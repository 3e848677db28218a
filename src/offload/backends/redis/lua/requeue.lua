-- Queue a dead or cancelled job again now, attempts reset. KEYS[1]: the queue's base.
-- ARGV: id. Returns {} when unknown, {'invalid', state} (also when another active job holds
-- its key: at most one active job per key), or {'ok', fields}.
local base, id = KEYS[1], ARGV[1]
local jk = job_key(base, id)
local v = redis.call('HMGET', jk, 's', 'z', 'p', 'k')
local state, key = v[1], v[4]
if not state then return {} end
if state ~= 'dead' and state ~= 'cancelled' then return {'invalid', state} end
if key then
  local held = redis.call('HGET', base .. ':keys', key)
  if held and held ~= id and is_active(redis.call('HGET', job_key(base, held), 's')) then
    return {'invalid', 'key'}
  end
  redis.call('HSET', base .. ':keys', key, id)
end
local now = now_us()
unfinish(base, id, state)
redis.call('PERSIST', jk)
redis.call('HDEL', jk, 'f', 'e', 'o', 'w', 'l')
redis.call('HSET', jk, 'a', 0)
place(base, jk, v[2], tonumber(v[3]), now, now)
wake(base)
return {'ok', redis.call('HGETALL', jk)}
