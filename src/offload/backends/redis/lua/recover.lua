-- Write the decisions taken for expired leases (found by expired.lua, decided in Python by
-- offload.backends.common.expired_lease), each fenced: it takes effect only if the job is
-- still running the same attempt for the same worker and its lease is still expired now, so
-- a job finished, re-claimed or heartbeaten in between is left alone.
-- KEYS[1]: the queue's base. ARGV: retention (s, -1: for ever), the decisions' time (us),
-- then 5 values per job: id, worker id ('' when none), attempt, fate ('queued' or 'dead'),
-- the error to record. Returns how many were put back (or buried).
local base = KEYS[1]
local retention, at = tonumber(ARGV[1]), tonumber(ARGV[2])
local now = now_us()
local acc = new_acc(base, now)
local requeued = false
local n = 0
for i = 3, #ARGV, 5 do
  local id, worker, attempt, fate, err = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  local jk = job_key(base, id)
  local v = redis.call('HMGET', jk, 's', 'a', 'w', 'l', 'z', 'p', 'k')
  if v[1] == 'running' and v[2] == attempt and (v[3] or '') == worker
      and tonumber(v[4]) and tonumber(v[4]) <= now then
    n = n + 1
    add_error(jk, tonumber(attempt), at, err, v[3])
    if fate == 'dead' then
      finish(base, id, jk, 'dead', at, retention, err, v[7], acc)
    else
      rewait(base, id, jk, v[5], tonumber(v[6]), at, now, acc)
      requeued = true
    end
  end
end
flush(base, acc)
if requeued then wake(base) end
return n
