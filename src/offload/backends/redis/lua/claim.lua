-- Lease at most `limit` due jobs from the given queues, best first.
-- KEYS: the base of each queue. ARGV: limit, worker id, lease (us), claim token, then, when
-- the caller names the jobs (a broker delivered them), their ids: only those are candidates.
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

-- Candidates: {ready score, member, queue index, the set to take it from (nil: taken already)}.
local cands = {}

local function by_score(x, y)
  if x[1] ~= y[1] then return x[1] < y[1] end
  return x[2] < y[2]
end

-- The named jobs that are due in an open queue. An id does not name its queue, so each is
-- looked up in the open queues until found; unknown, finished, running or not yet due ids
-- (and repeats) are skipped.
local function named_candidates()
  local open, seen = {}, {}
  for qi, base in ipairs(KEYS) do
    if redis.call('EXISTS', base .. ':paused') == 0 then open[#open + 1] = qi end
  end
  for i = 5, #ARGV do
    local id = ARGV[i]
    for _, qi in ipairs(open) do
      if seen[id] then break end
      local base = KEYS[qi]
      local v = redis.call('HMGET', job_key(base, id), 's', 'z')
      local state, member = v[1], v[2]
      if state then seen[id] = true end
      if state == 'queued' and member then
        local score = redis.call('ZSCORE', base .. ':ready', member)
        if score then cands[#cands + 1] = {tonumber(score), member, qi, base .. ':ready'} end
      elseif state == 'scheduled' and member then
        local run_at = tonumber(redis.call('ZSCORE', base .. ':sched', member))
        if run_at and run_at <= now then
          local score = ready_score(member_priority(member), run_at)
          cands[#cands + 1] = {score, member, qi, base .. ':sched'}
        end
      end
    end
  end
  table.sort(cands, by_score)
end

-- The best `limit` of each open queue, after moving its due scheduled jobs in.
local function best_candidates()
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
      if #KEYS == 1 then
        -- One queue (the usual case): pop the best at once, nothing left to remove later.
        local best = redis.call('ZPOPMIN', base .. ':ready', limit)
        for i = 1, #best, 2 do cands[#cands + 1] = {tonumber(best[i + 1]), best[i], qi} end
      else
        local best = redis.call('ZRANGE', base .. ':ready', 0, limit - 1, 'WITHSCORES')
        for i = 1, #best, 2 do
          cands[#cands + 1] = {tonumber(best[i + 1]), best[i], qi, base .. ':ready'}
        end
      end
    end
  end
  if #KEYS > 1 then table.sort(cands, by_score) end
end

if #ARGV > 4 then named_candidates() else best_candidates() end

local taken_ids, leases = {}, {}
local now_s, exp_s = out[1], out[2]
for i = 1, math.min(limit, #cands) do
  local _, member, qi, from = unpack(cands[i])
  local base = KEYS[qi]
  local id = member_id(member)
  local jk = job_key(base, id)
  if from then redis.call('ZREM', from, member) end
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
