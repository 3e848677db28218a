-- Find running jobs whose lease has expired, for the caller to decide their fate (see
-- recover.lua, which writes the decisions). KEYS[1]: the queue's base. ARGV: at most how many.
-- Returns the server's time (us), then 4 values per job: id, attempt, max attempts, worker id
-- ('' when none). Lease-set entries of jobs no longer running are stale: they are dropped here
-- (nothing to decide), in the same step that saw them, so a job claimed since keeps its entry.
local base = KEYS[1]
local now = now_us()
local ids = redis.call('ZRANGEBYSCORE', base .. ':lease', '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
local out = {fmt(now)}
local stale = {}
for _, id in ipairs(ids) do
  local v = redis.call('HMGET', job_key(base, id), 's', 'a', 'm', 'w')
  if v[1] == 'running' then
    out[#out + 1], out[#out + 2], out[#out + 3], out[#out + 4] = id, v[2], v[3], v[4] or ''
  else
    stale[#stale + 1] = id
  end
end
zrem_many(base .. ':lease', stale)
return out
