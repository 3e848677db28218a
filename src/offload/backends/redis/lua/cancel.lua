-- Cancel a waiting or running job. KEYS[1]: the queue's base. ARGV: id, retention (s), reason.
-- Returns {} when unknown, {'invalid', state} when finished otherwise, else {'ok', fields}.
local base, id = KEYS[1], ARGV[1]
local jk = job_key(base, id)
local v = redis.call('HMGET', jk, 's', 'z', 'k')
local state = v[1]
if not state then return {} end
if is_active(state) then
  local now = now_us()
  local acc = new_acc(base, now)
  unlist(base, id, v[2])
  finish(base, id, jk, 'cancelled', now, tonumber(ARGV[2]), ARGV[3], v[3], acc)
  flush(base, acc)
elseif state ~= 'cancelled' then
  return {'invalid', state}
end
return {'ok', redis.call('HGETALL', jk)}
