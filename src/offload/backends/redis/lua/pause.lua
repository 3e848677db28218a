-- Pause (ARGV[1] = '1') or resume ('0') a queue. KEYS[1]: the queue's base.
local base = KEYS[1]
if ARGV[1] == '1' then
  redis.call('SET', base .. ':paused', '1')
else
  redis.call('DEL', base .. ':paused')
  wake(base)
end
return 1
