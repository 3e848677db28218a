-- Record a live worker. KEYS[1]: the global base "{<prefix>}". ARGV: id, report (JSON), ttl (us).
-- Returns the server time (us) of the report.
local now = now_us()
redis.call('ZADD', KEYS[1] .. ':workers', now + tonumber(ARGV[3]), ARGV[1])
redis.call('HSET', KEYS[1] .. ':winfo', ARGV[1], ARGV[2])
redis.call('HSET', KEYS[1] .. ':wseen', ARGV[1], string.format('%.0f', now))
return now
