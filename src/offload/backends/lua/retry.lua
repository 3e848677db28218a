-- Queue a dead or cancelled job again now, attempts reset. KEYS[1]: the queue's base.
-- ARGV: id. Returns {} when unknown, {'invalid', state}, or {'ok', fields}.
local base, id = KEYS[1], ARGV[1]
local jk = job_key(base, id)
local v = redis.call('HMGET', jk, 's', 'z', 'p', 'k')
local state = v[1]
if not state then return {} end
if state ~= 'dead' and state ~= 'cancelled' then return {'invalid', state} end
local now = now_us()
redis.call('ZREM', base .. ':' .. state, id)
redis.call('PERSIST', jk)
redis.call('HDEL', jk, 'f', 'e', 'o', 'w', 'l')
redis.call('HSET', jk, 'a', 0)
place(base, jk, v[2], tonumber(v[3]), now, now)
if v[4] then redis.call('HSETNX', base .. ':keys', v[4], id) end
wake(base)
return {'ok', redis.call('HGETALL', jk)}
