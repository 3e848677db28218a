-- Shared helpers, prepended to every script of this folder when it is loaded.
--
-- Every key of a queue starts with its base "{<prefix>:<queue>}" (one hash tag per queue, so
-- a script that touches one queue stays in one Redis Cluster slot). Times are integer
-- microseconds from the server's own clock (TIME), exact in a double.
--
-- Job hash fields: d = msgpack blob [task, args, priority, max_attempts, key] (immutable),
-- p = priority, m = max attempts, k = dedup key, c = created, s = state, a = attempt,
-- r = run_at, z = member in the ready/scheduled sets, w = worker id, t = started,
-- l = lease expiry, f = finished, e = error, o = result, x = JSON list of attempt errors,
-- g = the last progress reported (JSON), v = the job's own retention (below). The blob may hold
-- a sixth item, the job's headers.
--
-- Finished jobs are indexed by finish time in base:<state> when the backend's retention (the
-- URL's) applies to them, in base:own:<state> when they carry their own for that state (their
-- task's retention=), and those are also in base:expiry by the time they are due to go. So
-- the backend's pruning never walks jobs kept longer by their own retention.

local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

-- Ready set score: priority first (9 before 0), then run_at in ms. Both fit in 48 bits, so the
-- score is exact; ties fall back to the member, whose first 12 hex digits are the enqueue seq.
local PRIORITY_SHIFT = 17592186044416 -- 2^44 ms, past the year 2500
local function ready_score(priority, run_at)
  local ms = math.floor(run_at / 1000)
  if ms < 0 then ms = 0 end
  return (9 - priority) * PRIORITY_SHIFT + ms
end

local function fmt(n) return string.format('%.0f', n) end

-- Long replies leave as one msgpack array of binary strings: one value for the client to read.
local function bin(x)
  local n = #x
  if n < 256 then return '\196' .. string.char(n) .. x end
  if n < 65536 then return '\197' .. struct.pack('>I2', n) .. x end
  return '\198' .. struct.pack('>I4', n) .. x
end

local function packed(list)
  local parts = {'\221' .. struct.pack('>I4', #list)}
  for i = 1, #list do parts[i + 1] = bin(list[i]) end
  return table.concat(parts)
end

-- ZADD/ZREM of many members, in chunks that stay within Lua's argument limits.
local function zadd_many(key, flat)
  for i = 1, #flat, 2000 do
    redis.call('ZADD', key, unpack(flat, i, math.min(i + 1999, #flat)))
  end
end

local function zrem_many(key, members)
  for i = 1, #members, 1000 do
    redis.call('ZREM', key, unpack(members, i, math.min(i + 999, #members)))
  end
end

local function job_key(base, id) return base .. ':j:' .. id end
local function member_id(member) return string.sub(member, 14) end
local function member_priority(member) return tonumber(string.sub(member, 13, 13)) or 0 end

local function wake(base)
  -- One token is enough: a woken worker claims, and the claim passes the token on.
  local list = base .. ':wake'
  if redis.call('LLEN', list) == 0 then redis.call('RPUSH', list, '1') end
end

-- Fair claims (claim.lua): in a queue that ever received a job with a fair key (<base>:fair),
-- every waiting job is also in the lane of its key, <base>:fq:<key> ('' for none), scored as
-- in the ready set; <base>:fl holds the lanes' keys scored by their turns (0: never served).
-- A lane may keep members that no longer wait (cancelled, replaced, deleted): the claim drops
-- them when it meets them. The fair key is the first line of the limits (hash field b).
local function fair_key(b)
  if b and string.sub(b, 1, 5) == 'fair:' then return string.match(b, '^[^\n]+') end
  return ''
end

local function lane_add(base, key, member, score)
  redis.call('ZADD', base .. ':fq:' .. key, score, member)
  redis.call('ZADD', base .. ':fl', 'NX', 0, key)
end

local function lane_place(base, jk, member, score)
  if redis.call('EXISTS', base .. ':fair') == 1 then
    lane_add(base, fair_key(redis.call('HGET', jk, 'b')), member, score)
  end
end

-- A waiting or re-run job goes to the ready set when due, else to the scheduled set.
local function place(base, jk, member, priority, run_at, now)
  lane_place(base, jk, member, ready_score(priority, run_at))
  if run_at <= now then
    redis.call('ZADD', base .. ':ready', ready_score(priority, run_at), member)
    redis.call('HSET', jk, 's', 'queued', 'r', string.format('%.0f', run_at))
  else
    redis.call('ZADD', base .. ':sched', run_at, member)
    redis.call('HSET', jk, 's', 'scheduled', 'r', string.format('%.0f', run_at))
  end
end

-- A running job whose attempt ended without finishing it waits again (queued at run_at, or
-- scheduled): its lease goes (fields now, the lease set entry at flush(acc)).
local function rewait(base, id, jk, member, priority, run_at, now, acc)
  redis.call('HDEL', jk, 'w', 'l')
  acc.rem[#acc.rem + 1] = id
  place(base, jk, member, priority, run_at, now)
end

local function add_error(jk, attempt, now, err, worker)
  local entry = string.format('{"attempt":%.0f,"at":%.0f,"error":%s,"worker_id":%s}',
    attempt, now, cjson.encode(err), worker and cjson.encode(worker) or 'null')
  local x = redis.call('HGET', jk, 'x')
  if not x or x == '' then
    x = '[' .. entry .. ']'
  else
    x = string.sub(x, 1, -2) .. ',' .. entry .. ']'
  end
  redis.call('HSET', jk, 'x', x)
end

local function release_key(base, id, key)
  if key and key ~= '' then
    local keys = base .. ':keys'
    if redis.call('HGET', keys, key) == id then redis.call('HDEL', keys, key) end
  end
end

-- Out of the waiting and running sets (whichever holds it).
local function unlist(base, id, member)
  if member then
    redis.call('ZREM', base .. ':ready', member)
    redis.call('ZREM', base .. ':sched', member)
  end
  redis.call('ZREM', base .. ':lease', id)
end

-- Finishing many jobs at once: set-index updates are gathered and written by flush().
local function new_acc(base, now)
  local acc = {rem = {}, succeeded = {}, dead = {}, cancelled = {}, watched = false,
    own = {succeeded = {}, dead = {}, cancelled = {}}, expiry = {}}
  local waiting = base .. ':waiting'
  if redis.call('ZCARD', waiting) > 0 then
    redis.call('ZREMRANGEBYSCORE', waiting, '-inf', now)
    acc.watched = true
  end
  return acc
end

-- A job's own retention for a final state: seconds, or nil for the backend's. Field v holds
-- "<succeeded>,<dead>,<cancelled>", each seconds or empty (the backend's); absent: none.
local KEPT_FOREVER_S = 1e15 -- offload.job.KEPT_FOREVER_S: kept until purged
local OWN_FIELD = {succeeded = 1, dead = 2, cancelled = 3}
local function own_retention(jk, state)
  local v = redis.call('HGET', jk, 'v')
  if not v then return nil end
  local parts = {string.match(v, '^([^,]*),([^,]*),([^,]*)$')}
  return tonumber(parts[OWN_FIELD[state]])
end

-- The one way into a final state: fields, key ttl, dedup key, waiters; indexes via acc.
-- retention: seconds the backend keeps a finished job (its longest), -1 for ever; the job's
-- own retention for the state, when it has one, wins. key: the job's dedup key or nil.
local function finish(base, id, jk, state, now, retention, err, key, acc)
  if err then
    redis.call('HSET', jk, 's', state, 'f', fmt(now), 'e', err)
  else
    redis.call('HSET', jk, 's', state, 'f', fmt(now))
  end
  redis.call('HDEL', jk, 'w', 'l')
  release_key(base, id, key)
  acc.rem[#acc.rem + 1] = id
  local own = own_retention(jk, state)
  local set = own and acc.own[state] or acc[state]
  set[#set + 1] = now
  set[#set + 1] = id
  if own and own < KEPT_FOREVER_S then
    acc.expiry[#acc.expiry + 1] = now + own * 1000000
    acc.expiry[#acc.expiry + 1] = id
  end
  if own then retention = own < KEPT_FOREVER_S and own or -1 end
  -- A backstop only: the maintenance sweep deletes it (and its index entries) on time.
  if retention >= 0 then redis.call('EXPIRE', jk, math.ceil(retention) + 3600) end
  if acc.watched and redis.call('ZSCORE', base .. ':waiting', id) then
    local done = base .. ':done:' .. id
    redis.call('RPUSH', done, '1')
    redis.call('EXPIRE', done, 60)
  end
end

local function flush(base, acc)
  zrem_many(base .. ':lease', acc.rem)
  for _, state in ipairs({'succeeded', 'dead', 'cancelled'}) do
    if #acc[state] > 0 then zadd_many(base .. ':' .. state, acc[state]) end
    if #acc.own[state] > 0 then zadd_many(base .. ':own:' .. state, acc.own[state]) end
  end
  if #acc.expiry > 0 then zadd_many(base .. ':expiry', acc.expiry) end
end

-- Out of the finished indexes (a job deleted or queued again).
local function unfinish(base, id, state)
  redis.call('ZREM', base .. ':' .. state, id)
  redis.call('ZREM', base .. ':own:' .. state, id)
  redis.call('ZREM', base .. ':expiry', id)
end

local function is_active(state)
  return state == 'queued' or state == 'scheduled' or state == 'running'
end
