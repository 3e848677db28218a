-- Forget workers past their ttl (or ARGV[1], when given, at once); list the others.
-- KEYS[1]: the global base. Returns {id, report, last seen (us)} per live worker.
local base = KEYS[1]
local gone = redis.call('ZRANGEBYSCORE', base .. ':workers', '-inf', now_us())
if ARGV[1] then gone[#gone + 1] = ARGV[1] end
for _, id in ipairs(gone) do
  redis.call('ZREM', base .. ':workers', id)
  redis.call('HDEL', base .. ':winfo', id)
  redis.call('HDEL', base .. ':wseen', id)
end
local out = {}
for _, id in ipairs(redis.call('ZRANGE', base .. ':workers', 0, -1)) do
  out[#out + 1] = {id, redis.call('HGET', base .. ':winfo', id) or '',
    redis.call('HGET', base .. ':wseen', id) or '0'}
end
return out
