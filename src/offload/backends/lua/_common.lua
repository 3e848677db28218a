-- Shared helpers, prepended to every script of this folder when it is loaded.
--
-- Every key of a queue starts with its base "{<prefix>:<queue>}" (one hash tag per queue, so
-- a script that touches one queue stays in one Redis Cluster slot). Times are integer
-- microseconds from the server's own clock (TIME), exact in a double.
--
-- Job hash fields: d = msgpack blob [task, args, priority, max_attempts, key] (immutable),
-- p = priority, m = max attempts, k = dedup key, c = created, s = state, a = attempt,
-- r = run_at, z = member in the ready/scheduled sets, w = worker id, t = started,
-- l = lease expiry, f = finished, e = error, o = result, x = JSON list of attempt errors.

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

local function job_key(base, id) return base .. ':j:' .. id end
local function member_id(member) return string.sub(member, 14) end
local function member_priority(member) return tonumber(string.sub(member, 13, 13)) or 0 end

local function wake(base)
  -- One token is enough: a woken worker claims, and the claim passes the token on.
  local list = base .. ':wake'
  if redis.call('LLEN', list) == 0 then redis.call('RPUSH', list, '1') end
end

-- A waiting or re-run job goes to the ready set when due, else to the scheduled set.
local function place(base, jk, member, priority, run_at, now)
  if run_at <= now then
    redis.call('ZADD', base .. ':ready', ready_score(priority, run_at), member)
    redis.call('HSET', jk, 's', 'queued', 'r', string.format('%.0f', run_at))
  else
    redis.call('ZADD', base .. ':sched', run_at, member)
    redis.call('HSET', jk, 's', 'scheduled', 'r', string.format('%.0f', run_at))
  end
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

-- The one way into a final state: state, time, indexes, key ttl, dedup key, waiters.
-- retention: seconds a finished job is kept, -1 for ever.
local function finish(base, id, jk, state, now, retention, err)
  redis.call('HSET', jk, 's', state, 'f', string.format('%.0f', now))
  if err then redis.call('HSET', jk, 'e', err) end
  redis.call('HDEL', jk, 'w', 'l')
  local v = redis.call('HMGET', jk, 'k', 'z')
  unlist(base, id, v[2])
  release_key(base, id, v[1])
  redis.call('ZADD', base .. ':' .. state, now, id)
  -- A backstop only: the maintenance sweep deletes it (and its index entries) on time.
  if retention >= 0 then redis.call('EXPIRE', jk, math.ceil(retention) + 3600) end
  if redis.call('EXISTS', base .. ':wd:' .. id) == 1 then
    local done = base .. ':done:' .. id
    redis.call('RPUSH', done, '1')
    redis.call('EXPIRE', done, 60)
  end
end


local function is_active(state)
  return state == 'queued' or state == 'scheduled' or state == 'running'
end
