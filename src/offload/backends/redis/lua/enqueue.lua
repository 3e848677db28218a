-- Store a batch of new jobs, all or none.
-- KEYS: the base of each queue in the batch. ARGV[1]: the jobs, framed, 12 fields each:
--   queue index, id, blob, priority, max attempts, run_at (us, or ''), delay (us), key (or ''),
--   unique_for (us, or ''), on_conflict ('r': replace a waiting holder, '': keep it),
--   limit buckets (newline-joined, or ''; see docs/limits.md), its own retention (field v, see
--   _common.lua, or '').
-- unique_for: the key of a job stored with one is also held by base:u:<key> (its id), which
-- expires with the window, so a finished job blocks its key until then.
-- ARGV[2...]: one depth limit per queue (-1: none).
-- Returns {0, queue index} when a queue would go over its limit (nothing stored), else
-- {now, dup...} where dup is, per job not stored, its index (0-based), the id of the job it
-- duplicates, and that job's fields.
local nq = #KEYS
local now = now_us()
local created = fmt(now)
local src = ARGV[1]
local jobs = {}
local dups = {}
local fresh_n = {}
local batch_keys = {}
local replaces = {}
for qi = 1, nq do fresh_n[qi] = 0 end

-- Debounce replaces only a job of the same task. A blob is a msgpack array (its length may
-- differ: optional trailing fields) whose first item is the task name: two blobs are of one
-- task when their bytes agree from that string's header through its end.
local function same_task(base, held, blob)
  local old = redis.call('HGET', job_key(base, held), 'd')
  if not old then return false end
  local b = string.byte(blob, 2)
  local stop
  if b >= 0xa0 and b <= 0xbf then stop = 2 + (b - 0xa0)
  elseif b == 0xd9 then stop = 3 + string.byte(blob, 3)
  elseif b == 0xda then stop = 4 + string.byte(blob, 3) * 256 + string.byte(blob, 4)
  else return false end
  return string.sub(old, 2, stop) == string.sub(blob, 2, stop)
end

-- Phase 1: read, dedup and check limits, without writing anything.
local pos, size, j = 1, #src, 0
while pos <= size do
  local qi, id, blob, priority, max_attempts, run_at, delay, key, window, conflict, limits, keep
  qi, id, blob, priority, max_attempts, run_at, delay, key, window, conflict, limits, keep, pos =
    struct.unpack('>I4c0I4c0I4c0I4c0I4c0I4c0I4c0I4c0I4c0I4c0I4c0I4c0', src, pos)
  qi = tonumber(qi)
  local base = KEYS[qi]
  local dup = nil
  if redis.call('EXISTS', job_key(base, id)) == 1 then
    dup = id -- a retried call whose first try was stored
  elseif key ~= '' then
    dup = batch_keys[qi .. ':' .. key]
    if not dup then
      local held = redis.call('HGET', base .. ':keys', key)
      local hs = held and redis.call('HGET', job_key(base, held), 's')
      if hs and is_active(hs) then
        dup = held
        if conflict == 'r' and hs ~= 'running' and same_task(base, held, blob) then
          replaces[#replaces + 1] = {base, held, blob, tonumber(priority), run_at, delay}
        end
      elseif window ~= '' then
        local recent = redis.call('GET', base .. ':u:' .. key)
        if recent and redis.call('EXISTS', job_key(base, recent)) == 1 then dup = recent end
      end
    end
    if not dup then batch_keys[qi .. ':' .. key] = id end
  end
  if dup then
    dups[#dups + 1] = {j, dup, base}
  else
    jobs[#jobs + 1] = {qi, id, blob, tonumber(priority), max_attempts, run_at, delay, key,
      window, limits, keep}
    fresh_n[qi] = fresh_n[qi] + 1
  end
  j = j + 1
end
for qi = 1, nq do
  local limit = tonumber(ARGV[qi + 1])
  if limit >= 0 and fresh_n[qi] > 0 then
    local base = KEYS[qi]
    local waiting = redis.call('ZCARD', base .. ':ready') + redis.call('ZCARD', base .. ':sched')
    if waiting + fresh_n[qi] > limit then return {0, qi} end
  end
end

-- Phase 2: write.
-- Fair claims: a queue's first job with a fair key turns its lanes on (see _common.lua); the
-- jobs already waiting, none with a key then, go to the lane of the jobs without one.
local fair_on = {}
for _, job in ipairs(jobs) do
  local base = KEYS[job[1]]
  if fair_key(job[10]) ~= '' and redis.call('EXISTS', base .. ':fair') == 0 then
    redis.call('SET', base .. ':fair', '1')
    local ready_m = redis.call('ZRANGE', base .. ':ready', 0, -1, 'WITHSCORES')
    for i = 1, #ready_m, 2 do lane_add(base, '', ready_m[i], tonumber(ready_m[i + 1])) end
    local sched_m = redis.call('ZRANGE', base .. ':sched', 0, -1, 'WITHSCORES')
    for i = 1, #sched_m, 2 do
      local m = sched_m[i]
      lane_add(base, '', m, ready_score(member_priority(m), tonumber(sched_m[i + 1])))
    end
  end
end
for qi = 1, nq do fair_on[qi] = redis.call('EXISTS', KEYS[qi] .. ':fair') == 1 end
local seq, ready, sched, made = {}, {}, {}, {}
for qi = 1, nq do
  if fresh_n[qi] > 0 then
    seq[qi] = redis.call('INCRBY', KEYS[qi] .. ':seq', fresh_n[qi]) - fresh_n[qi]
    ready[qi], sched[qi], made[qi] = {}, {}, {}
  end
end
for _, job in ipairs(jobs) do
  local qi, id, blob, priority, max_attempts, run_at, delay, key, window, limits, keep =
    unpack(job)
  local base = KEYS[qi]
  if run_at == '' then run_at = now + tonumber(delay) else run_at = tonumber(run_at) end
  seq[qi] = seq[qi] + 1
  local member = string.format('%012x%d', seq[qi], priority) .. id
  local state = 'queued'
  if run_at <= now then
    local r = ready[qi]
    r[#r + 1] = ready_score(priority, run_at)
    r[#r + 1] = member
  else
    state = 'scheduled'
    local s = sched[qi]
    s[#s + 1] = run_at
    s[#s + 1] = member
  end
  if fair_on[qi] then lane_add(base, fair_key(limits), member, ready_score(priority, run_at)) end
  local m = made[qi]
  m[#m + 1] = now
  m[#m + 1] = id
  local jk = job_key(base, id)
  if key == '' then
    redis.call('HSET', jk, 'd', blob, 'p', priority, 'm', max_attempts, 'c', created,
      'a', 0, 'z', member, 's', state, 'r', fmt(run_at))
  else
    redis.call('HSET', jk, 'd', blob, 'p', priority, 'm', max_attempts, 'c', created,
      'a', 0, 'z', member, 's', state, 'r', fmt(run_at), 'k', key)
    redis.call('HSET', base .. ':keys', key, id)
    if window ~= '' then
      redis.call('SET', base .. ':u:' .. key, id, 'PX', math.max(1, math.ceil(window / 1000)))
    end
  end
  if keep ~= '' then redis.call('HSET', jk, 'v', keep) end
  if limits ~= '' then
    -- The queue's claims take the gated path from now on (claim.lua).
    redis.call('HSET', jk, 'b', limits)
    redis.call('SET', base .. ':limited', '1')
  end
end

-- Debounce: a waiting holder takes the new job's content and time (same id, key and seq).
for _, r in ipairs(replaces) do
  local base, held, blob, priority, run_at, delay = unpack(r)
  local jk = job_key(base, held)
  local member = redis.call('HGET', jk, 'z')
  redis.call('ZREM', base .. ':ready', member)
  redis.call('ZREM', base .. ':sched', member)
  member = string.sub(member, 1, 12) .. priority .. held
  if run_at == '' then run_at = now + tonumber(delay) else run_at = tonumber(run_at) end
  redis.call('HSET', jk, 'd', blob, 'p', priority, 'z', member)
  place(base, jk, member, priority, run_at, now)
  wake(base)
end
for qi = 1, nq do
  if fresh_n[qi] > 0 then
    local base = KEYS[qi]
    if #ready[qi] > 0 then zadd_many(base .. ':ready', ready[qi]) end
    if #sched[qi] > 0 then zadd_many(base .. ':sched', sched[qi]) end
    zadd_many(base .. ':created', made[qi])
    wake(base)
  end
end

local out = {now}
for _, d in ipairs(dups) do
  out[#out + 1] = d[1]
  out[#out + 1] = d[2]
  out[#out + 1] = redis.call('HGETALL', job_key(d[3], d[2]))
end
return out
