-- Delete finished jobs of the given states finished at least `age` ago.
-- KEYS[1]: the queue's base. ARGV: age (us), then states. Returns how many.
local base = KEYS[1]
local cutoff = now_us() - tonumber(ARGV[1])
local n = 0
for i = 2, #ARGV do
  local set = base .. ':' .. ARGV[i]
  while true do
    local ids = redis.call('ZRANGEBYSCORE', set, '-inf', cutoff, 'LIMIT', 0, 1000)
    if #ids == 0 then break end
    for _, id in ipairs(ids) do
      redis.call('UNLINK', job_key(base, id))
      redis.call('ZREM', base .. ':created', id)
    end
    redis.call('ZREM', set, unpack(ids))
    n = n + #ids
  end
end
return n
