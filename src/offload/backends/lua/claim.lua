-- Lease at most `limit` due jobs from the given queues, best first.
-- KEYS: the base of each queue. ARGV: limit, worker id, lease (us), claim token.
-- Returns {now, lease expiry, then 7 values per job: queue index, id, blob, attempt, run_at,
-- created, errors}. The token makes a retried call (the reply of the first was lost with its
-- connection) return the jobs the first one took instead of taking more.
local limit, worker, lease_us, token = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3]), ARGV[4]
local now = now_us()
local expires = now + lease_us
local tokkey = KEYS[1] .. ':ct:' .. token
local out = {now, expires}

local function emit(qi, id, jk)
  local v = redis.call('HMGET', jk, 'd', 'a', 'r', 'c', 'x')
  out[#out + 1] = qi
  out[#out + 1] = id
  for i = 1, 5 do out[#out + 1] = v[i] or '' end
end

local taken = redis.call('GET', tokkey)
if taken then
  for qi_id in string.gmatch(taken, '[^,]+') do
    local sep = string.find(qi_id, ':', 1, true)
    local qi, id = tonumber(string.sub(qi_id, 1, sep - 1)), string.sub(qi_id, sep + 1)
    local jk = job_key(KEYS[qi], id)
    local v = redis.call('HMGET', jk, 's', 'w', 't', 'l')
    if v[1] == 'running' and v[2] == worker then
      out[1], out[2] = tonumber(v[3]), tonumber(v[4])
      emit(qi, id, jk)
    end
  end
  return out
end

-- Candidates: the best `limit` of each open queue, after moving its due scheduled jobs in.
local cands = {}
for qi, base in ipairs(KEYS) do
  if redis.call('EXISTS', base .. ':paused') == 0 then
    local sched = base .. ':sched'
    local due = redis.call('ZRANGEBYSCORE', sched, '-inf', now, 'WITHSCORES', 'LIMIT', 0, 1000)
    if #due > 0 then
      local members = {}
      for i = 1, #due, 2 do
        local member, run_at = due[i], tonumber(due[i + 1])
        members[#members + 1] = member
        local jk = job_key(base, member_id(member))
        redis.call('ZADD', base .. ':ready', ready_score(member_priority(member), run_at), member)
        redis.call('HSET', jk, 's', 'queued')
      end
      redis.call('ZREM', sched, unpack(members))
    end
    local best = redis.call('ZRANGE', base .. ':ready', 0, limit - 1, 'WITHSCORES')
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

local taken_ids = {}
local now_s, exp_s = string.format('%.0f', now), string.format('%.0f', expires)
for i = 1, math.min(limit, #cands) do
  local qi, member = cands[i][3], cands[i][2]
  local base = KEYS[qi]
  local id = member_id(member)
  local jk = job_key(base, id)
  redis.call('ZREM', base .. ':ready', member)
  if redis.call('EXISTS', jk) == 1 then
    redis.call('HINCRBY', jk, 'a', 1)
    redis.call('HSET', jk, 's', 'running', 'w', worker, 't', now_s, 'l', exp_s)
    redis.call('ZADD', base .. ':lease', expires, id)
    emit(qi, id, jk)
    taken_ids[#taken_ids + 1] = qi .. ':' .. id
  end
end
if #taken_ids > 0 then redis.call('SET', tokkey, table.concat(taken_ids, ','), 'EX', 60) end
for _, base in ipairs(KEYS) do
  if redis.call('ZCARD', base .. ':ready') > 0 then wake(base) end
end
return out
