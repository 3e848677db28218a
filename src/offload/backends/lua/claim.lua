-- Lease at most `limit` due jobs from the given queues, best first.
-- KEYS: the base of each queue. ARGV: limit, worker id, lease (us), claim token.
-- Returns a packed list: now, lease expiry, then 7 values per job: queue index, id, blob,
-- attempt, run_at, created, errors. The token makes a retried call (the reply of the first
-- was lost with its connection) return the jobs the first one took instead of taking more.
local limit, worker, lease_us, token = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3]), ARGV[4]
local now = now_us()
local expires = now + lease_us
local tokkey = KEYS[1] .. ':ct:' .. token
local out = {fmt(now), fmt(expires)}

local function emit(qi, id, blob, attempt, run_at, created, errors)
  local n = #out
  out[n + 1], out[n + 2], out[n + 3], out[n + 4] = tostring(qi), id, blob, tostring(attempt)
  out[n + 5], out[n + 6], out[n + 7] = run_at, created, errors or ''
end

local taken = redis.call('GET', tokkey)
if taken then
  for qi_id in string.gmatch(taken, '[^,]+') do
    local sep = string.find(qi_id, ':', 1, true)
    local qi, id = tonumber(string.sub(qi_id, 1, sep - 1)), string.sub(qi_id, sep + 1)
    local v = redis.call('HMGET', job_key(KEYS[qi], id), 's', 'w', 't', 'l', 'd', 'a', 'r', 'c', 'x')
    if v[1] == 'running' and v[2] == worker then
      out[1], out[2] = v[3], v[4]
      emit(qi, id, v[5], v[6], v[7], v[8], v[9])
    end
  end
  return packed(out)
end

-- Candidates: the best `limit` of each open queue, after moving its due scheduled jobs in.
local cands = {}
for qi, base in ipairs(KEYS) do
  if redis.call('EXISTS', base .. ':paused') == 0 then
    local sched = base .. ':sched'
    local due = redis.call('ZRANGEBYSCORE', sched, '-inf', now, 'WITHSCORES', 'LIMIT', 0, 1000)
    if #due > 0 then
      local members, scored = {}, {}
      for i = 1, #due, 2 do
        local member = due[i]
        members[#members + 1] = member
        scored[#scored + 1] = ready_score(member_priority(member), tonumber(due[i + 1]))
        scored[#scored + 1] = member
        redis.call('HSET', job_key(base, member_id(member)), 's', 'queued')
      end
      zadd_many(base .. ':ready', scored)
      zrem_many(sched, members)
    end
    local best
    if #KEYS == 1 then
      best = redis.call('ZPOPMIN', base .. ':ready', limit)
    else
      best = redis.call('ZRANGE', base .. ':ready', 0, limit - 1, 'WITHSCORES')
    end
    for i = 1, #best, 2 do
      cands[#cands + 1] = {tonumber(best[i + 1]), best[i], qi}
    end
  end
end
if #KEYS > 1 then
  table.sort(cands, function(x, y)
    if x[1] ~= y[1] then return x[1] < y[1] end
    return x[2] < y[2]
  end)
end

local taken_ids, leases = {}, {}
local now_s, exp_s = out[1], out[2]
for i = 1, math.min(limit, #cands) do
  local qi, member = cands[i][3], cands[i][2]
  local base = KEYS[qi]
  local id = member_id(member)
  local jk = job_key(base, id)
  if #KEYS > 1 then redis.call('ZREM', base .. ':ready', member) end
  local v = redis.call('HMGET', jk, 'd', 'a', 'r', 'c', 'x')
  if v[1] then
    local attempt = tonumber(v[2]) + 1
    redis.call('HSET', jk, 's', 'running', 'a', attempt, 'w', worker, 't', now_s, 'l', exp_s)
    leases[qi] = leases[qi] or {}
    local l = leases[qi]
    l[#l + 1] = expires
    l[#l + 1] = id
    emit(qi, id, v[1], attempt, v[3], v[4], v[5])
    taken_ids[#taken_ids + 1] = qi .. ':' .. id
  end
end
for qi, l in pairs(leases) do zadd_many(KEYS[qi] .. ':lease', l) end
if #taken_ids > 0 then redis.call('SET', tokkey, table.concat(taken_ids, ','), 'EX', 60) end
for _, base in ipairs(KEYS) do
  if redis.call('ZCARD', base .. ':ready') > 0 then wake(base) end
end
return packed(out)
