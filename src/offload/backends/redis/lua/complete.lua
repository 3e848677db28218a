-- Apply outcomes. KEYS[1]: the queue's base. ARGV[1]: retention (s, -1: for ever).
-- ARGV[2]: the outcomes, framed, 6 fields each: id, worker id, attempt, kind, number, text.
-- Kinds: S succeeded (text = result), s succeeded without result, D dead (text = error),
-- C cancelled (text = reason), R retry (number = delay in us, text = error), Z snoozed
-- (number = delay in us). An outcome whose lease no longer holds is a no-op.
-- Returns how many were applied.
local base = KEYS[1]
local retention = tonumber(ARGV[1])
local now = now_us()
local acc = new_acc(base, now)
local requeued = false
local n = 0
local src = ARGV[2]
local pos, size = 1, #src
while pos <= size do
  local id, worker, attempt, kind, number, text
  id, worker, attempt, kind, number, text, pos =
    struct.unpack('>I4c0I4c0I4c0I4c0I4c0I4c0', src, pos)
  local jk = job_key(base, id)
  local v = redis.call('HMGET', jk, 's', 'w', 'a', 'z', 'p', 'k')
  if v[1] == 'running' and v[2] == worker and v[3] == attempt then
    n = n + 1
    if kind == 'S' then
      redis.call('HSET', jk, 'o', text)
      finish(base, id, jk, 'succeeded', now, retention, nil, v[6], acc)
    elseif kind == 's' then
      finish(base, id, jk, 'succeeded', now, retention, nil, v[6], acc)
    elseif kind == 'D' then
      add_error(jk, tonumber(attempt), now, text, worker)
      finish(base, id, jk, 'dead', now, retention, text, v[6], acc)
    elseif kind == 'C' then
      finish(base, id, jk, 'cancelled', now, retention, text, v[6], acc)
    else
      if kind == 'R' then
        add_error(jk, tonumber(attempt), now, text, worker)
      else
        redis.call('HSET', jk, 'a', tonumber(attempt) - 1)
      end
      rewait(base, id, jk, v[4], tonumber(v[5]), now + tonumber(number), now, acc)
      requeued = true
    end
  end
end
flush(base, acc)
if requeued then wake(base) end
return n
