-- Delete jobs that are not running. KEYS[1]: the queue's base. ARGV: ids.
-- Returns how many were deleted.
local base = KEYS[1]
local n = 0
for _, id in ipairs(ARGV) do
  local jk = job_key(base, id)
  local v = redis.call('HMGET', jk, 's', 'z', 'k')
  if v[1] and v[1] ~= 'running' then
    unlist(base, id, v[2])
    release_key(base, id, v[3])
    unfinish(base, id, v[1])
    redis.call('ZREM', base .. ':created', id)
    redis.call('UNLINK', jk)
    n = n + 1
  end
end
return n
