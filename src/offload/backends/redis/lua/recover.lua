-- Put back running jobs whose lease has expired.
-- KEYS[1]: the queue's base. ARGV: retention (s), the error to record, at most how many.
-- Returns how many jobs were put back (or buried, when out of attempts).
local base = KEYS[1]
local retention, reason, max = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local now = now_us()
local ids = redis.call('ZRANGEBYSCORE', base .. ':lease', '-inf', now, 'LIMIT', 0, max)
local acc = new_acc(base, now)
local requeued = false
local n = 0
for _, id in ipairs(ids) do
  local jk = job_key(base, id)
  local v = redis.call('HMGET', jk, 's', 'a', 'm', 'w', 'z', 'p', 'k')
  if v[1] == 'running' then
    n = n + 1
    local attempt = tonumber(v[2])
    add_error(jk, attempt, now, reason, v[4])
    if attempt >= tonumber(v[3]) then
      finish(base, id, jk, 'dead', now, retention, reason, v[7], acc)
    else
      redis.call('HDEL', jk, 'w', 'l')
      place(base, jk, v[5], tonumber(v[6]), now, now)
      requeued = true
    end
  end
  acc.rem[#acc.rem + 1] = id -- stale index entries go too
end
flush(base, acc)
if requeued then wake(base) end
return n
