-- Store a batch of new jobs, all or none.
-- KEYS: the base of each queue in the batch.
-- ARGV: one depth limit per queue (-1: none), then 8 fields per job:
--   queue index, id, blob, priority, max attempts, run_at (us, or ''), delay (us), key (or '').
-- Returns {0, queue index} when a queue would go over its limit (nothing stored), else
-- {now, dup...} where dup lists, for each job not stored, {job index, id of the job it
-- duplicates, that job's fields (empty when it is a job of this same batch)}.
local nq = #KEYS
local F = 8
local njobs = (#ARGV - nq) / F
local now = now_us()
local dups = {}
local fresh = {}
local fresh_n = {}
local batch_keys = {}
for qi = 1, nq do fresh_n[qi] = 0 end

-- Phase 1: dedup and limits, without writing anything.
for j = 0, njobs - 1 do
  local o = nq + 1 + j * F
  local qi, id, key = tonumber(ARGV[o]), ARGV[o + 1], ARGV[o + 7]
  local base = KEYS[qi]
  local dup = nil
  if redis.call('EXISTS', job_key(base, id)) == 1 then
    dup = id -- a retried call whose first try was stored
  elseif key ~= '' then
    dup = batch_keys[qi .. ':' .. key]
    if not dup then
      local held = redis.call('HGET', base .. ':keys', key)
      if held and is_active(redis.call('HGET', job_key(base, held), 's')) then dup = held end
    end
    if not dup then batch_keys[qi .. ':' .. key] = id end
  end
  if dup then
    dups[#dups + 1] = {j, dup}
  else
    fresh[#fresh + 1] = o
    fresh_n[qi] = fresh_n[qi] + 1
  end
end
for qi = 1, nq do
  local limit = tonumber(ARGV[qi])
  if limit >= 0 and fresh_n[qi] > 0 then
    local base = KEYS[qi]
    local waiting = redis.call('ZCARD', base .. ':ready') + redis.call('ZCARD', base .. ':sched')
    if waiting + fresh_n[qi] > limit then return {0, qi} end
  end
end

-- Phase 2: write.
local seq = {}
for qi = 1, nq do
  if fresh_n[qi] > 0 then
    seq[qi] = redis.call('INCRBY', KEYS[qi] .. ':seq', fresh_n[qi]) - fresh_n[qi]
    wake(KEYS[qi])
  end
end
local created = string.format('%.0f', now)
for _, o in ipairs(fresh) do
  local qi, id, key = tonumber(ARGV[o]), ARGV[o + 1], ARGV[o + 7]
  local base = KEYS[qi]
  local priority = tonumber(ARGV[o + 3])
  local run_at = ARGV[o + 5]
  if run_at == '' then run_at = now + tonumber(ARGV[o + 6]) else run_at = tonumber(run_at) end
  seq[qi] = seq[qi] + 1
  local member = string.format('%012x%d', seq[qi], priority) .. id
  local jk = job_key(base, id)
  redis.call('HSET', jk, 'd', ARGV[o + 2], 'p', priority, 'm', ARGV[o + 4], 'c', created,
    'a', 0, 'z', member)
  place(base, jk, member, priority, run_at, now)
  redis.call('ZADD', base .. ':created', now, id)
  if key ~= '' then
    redis.call('HSET', jk, 'k', key)
    redis.call('HSET', base .. ':keys', key, id)
  end
end

local out = {now}
for _, d in ipairs(dups) do
  local j, id = d[1], d[2]
  out[#out + 1] = j
  out[#out + 1] = id
  out[#out + 1] = redis.call('HGETALL', job_key(KEYS[tonumber(ARGV[nq + 1 + j * F])], id))
end
return out
