-- Store a workflow's record (offload.workflow). KEYS[1]: its key. ARGV[1]: the record (JSON).
-- Called in the same MULTI as enqueue.lua for its first steps. Returns now (us).
local now = now_us()
redis.call('HSET', KEYS[1], 'b', ARGV[1], 'c', fmt(now))
return now
