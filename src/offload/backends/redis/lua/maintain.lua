-- Delete finished jobs older than the retention, at most `max` per state.
-- KEYS[1]: the queue's base. ARGV: retention (s), max. Returns how many were deleted.
local base = KEYS[1]
local cutoff = now_us() - tonumber(ARGV[1]) * 1000000
local max = tonumber(ARGV[2])
local n = 0
for _, state in ipairs({'succeeded', 'dead', 'cancelled'}) do
  local set = base .. ':' .. state
  local ids = redis.call('ZRANGEBYSCORE', set, '-inf', cutoff, 'LIMIT', 0, max)
  for _, id in ipairs(ids) do
    redis.call('UNLINK', job_key(base, id))
    redis.call('ZREM', base .. ':created', id)
  end
  if #ids > 0 then redis.call('ZREM', set, unpack(ids)) end
  n = n + #ids
end
return n
