-- What a batch of workflow step completions reads after WATCHing its keys, in one call.
-- KEYS: the steps' job hashes, then their workflows' keys. ARGV[1]: how many job hashes.
-- Returns, flat: state, worker id, attempt per job ('' when absent), then record and created
-- per workflow.
local n = tonumber(ARGV[1])
local out = {}
for i = 1, n do
  local v = redis.call('HMGET', KEYS[i], 's', 'w', 'a')
  out[#out + 1] = v[1] or ''
  out[#out + 1] = v[2] or ''
  out[#out + 1] = v[3] or ''
end
for i = n + 1, #KEYS do
  local v = redis.call('HMGET', KEYS[i], 'b', 'c')
  out[#out + 1] = v[1] or ''
  out[#out + 1] = v[2] or ''
end
return out
