-- Store the progress of running jobs whose lease still holds. KEYS[1]: the queue's base.
-- ARGV: id, worker id, attempt, progress (JSON) per job. Returns the ids written.
-- Fenced as heartbeat is: a job no longer running under that worker and attempt is left alone.
local base = KEYS[1]
local written = {}
for i = 1, #ARGV, 4 do
  local id = ARGV[i]
  local jk = job_key(base, id)
  local v = redis.call('HMGET', jk, 's', 'w', 'a')
  if v[1] == 'running' and v[2] == ARGV[i + 1] and v[3] == ARGV[i + 2] then
    redis.call('HSET', jk, 'g', ARGV[i + 3])
    written[#written + 1] = id
  end
end
return written
