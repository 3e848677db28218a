-- Extend the leases still held. KEYS[1]: the queue's base.
-- ARGV: lease (us), then id, worker id, attempt per lease. Returns the ids still held.
local base = KEYS[1]
local expires = now_us() + tonumber(ARGV[1])
local exp_s = string.format('%.0f', expires)
local held = {}
for i = 2, #ARGV, 3 do
  local id = ARGV[i]
  local jk = job_key(base, id)
  local v = redis.call('HMGET', jk, 's', 'w', 'a')
  if v[1] == 'running' and v[2] == ARGV[i + 1] and v[3] == ARGV[i + 2] then
    redis.call('HSET', jk, 'l', exp_s)
    redis.call('ZADD', base .. ':lease', expires, id)
    held[#held + 1] = id
  end
end
return held
