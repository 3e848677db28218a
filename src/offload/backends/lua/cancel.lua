-- Cancel a waiting or running job. KEYS[1]: the queue's base. ARGV: id, retention (s), reason.
-- Returns {} when unknown, {'invalid', state} when finished otherwise, else {'ok', fields}.
local base, id = KEYS[1], ARGV[1]
local jk = job_key(base, id)
local state = redis.call('HGET', jk, 's')
if not state then return {} end
if is_active(state) then
  finish(base, id, jk, 'cancelled', now_us(), tonumber(ARGV[2]), ARGV[3])
elseif state ~= 'cancelled' then
  return {'invalid', state}
end
return {'ok', redis.call('HGETALL', jk)}
