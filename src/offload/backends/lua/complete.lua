-- Apply outcomes. KEYS[1]: the queue's base. ARGV: retention (s, -1: for ever), then 6 values per outcome:
-- id, worker id, attempt, kind, number, text. Kinds: S succeeded (text = result), s succeeded
-- without result, D dead (text = error), C cancelled (text = reason), R retry (number = delay
-- in us, text = error), Z snoozed (number = delay in us). A lease that no longer holds: no-op.
local base = KEYS[1]
local retention = tonumber(ARGV[1])
local now = now_us()
local requeued = false
local n = 0
for i = 2, #ARGV, 6 do
  local id, worker, attempt, kind = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local jk = job_key(base, id)
  local v = redis.call('HMGET', jk, 's', 'w', 'a', 'z', 'p')
  if v[1] == 'running' and v[2] == worker and v[3] == attempt then
    n = n + 1
    if kind == 'S' then
      redis.call('HSET', jk, 'o', ARGV[i + 5])
      finish(base, id, jk, 'succeeded', now, retention, nil)
    elseif kind == 's' then
      finish(base, id, jk, 'succeeded', now, retention, nil)
    elseif kind == 'D' then
      add_error(jk, tonumber(attempt), now, ARGV[i + 5], worker)
      finish(base, id, jk, 'dead', now, retention, ARGV[i + 5])
    elseif kind == 'C' then
      finish(base, id, jk, 'cancelled', now, retention, ARGV[i + 5])
    else
      if kind == 'R' then
        add_error(jk, tonumber(attempt), now, ARGV[i + 5], worker)
      else
        redis.call('HINCRBY', jk, 'a', -1)
      end
      redis.call('HDEL', jk, 'w', 'l')
      redis.call('ZREM', base .. ':lease', id)
      place(base, jk, v[4], tonumber(v[5]), now + tonumber(ARGV[i + 4]), now)
      requeued = true
    end
  end
end
if requeued then wake(base) end
return n
