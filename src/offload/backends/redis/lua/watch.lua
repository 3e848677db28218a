-- A caller waits for a job to finish: note it (until ttl) so the finish signals its done
-- list. KEYS[1]: the queue's base. ARGV: id, ttl (us). Returns the job's state now.
local base, id = KEYS[1], ARGV[1]
redis.call('ZADD', base .. ':waiting', now_us() + tonumber(ARGV[2]), id)
return redis.call('HGET', job_key(base, id), 's')
