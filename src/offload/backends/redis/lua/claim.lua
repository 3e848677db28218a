-- Lease at most `limit` due jobs from the given queues, best first.
-- KEYS: the base of each queue. ARGV: limit, worker id, lease (us), claim token, 'L' to take
-- only jobs with limits (a broker's state store: the broker carries the others) or '', then,
-- when the caller names the jobs (a broker delivered them), their ids: only those are
-- candidates.
-- Returns a packed list: now, lease expiry, held (microseconds until a rate lets a job held
-- by a limit go, 'inf' when only a completion will, '' when none was held), then 7 values per
-- job: queue index, id, blob, attempt, run_at, created, errors, limits. The token makes a
-- retried call
-- (the reply of the first was lost with its connection) return the jobs the first one took
-- instead of taking more.
--
-- Limits (docs/limits.md): a queue that ever received a job with limits has the key
-- <base>:limited. Its claims walk the ready set in order and let the gate (claim_gate, below)
-- pass over held jobs, which stay where they are: no attempt used, no lease.
local limit, worker, lease_us, token = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3]), ARGV[4]
local only_limited = ARGV[5] == 'L'
local now = now_us()
local expires = now + lease_us
local tokkey = KEYS[1] .. ':ct:' .. token
local out = {fmt(now), fmt(expires), ''}

local function emit(qi, id, blob, attempt, run_at, created, errors, limits)
  local n = #out
  out[n + 1], out[n + 2], out[n + 3], out[n + 4] = tostring(qi), id, blob, tostring(attempt)
  out[n + 5], out[n + 6], out[n + 7], out[n + 8] = run_at, created, errors or '', limits or ''
end

-- A job's limit buckets (hash field b, newline-joined), or nil.
local function split_limits(b)
  if not b or b == '' then return nil end
  local out = {}
  for part in string.gmatch(b, '[^\n]+') do out[#out + 1] = part end
  return out
end

local taken = redis.call('GET', tokkey)
if taken then
  for qi_id in string.gmatch(taken, '[^,]+') do
    local sep = string.find(qi_id, ':', 1, true)
    local qi, id = tonumber(string.sub(qi_id, 1, sep - 1)), string.sub(qi_id, sep + 1)
    local v = redis.call('HMGET', job_key(KEYS[qi], id), 's', 'w', 't', 'l', 'd', 'a', 'r', 'c', 'x',
      'b')
    if v[1] == 'running' and v[2] == worker then
      out[1], out[2] = v[3], v[4]
      emit(qi, id, v[5], v[6], v[7], v[8], v[9], v[10])
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
  for i = 6, #ARGV do
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

-- Move a queue's due scheduled jobs into its ready set.
local function promote(base)
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
end

-- The best `limit` of each open queue, after moving its due scheduled jobs in.
local function best_candidates()
  for qi, base in ipairs(KEYS) do
    if redis.call('EXISTS', base .. ':paused') == 0 then
      promote(base)
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

-- The gate: concurrency counted from the running limited jobs of these queues (<base>:lrun,
-- pruned of those no longer running, so a slot is free the moment its job leaves running by
-- any path, a lost lease's recovery too); rates from <base>:rate:<bucket>, the claim times in
-- the window. Counts are per queue: the keys of several queues may live on several cluster
-- nodes, so a limit shared by two queues counts in each separately (docs/limits.md).
local gate = {used = {}, free = {}, held = nil, more = false}

local function running_counts()
  for _, base in ipairs(KEYS) do
    local lrun = base .. ':lrun'
    for _, id in ipairs(redis.call('SMEMBERS', lrun)) do
      local v = redis.call('HMGET', job_key(base, id), 's', 'b')
      local lim = v[1] == 'running' and split_limits(v[2])
      if lim then
        for _, b in ipairs(lim) do gate.used[b] = (gate.used[b] or 0) + 1 end
      else
        redis.call('SREM', lrun, id)
      end
    end
  end
end

local function bucket(b)
  local cap, period = string.match(b, '^(%d+)/(%d+)/')
  return tonumber(cap), tonumber(period) * 1000
end

-- Room left in bucket b (of the queue at base), reading its window the first time.
local function room(base, b)
  local cap, period = bucket(b)
  if period > 0 and gate.free[b] == nil then
    local key = base .. ':rate:' .. b
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now - period)
    local n = redis.call('ZCARD', key)
    gate.used[b] = n
    -- Once full (now, or by this claim's own takes), a slot frees when the oldest of the
    -- window's last `cap` claims leaves it.
    local first = math.max(n - cap, 0)
    local at = redis.call('ZRANGE', key, first, first, 'WITHSCORES')[2]
    gate.free[b] = (at and tonumber(at) or now) + period
  end
  return cap - (gate.used[b] or 0)
end

-- A job's buckets: its limits without its fair key (the first line, when it has one).
local function buckets_of(lim)
  if lim and string.sub(lim[1], 1, 5) == 'fair:' then
    if #lim == 1 then return nil end
    return {unpack(lim, 2)}
  end
  return lim
end

local function admit(base, lim)
  lim = buckets_of(lim)
  if not lim then return true end
  for _, b in ipairs(lim) do
    if room(base, b) <= 0 then
      local _, period = bucket(b)
      local at = period > 0 and gate.free[b] or math.huge
      if gate.held == nil or at < gate.held then gate.held = at end
      return false
    end
  end
  for _, b in ipairs(lim) do gate.used[b] = (gate.used[b] or 0) + 1 end
  return true
end

-- Up to `limit` admitted jobs of each open queue, walking its ready set in order.
local function gated_candidates()
  running_counts()
  for qi, base in ipairs(KEYS) do
    if redis.call('EXISTS', base .. ':paused') == 0 then
      promote(base)
      local ready, taken, offset = base .. ':ready', 0, 0
      while taken < limit do
        local chunk = redis.call('ZRANGE', ready, offset, offset + 99, 'WITHSCORES')
        if #chunk == 0 then break end
        for i = 1, #chunk, 2 do
          local member = chunk[i]
          local lim = split_limits(redis.call('HGET', job_key(base, member_id(member)), 'b'))
          if (lim or not only_limited) and admit(base, lim) then
            cands[#cands + 1] = {tonumber(chunk[i + 1]), member, qi, ready, lim}
            taken = taken + 1
            if taken >= limit then gate.more = true break end
          end
        end
        offset = offset + 100
      end
    end
  end
  table.sort(cands, by_score)
end

-- Fair claims (offload.backends.fairness): the first `cap` due jobs of every lane of each open
-- queue, in fair order (priority, rank in the lane, the lane's turn, score, member), through
-- the gate; read again with twice the cap while a lane cut short might hold a job that comes
-- first. A lane's members that no longer wait are dropped as they are met; with only_limited,
-- the jobs without limits (of the lane without a key) are passed over.
local fair = {lanes = {}, plain = {}}

local function lane_rows(base, qi, key, turn, cap, rows)
  -- A queue without fair jobs, claimed with one that has them: its ready set is its one lane.
  local lane = fair.plain[qi] and base .. ':ready' or base .. ':fq:' .. key
  local n, offset, last = 0, 0, nil
  while n < cap do
    local chunk = redis.call('ZRANGE', lane, offset, offset + cap - 1, 'WITHSCORES')
    if #chunk == 0 then return n, false, last end
    for i = 1, #chunk, 2 do
      local member = chunk[i]
      local v = redis.call('HMGET', job_key(base, member_id(member)), 's', 'z', 'b')
      if v[2] ~= member or not (v[1] == 'queued' or v[1] == 'scheduled') then
        redis.call('ZREM', lane, member)
        offset = offset - 1
      elseif v[1] == 'queued' and not (only_limited and (v[3] or '') == '') then
        n = n + 1
        last = member_priority(member)
        rows[#rows + 1] = {tonumber(chunk[i + 1]), member, qi, base .. ':ready',
          split_limits(v[3]), lane, n, turn, -last, key}
        if n >= cap then return n, true, last end
      end
    end
    offset = offset + cap
  end
  return n, true, last
end

local function fair_order(x, y)
  for _, f in ipairs({9, 7, 8, 10, 1}) do
    if x[f] ~= y[f] then return x[f] < y[f] end
  end
  return x[2] < y[2]
end

-- The usual case, one queue with many keys: the first due job of each lane in turn order
-- (<base>:fl's order: turn, then key) while it has the best due priority of the queue, until
-- `limit` are admitted. Those come first in fair order, so the walk stops there, having read
-- about `limit` lanes instead of all. Returns nil (nothing kept) when it cannot fill the claim.
local function fair_fast()
  local base = KEYS[1]
  local best = redis.call('ZRANGE', base .. ':ready', 0, 0)[1]
  if not best then return nil end
  local top = member_priority(best)
  local picked, offset = {}, 0
  while #picked < limit do
    local lanes = redis.call('ZRANGE', base .. ':fl', offset, offset + 99, 'WITHSCORES')
    if #lanes == 0 then return nil end
    for i = 1, #lanes, 2 do
      local rows = {}
      lane_rows(base, 1, lanes[i], tonumber(lanes[i + 1]), 1, rows)
      local row = rows[1]
      if row and -row[9] == top and admit(base, row[5]) then
        picked[#picked + 1] = row
        if #picked >= limit then return picked end
      end
    end
    offset = offset + 100
  end
  return picked
end

local function fair_pick(cap)
  local rows, cut = {}, nil
  for qi, base in ipairs(KEYS) do
    local lanes = fair.lanes[qi]
    if lanes then
      for i = 1, #lanes, 2 do
        local n, truncated, last = lane_rows(base, qi, lanes[i], tonumber(lanes[i + 1]), cap, rows)
        if truncated and (cut == nil or last > cut) then cut = last end
        if n == 0 and not fair.plain[qi]
            and redis.call('EXISTS', base .. ':fq:' .. lanes[i]) == 0 then
          redis.call('ZREM', base .. ':fl', lanes[i]) -- an empty lane forgets its turn
        end
      end
    end
  end
  table.sort(rows, fair_order)
  local picked, low = {}, nil
  for _, row in ipairs(rows) do
    if #picked >= limit then break end
    if admit(KEYS[row[3]], row[5]) then
      picked[#picked + 1] = row
      low = math.min(low or row[9] * -1, row[9] * -1)
    end
  end
  local sure = cut == nil or (#picked >= limit and low >= cut)
  return picked, sure
end

local function fair_candidates()
  local n = 0
  for qi, base in ipairs(KEYS) do
    if redis.call('EXISTS', base .. ':paused') == 0 then
      promote(base)
      if redis.call('EXISTS', base .. ':fair') == 1 then
        fair.lanes[qi] = redis.call('ZRANGE', base .. ':fl', 0, -1, 'WITHSCORES')
      else
        fair.lanes[qi], fair.plain[qi] = {'', '0'}, true
      end
      n = n + #fair.lanes[qi] / 2
    end
  end
  local running = {}
  running_counts()
  for b, c in pairs(gate.used) do running[b] = c end
  if #KEYS == 1 and fair.lanes[1] and not fair.plain[1] then
    local picked = fair_fast()
    if picked then
      cands, gate.more = picked, true
      return
    end
    gate.used, gate.free, gate.held = {}, {}, nil
    for b, c in pairs(running) do gate.used[b] = c end
  end
  local cap = math.ceil(limit / math.max(n, 1)) + 1
  while true do
    local picked, sure = fair_pick(cap)
    if sure then
      cands = picked
      gate.more = #picked >= limit
      return
    end
    cap = cap * 2
    gate.used, gate.free, gate.held = {}, {}, nil
    for b, c in pairs(running) do gate.used[b] = c end
  end
end

-- Every lane served gets a new turn, later than all, in the order it was last served.
local function fair_turns()
  local last, order = {}, {}
  for i, row in ipairs(cands) do
    local lk = row[3] .. '\0' .. row[10]
    if not last[lk] then order[#order + 1] = lk end
    last[lk] = i
  end
  table.sort(order, function(x, y) return last[x] < last[y] end)
  for _, lk in ipairs(order) do
    local row = cands[last[lk]]
    local base = KEYS[row[3]]
    if fair.plain[row[3]] then -- luacheck: ignore (a plain queue keeps no turns)
    elseif redis.call('EXISTS', row[6]) == 1 then
      redis.call('ZADD', base .. ':fl', redis.call('INCR', base .. ':fturn'), row[10])
    else
      redis.call('ZREM', base .. ':fl', row[10]) -- its lane is empty: forget its turn
    end
  end
end

local gated = false
local fair_claim = false
if #ARGV <= 5 then
  for _, base in ipairs(KEYS) do
    if redis.call('EXISTS', base .. ':limited') == 1 then gated = true end
  end
end
if gated then
  for _, base in ipairs(KEYS) do
    if redis.call('EXISTS', base .. ':fair') == 1 then fair_claim = true end
  end
end
if #ARGV > 5 then
  named_candidates()
elseif fair_claim then
  fair_candidates()
elseif gated then
  gated_candidates()
elseif not only_limited then
  best_candidates()
end

local taken_ids, leases = {}, {}
local now_s, exp_s = out[1], out[2]
for i = 1, math.min(limit, #cands) do
  local _, member, qi, from, lim, lane = unpack(cands[i])
  local base = KEYS[qi]
  local id = member_id(member)
  local jk = job_key(base, id)
  if from then redis.call('ZREM', from, member) end
  local v = redis.call('HMGET', jk, 'd', 'a', 'r', 'c', 'x', 'b')
  if v[1] then
    local attempt = tonumber(v[2]) + 1
    redis.call('HSET', jk, 's', 'running', 'a', attempt, 'w', worker, 't', now_s, 'l', exp_s)
    leases[qi] = leases[qi] or {}
    local l = leases[qi]
    l[#l + 1] = expires
    l[#l + 1] = id
    emit(qi, id, v[1], attempt, v[3], v[4], v[5], v[6])
    taken_ids[#taken_ids + 1] = qi .. ':' .. id
    if lane then redis.call('ZREM', lane, member) end
    lim = buckets_of(lim)
    if lim then
      redis.call('SADD', base .. ':lrun', id)
      for _, b in ipairs(lim) do
        local _, period = bucket(b)
        if period > 0 then
          local key = base .. ':rate:' .. b
          redis.call('ZADD', key, now, id .. ':' .. attempt)
          redis.call('PEXPIRE', key, math.ceil(period / 1000) + 1000)
        end
      end
    end
  end
end
if fair_claim then fair_turns() end
if gated and gate.held ~= nil then
  out[3] = gate.held == math.huge and 'inf' or fmt(gate.held - now)
end
for qi, l in pairs(leases) do zadd_many(KEYS[qi] .. ':lease', l) end
if #taken_ids > 0 then redis.call('SET', tokkey, table.concat(taken_ids, ','), 'EX', 60) end
-- Pass the wake token on while work is left; jobs a limit holds are not work (a completion
-- or the window's end lets them go: the worker sleeps until then, see wait_for_work).
if (not gated and not only_limited) or gate.more then
  for _, base in ipairs(KEYS) do
    if redis.call('ZCARD', base .. ':ready') > 0 then wake(base) end
  end
end
return packed(out)
