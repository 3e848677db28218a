-- Advance a schedule record (see Backend.advance_schedule): last_tick only rises, and the job
-- id goes with the tick that rose it. KEYS: the ticks hash, the jobs hash (one hash tag).
-- ARGV: name, tick (us), job id or ''.
local name, tick, job = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local cur = redis.call('HGET', KEYS[1], name)
if cur and cur ~= '' and tonumber(cur) >= tick then return 0 end
redis.call('HSET', KEYS[1], name, fmt(tick))
if job ~= '' then redis.call('HSET', KEYS[2], name, job) end
return 1
