-- Delete at most `max` finished jobs (in all, over the indexes given) finished longer ago than
-- each index's age: one bounded batch of a purge or of retention by the backend's policy,
-- repeated by the caller while a batch comes back full, so no script holds Redis for long.
-- KEYS[1]: the queue's base. ARGV: max, then pairs of (finished index, age in s), the index
-- being a state ('succeeded': jobs under the backend's retention) or 'own:<state>' (jobs with
-- their own). Returns how many.
local base = KEYS[1]
local now = now_us()
local left = tonumber(ARGV[1])
local n = 0
for i = 2, #ARGV, 2 do
  if left <= 0 then break end
  local set = base .. ':' .. ARGV[i]
  local cutoff = now - tonumber(ARGV[i + 1]) * 1000000
  local ids = redis.call('ZRANGEBYSCORE', set, '-inf', cutoff, 'LIMIT', 0, left)
  for _, id in ipairs(ids) do
    redis.call('UNLINK', job_key(base, id))
    redis.call('ZREM', base .. ':created', id)
  end
  if #ids > 0 then
    redis.call('ZREM', set, unpack(ids))
    if string.sub(ARGV[i], 1, 4) == 'own:' then redis.call('ZREM', base .. ':expiry', unpack(ids)) end
  end
  n = n + #ids
  left = left - #ids
end
return n
