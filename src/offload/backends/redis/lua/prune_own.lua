-- Delete at most ARGV[1] finished jobs past their own retention (their task's retention=):
-- those whose time in base:expiry (finish + own retention) has come. One bounded batch,
-- repeated by the caller while a batch comes back full. KEYS[1]: the queue's base.
-- Returns how many.
local base = KEYS[1]
local ids = redis.call('ZRANGEBYSCORE', base .. ':expiry', '-inf', now_us(), 'LIMIT', 0,
  tonumber(ARGV[1]))
for _, id in ipairs(ids) do
  local jk = job_key(base, id)
  local state = redis.call('HGET', jk, 's')
  if state then
    redis.call('ZREM', base .. ':own:' .. state, id)
  else -- its hash already expired (the backstop ttl): out of every own index
    for _, s in ipairs({'succeeded', 'dead', 'cancelled'}) do
      redis.call('ZREM', base .. ':own:' .. s, id)
    end
  end
  redis.call('UNLINK', jk)
  redis.call('ZREM', base .. ':created', id)
end
if #ids > 0 then redis.call('ZREM', base .. ':expiry', unpack(ids)) end
return #ids
