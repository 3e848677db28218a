-- offload's PostgreSQL queries, one per "-- name:" block.
-- Placeholders filled once at load time: {schema} (quoted schema name), {now} (the database's
-- clock, epoch seconds, one value per statement), {cols} / {jcols} (a job record's columns,
-- unqualified / qualified with "j."), {own} (a finished job's own retention, see queries.py). Parameters are psycopg's %(name)s.

-- name: create_schema
CREATE SCHEMA IF NOT EXISTS {schema}

-- name: create_migrations_table
CREATE TABLE IF NOT EXISTS {schema}.migrations (
    version    integer PRIMARY KEY,
    applied_at float8 NOT NULL
)

-- name: migration_lock
SELECT pg_advisory_xact_lock(%(ns)s, 0)

-- name: schema_version
SELECT coalesce(max(version), 0) FROM {schema}.migrations

-- name: record_migration
INSERT INTO {schema}.migrations (version, applied_at) VALUES (%(version)s, {now})

-- name: enqueue
-- One statement: insert the batch (dedup on the active-key index) and notify the queues that
-- received work; the notification is delivered when the transaction commits.
WITH input AS (
    SELECT t.*, coalesce(t.run_at, {now} + t.delay_s) AS at
    FROM unnest(%(ids)s::text[], %(tasks)s::text[], %(queues)s::text[], %(args)s::bytea[],
                %(priorities)s::int2[], %(max_attempts)s::int4[], %(delays)s::float8[],
                %(run_ats)s::float8[], %(keys)s::text[], %(headers)s::text[], %(limits)s::text[],
                %(keep_succeeded)s::float8[], %(keep_dead)s::float8[],
                %(keep_cancelled)s::float8[])
         WITH ORDINALITY AS t(id, task, queue, args, priority, max_attempts, delay_s, run_at,
                              key, headers, limits, keep_succeeded_s, keep_dead_s,
                              keep_cancelled_s, ord)
){insert_input}

-- name: enqueue_one
-- enqueue for a batch of one job, with scalar parameters: psycopg dumps a one-element list
-- per column at several times a scalar's cost, which was half the client's CPU time of a
-- one-by-one enqueue (docs/enqueue-path.md).
WITH input AS (
    SELECT %(id)s::text AS id, %(task)s::text AS task, %(queue)s::text AS queue,
           %(args)s::bytea AS args, %(priority)s::int2 AS priority,
           %(max_attempts)s::int4 AS max_attempts, %(key)s::text AS key,
           %(headers)s::text AS headers, %(limits)s::text AS limits,
           %(keep_succeeded)s::float8 AS keep_succeeded_s, %(keep_dead)s::float8 AS keep_dead_s,
           %(keep_cancelled)s::float8 AS keep_cancelled_s, 1 AS ord,
           coalesce(%(run_at)s::float8, {now} + %(delay)s::float8) AS at
){insert_input}

-- name: insert_input
-- The rest of enqueue and enqueue_one, after their input rows (a fragment, not a query).
, ins AS (
    INSERT INTO {schema}.jobs
        (id, task, queue, args, state, priority, max_attempts, run_at, created_at, key,
         headers, limits, keep_succeeded_s, keep_dead_s, keep_cancelled_s)
    SELECT id, task, queue, args,
           CASE WHEN at <= {now} THEN 'queued' ELSE 'scheduled' END,
           priority, max_attempts, at, {now}, key, headers, string_to_array(limits, E'\n'),
           keep_succeeded_s, keep_dead_s, keep_cancelled_s
    FROM input ORDER BY ord
    ON CONFLICT (queue, key)
        WHERE key IS NOT NULL AND state IN ('scheduled', 'queued', 'running')
    DO NOTHING
    RETURNING {cols}
), woke AS (
    SELECT count(pg_notify(%(channel)s, q)) AS n FROM (SELECT DISTINCT queue AS q FROM ins) d
)
SELECT ins.*, woke.n FROM ins, woke

-- name: active_by_keys
-- The active jobs holding (queue, key) pairs: keys are scoped by queue.
SELECT {jcols} FROM {schema}.jobs j
JOIN unnest(%(queues)s::text[], %(keys)s::text[]) AS k(queue, key)
  ON j.queue = k.queue AND j.key = k.key
WHERE j.state IN ('scheduled', 'queued', 'running')

-- name: now
SELECT {now}

-- name: lock_key
-- unique_for and replace-on-conflict decide on what they read: one decision per (queue, key)
-- at a time, until the transaction ends.
SELECT pg_advisory_xact_lock(%(ns)s, hashtext(%(queue)s || chr(1) || %(key)s))

-- name: holder_by_key
-- The active job holding (queue, key), else the newest job with it, of any state.
SELECT {jcols} FROM {schema}.jobs j
WHERE j.queue = %(queue)s AND j.key = %(key)s
ORDER BY (j.state IN ('scheduled', 'queued', 'running')) DESC, j.created_at DESC, j.seq DESC
LIMIT 1

-- name: replace_waiting
-- Debounce: a waiting job takes the new job's arguments and time (it keeps its id and key).
WITH upd AS (
    UPDATE {schema}.jobs
    SET args = %(args)s, priority = %(priority)s,
        run_at = coalesce(%(run_at)s::float8, {now} + %(delay_s)s::float8),
        state = CASE WHEN coalesce(%(run_at)s::float8, {now} + %(delay_s)s::float8) <= {now}
                     THEN 'queued' ELSE 'scheduled' END
    WHERE id = %(id)s AND state IN ('scheduled', 'queued')
    RETURNING {cols}
), woke AS (
    SELECT count(pg_notify(%(channel)s, queue)) AS n FROM upd
)
SELECT upd.*, woke.n FROM upd, woke

-- name: schedule_records
SELECT name, last_tick, last_job_id, paused FROM {schema}.schedules ORDER BY name

-- name: advance_schedule
INSERT INTO {schema}.schedules AS s (name, last_tick, last_job_id)
VALUES (%(name)s, %(tick)s, %(job_id)s)
ON CONFLICT (name) DO UPDATE
SET last_job_id = CASE WHEN s.last_tick IS NULL OR excluded.last_tick > s.last_tick
                       THEN coalesce(excluded.last_job_id, s.last_job_id)
                       ELSE s.last_job_id END,
    last_tick = greatest(s.last_tick, excluded.last_tick)

-- name: set_schedule_paused
INSERT INTO {schema}.schedules AS s (name, paused) VALUES (%(name)s, %(paused)s)
ON CONFLICT (name) DO UPDATE SET paused = excluded.paused

-- name: lock_queues
-- Serialises enqueues into depth-limited queues, so that check-then-commit is race-free.
SELECT count(pg_advisory_xact_lock(%(ns)s, hashtext(q)))
FROM (SELECT q FROM unnest(%(queues)s::text[]) AS q ORDER BY q) s

-- name: waiting_counts
-- Bounded: counting stops at cap, so a limit check never scans a deep queue.
SELECT q, (SELECT count(*) FROM (SELECT 1 FROM {schema}.jobs
                                 WHERE queue = q AND state IN ('scheduled', 'queued')
                                 LIMIT %(cap)s) s)
FROM unnest(%(queues)s::text[]) AS q

-- name: claim_one_queue
-- The claimed rows, each with two more columns: seconds until the queue's next scheduled job
-- falls due (NULL: none), and whether jobs with limits are due (the gate claims those). With
-- nothing claimed, one row of NULL job columns carries them. An idle worker sleeps on that
-- and on notifications without asking again (wait_for_work).
-- A claim commits without waiting for its WAL to reach the disk (synchronous_commit off for
-- this transaction only): the wait sat on the path from enqueue to start, and a claim lost in
-- a server crash only gives the job back to the queue, as a lost lease does (at-least-once).
WITH no_flush_wait AS (
    SELECT set_config('synchronous_commit', 'off', true)
), c AS (
    SELECT id FROM {schema}.jobs
    WHERE queue = %(queue)s AND state IN ('scheduled', 'queued') AND run_at <= {now}
      AND limits IS NULL
      AND NOT EXISTS (SELECT 1 FROM {schema}.paused_queues p WHERE p.queue = %(queue)s)
    ORDER BY priority DESC, run_at, seq
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE {schema}.jobs j
    SET state = 'running', attempt = j.attempt + 1, worker_id = %(worker_id)s,
        started_at = {now}, lease_expires_at = {now} + %(lease_s)s
    FROM c WHERE j.id = c.id
    RETURNING {jcols}
), next AS (
    SELECT min(run_at) - {now} AS next_in FROM {schema}.jobs
    WHERE queue = %(queue)s AND state = 'scheduled' AND run_at > {now}
      AND NOT EXISTS (SELECT 1 FROM {schema}.paused_queues p WHERE p.queue = %(queue)s)
)
-- The last column is limited_due (migration 0005) written out: a call of that SQL function
-- plans its body again at every claim (PostgreSQL inlines no function with a subquery), half
-- of an empty claim's server time; written here it is planned once, with the statement.
SELECT claimed.*, next.next_in, EXISTS (
    SELECT 1 FROM {schema}.jobs
    WHERE queue = %(queue)s AND limits IS NOT NULL AND state IN ('scheduled', 'queued')
      AND run_at <= {now}
)
FROM next LEFT JOIN claimed ON true, no_flush_wait

-- name: claim_many_queues
-- As claim_one_queue; the next scheduled job is looked up queue by queue, down the index.
WITH no_flush_wait AS (
    SELECT set_config('synchronous_commit', 'off', true)
), c AS (
    SELECT id FROM {schema}.jobs
    WHERE queue = ANY(%(queues)s::text[]) AND state IN ('scheduled', 'queued')
      AND run_at <= {now} AND limits IS NULL
      AND queue <> ALL(ARRAY(SELECT queue FROM {schema}.paused_queues))
    ORDER BY priority DESC, run_at, seq
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE {schema}.jobs j
    SET state = 'running', attempt = j.attempt + 1, worker_id = %(worker_id)s,
        started_at = {now}, lease_expires_at = {now} + %(lease_s)s
    FROM c WHERE j.id = c.id
    RETURNING {jcols}
), next AS (
    SELECT min(s.run_at) - {now} AS next_in
    FROM unnest(%(queues)s::text[]) AS w(q),
         LATERAL (SELECT run_at FROM {schema}.jobs
                  WHERE queue = w.q AND state = 'scheduled' AND run_at > {now}
                  ORDER BY run_at LIMIT 1) s
    WHERE w.q <> ALL(ARRAY(SELECT queue FROM {schema}.paused_queues))
)
SELECT claimed.*, next.next_in, EXISTS (
    SELECT 1 FROM unnest(%(queues)s::text[]) AS w(q),
    LATERAL (SELECT 1 FROM {schema}.jobs
             WHERE queue = w.q AND limits IS NOT NULL AND state IN ('scheduled', 'queued')
               AND run_at <= {now}
             LIMIT 1) d
)
FROM next LEFT JOIN claimed ON true, no_flush_wait

-- name: claim_by_ids
-- A broker delivered these ids: lease only those among them that are due, in claim order.
WITH c AS (
    SELECT id FROM {schema}.jobs
    WHERE id = ANY(%(ids)s::text[]) AND queue = ANY(%(queues)s::text[])
      AND state IN ('scheduled', 'queued') AND run_at <= {now} AND limits IS NULL
      AND queue <> ALL(ARRAY(SELECT queue FROM {schema}.paused_queues))
    ORDER BY priority DESC, run_at, seq
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE {schema}.jobs j
SET state = 'running', attempt = j.attempt + 1, worker_id = %(worker_id)s,
    started_at = {now}, lease_expires_at = {now} + %(lease_s)s
FROM c WHERE j.id = c.id
RETURNING {jcols}

-- name: heartbeat
UPDATE {schema}.jobs j SET lease_expires_at = {now} + %(lease_s)s
FROM unnest(%(ids)s::text[], %(worker_ids)s::text[], %(attempts)s::int4[])
     AS c(id, worker_id, attempt)
WHERE j.id = c.id AND j.state = 'running' AND j.worker_id = c.worker_id
  AND j.attempt = c.attempt
RETURNING j.id

-- name: set_progress
-- Fenced by the lease, as heartbeat is: a lost lease writes nothing.
UPDATE {schema}.jobs j SET progress = c.progress
FROM unnest(%(ids)s::text[], %(worker_ids)s::text[], %(attempts)s::int4[],
            %(progress)s::bytea[]) AS c(id, worker_id, attempt, progress)
WHERE j.id = c.id AND j.state = 'running' AND j.worker_id = c.worker_id
  AND j.attempt = c.attempt
RETURNING j.id

-- name: complete
-- The one state transition for finished attempts, a batch at a time. An entry whose lease
-- (worker_id, attempt, running) no longer holds matches no row: a no-op.
WITH c AS (
    SELECT * FROM unnest(%(ids)s::text[], %(worker_ids)s::text[], %(attempts)s::int4[],
                         %(kinds)s::text[], %(results)s::bytea[], %(errors)s::text[],
                         %(delays)s::float8[])
         AS c(id, worker_id, attempt, kind, result, error, delay_s)
), upd AS (
    UPDATE {schema}.jobs j SET
        state = CASE WHEN c.kind IN ('succeeded', 'dead', 'cancelled') THEN c.kind
                     WHEN c.kind = 'snoozed' AND c.delay_s <= 0 THEN 'queued'
                     ELSE 'scheduled' END,
        attempt = CASE WHEN c.kind = 'snoozed' THEN greatest(j.attempt - 1, 0)
                       ELSE j.attempt END,
        run_at = CASE WHEN c.kind IN ('retry', 'snoozed') THEN {now} + c.delay_s
                      ELSE j.run_at END,
        finished_at = CASE WHEN c.kind IN ('succeeded', 'dead', 'cancelled') THEN {now} END,
        result = CASE WHEN c.kind IN ('succeeded', 'dead', 'cancelled') THEN c.result
                      ELSE j.result END,
        error = CASE WHEN c.kind IN ('succeeded', 'dead', 'cancelled') THEN c.error
                     ELSE j.error END,
        errors = CASE WHEN c.kind IN ('retry', 'dead') THEN j.errors || jsonb_build_array(
                          jsonb_build_object('attempt', j.attempt, 'at', {now},
                                             'error', c.error, 'worker_id', j.worker_id))
                      ELSE j.errors END,
        worker_id = NULL,
        lease_expires_at = NULL
    FROM c
    WHERE j.id = c.id AND j.state = 'running' AND j.worker_id = c.worker_id
      AND j.attempt = c.attempt
    RETURNING j.id, j.state, j.queue
)
SELECT
    (SELECT count(pg_notify(%(done_channel)s, ids)) FROM (
        SELECT string_agg(id, ',') AS ids FROM (
            SELECT id, (row_number() OVER ()) / 250 AS chunk FROM upd
            WHERE state IN ('succeeded', 'dead', 'cancelled')) f
        GROUP BY chunk) d),
    (SELECT count(pg_notify(%(channel)s, queue)) FROM (
        SELECT DISTINCT queue FROM upd WHERE state IN ('scheduled', 'queued')) w)

-- name: expired_leases
-- Recovery's find: running jobs whose lease expired, oldest expiry first, each with the
-- database clock that found them expired. Locked until the write commits; rows another
-- recoverer holds are skipped, so many workers recovering at once share the work.
SELECT id, attempt, max_attempts, worker_id, {now} FROM {schema}.jobs
WHERE state = 'running' AND lease_expires_at <= {now}
ORDER BY lease_expires_at
LIMIT %(limit)s
FOR UPDATE SKIP LOCKED

-- name: write_expired_leases
-- Recovery's write of the decisions made in Python (offload.backends.common.expired_lease),
-- fenced on the lease each job was found with and on %(now)s, the clock that found it expired:
-- a job finished, heartbeated or re-leased since matches nothing. entry is the AttemptError to
-- append; a dead job also takes its error as its final error and keeps its run_at.
WITH d AS (
    SELECT * FROM unnest(%(ids)s::text[], %(attempts)s::int4[], %(worker_ids)s::text[],
                         %(states)s::text[], %(entries)s::text[])
         AS d(id, attempt, worker_id, state, entry)
), upd AS (
    UPDATE {schema}.jobs j SET
        state = d.state,
        finished_at = CASE WHEN d.state = 'dead' THEN %(now)s::float8 END,
        error = CASE WHEN d.state = 'dead' THEN d.entry::jsonb ->> 'error' ELSE j.error END,
        run_at = CASE WHEN d.state = 'dead' THEN j.run_at ELSE %(now)s::float8 END,
        errors = j.errors || jsonb_build_array(d.entry::jsonb),
        worker_id = NULL,
        lease_expires_at = NULL
    FROM d
    WHERE j.id = d.id AND j.state = 'running' AND j.attempt = d.attempt
      AND j.worker_id IS NOT DISTINCT FROM d.worker_id
      AND j.lease_expires_at <= %(now)s::float8
    RETURNING j.id, j.state, j.queue
)
SELECT
    (SELECT count(*) FROM upd),
    (SELECT count(pg_notify(%(done_channel)s, id)) FROM upd WHERE state = 'dead'),
    (SELECT count(pg_notify(%(channel)s, queue)) FROM (
        SELECT DISTINCT queue FROM upd WHERE state = 'queued') w)

-- name: wake_info
-- For an idle worker: is anything due now, and how long until the next scheduled job?
SELECT
    -- Per queue, in claim order: the planner then walks the claim index as claim does,
    -- instead of a sequential scan through finished rows.
    EXISTS (SELECT 1 FROM unnest(%(queues)s::text[]) AS w(q),
                LATERAL (SELECT 1 FROM {schema}.jobs
                         WHERE queue = w.q AND state IN ('scheduled', 'queued')
                           AND run_at <= {now}
                         ORDER BY priority DESC, run_at, seq LIMIT 1) due
            WHERE NOT EXISTS (SELECT 1 FROM {schema}.paused_queues p WHERE p.queue = w.q)),
    (SELECT min(run_at) - {now} FROM {schema}.jobs
     WHERE queue = ANY(%(queues)s::text[]) AND state = 'scheduled'
       AND queue <> ALL(ARRAY(SELECT queue FROM {schema}.paused_queues)))

-- name: get
SELECT {cols} FROM {schema}.jobs WHERE id = %(id)s

-- name: list_jobs
SELECT {cols} FROM {schema}.jobs WHERE {where}
ORDER BY created_at DESC, id DESC LIMIT %(limit)s

-- name: counts
SELECT queue, state, count(*) FROM {schema}.jobs GROUP BY queue, state

-- name: cancel
WITH upd AS (
    UPDATE {schema}.jobs SET state = 'cancelled', finished_at = {now}, worker_id = NULL,
        lease_expires_at = NULL, error = 'cancelled', result = NULL
    WHERE id = %(id)s AND state IN ('scheduled', 'queued', 'running')
    RETURNING {cols}
), n AS (SELECT count(pg_notify(%(done_channel)s, id)) AS n FROM upd)
SELECT upd.*, n.n FROM upd, n

-- name: requeue
WITH upd AS (
    UPDATE {schema}.jobs SET state = 'queued', attempt = 0, run_at = {now}, finished_at = NULL,
        error = NULL, result = NULL, worker_id = NULL, lease_expires_at = NULL
    WHERE id = %(id)s AND state IN ('dead', 'cancelled')
    RETURNING {cols}
), n AS (SELECT count(pg_notify(%(channel)s, queue)) AS n FROM upd)
SELECT upd.*, n.n FROM upd, n

-- name: delete
DELETE FROM {schema}.jobs WHERE id = ANY(%(ids)s::text[]) AND state <> 'running'

-- name: purge_batch
-- One bounded batch of a purge (the caller repeats it until a batch comes back short), so no
-- statement holds its row locks or bloats one transaction for long: at most %(batch)s rows from
-- each half of the finished index (jobs without their own retention, and with), oldest first;
-- SKIP LOCKED lets two callers share the work.
WITH backend AS (
    SELECT id FROM {schema}.jobs
    WHERE state = %(state)s AND finished_at <= {now} - %(older_than_s)s
      AND finished_at IS NOT NULL AND {own} IS NULL
      AND (%(queue)s::text IS NULL OR queue = %(queue)s::text)
    LIMIT %(batch)s
    FOR UPDATE SKIP LOCKED
), own AS (
    SELECT id FROM {schema}.jobs
    WHERE state = %(state)s AND finished_at <= {now} - %(older_than_s)s
      AND finished_at IS NOT NULL AND {own} IS NOT NULL
      AND (%(queue)s::text IS NULL OR queue = %(queue)s::text)
    LIMIT %(batch)s
    FOR UPDATE SKIP LOCKED
)
DELETE FROM {schema}.jobs WHERE id IN (SELECT id FROM backend UNION ALL SELECT id FROM own)

-- name: prune_batch
-- One bounded batch of retention by the backend's policy: jobs of a state without their own
-- retention, finished %(older_than_s)s ago (the first half of the finished index only: jobs a
-- task keeps longer are never walked).
DELETE FROM {schema}.jobs WHERE id IN (
    SELECT id FROM {schema}.jobs
    WHERE state = %(state)s AND finished_at <= {now} - %(older_than_s)s
      AND finished_at IS NOT NULL AND {own} IS NULL
    LIMIT %(batch)s
    FOR UPDATE SKIP LOCKED)

-- name: prune_own_batch
-- One bounded batch of retention by the jobs' own (their task's retention=): those whose
-- finish plus their own age for their state has passed, found by the expiry index.
DELETE FROM {schema}.jobs WHERE id IN (
    SELECT id FROM {schema}.jobs
    WHERE (finished_at + {own}) <= {now} AND finished_at IS NOT NULL AND {own} IS NOT NULL
    LIMIT %(batch)s
    FOR UPDATE SKIP LOCKED)

-- name: prune_workers
DELETE FROM {schema}.workers WHERE expires_at <= {now}

-- name: try_maintenance_lock
SELECT pg_try_advisory_lock(%(ns)s, 1)

-- name: maintenance_unlock
SELECT pg_advisory_unlock(%(ns)s, 1)

-- name: try_reindex_lock
-- Session-level, on the vacuum's own autocommit connection: one rebuilder per schema.
SELECT pg_try_advisory_lock(%(ns)s, 2)

-- name: reindex_unlock
SELECT pg_advisory_unlock(%(ns)s, 2)

-- name: jobs_indexes
-- Each index of the jobs table: name, bytes, valid, and the table's rows as the last VACUUM
-- counted them (reltuples; -1 before any VACUUM or ANALYZE). A leftover of an interrupted
-- REINDEX CONCURRENTLY is an invalid index whose name ends in _ccnew (or _ccnew1, ...).
SELECT c.relname, pg_relation_size(c.oid), i.indisvalid, t.reltuples
FROM pg_index i
JOIN pg_class c ON c.oid = i.indexrelid
JOIN pg_class t ON t.oid = i.indrelid
WHERE i.indrelid = '{schema}.jobs'::regclass
ORDER BY c.relname

-- name: pause
INSERT INTO {schema}.paused_queues (queue, paused_at) VALUES (%(queue)s, {now})
ON CONFLICT (queue) DO NOTHING

-- name: resume
WITH d AS (DELETE FROM {schema}.paused_queues WHERE queue = %(queue)s RETURNING queue)
SELECT pg_notify(%(channel)s, %(queue)s)

-- name: paused_queues
SELECT queue FROM {schema}.paused_queues

-- name: report_worker
INSERT INTO {schema}.workers (id, info, last_seen_at, expires_at)
VALUES (%(id)s, %(info)s, {now}, {now} + %(ttl_s)s)
ON CONFLICT (id) DO UPDATE
SET info = excluded.info, last_seen_at = excluded.last_seen_at, expires_at = excluded.expires_at

-- name: remove_worker
DELETE FROM {schema}.workers WHERE id = %(id)s

-- name: workers
SELECT info, last_seen_at FROM {schema}.workers WHERE expires_at > {now}

-- name: claim_gated
-- Jobs with limits and those without, in claim order: gate_claim picks them under its lock;
-- the UPDATE re-checks each row's state, so a job an ordinary claim or a cancel took meanwhile
-- is left alone; with limited_only (a broker's state store, whose broker carries the jobs
-- without limits) the jobs without limits the gate picked are left alone too. The last
-- columns: seconds until a rate lets a held job go ('infinity': a completion will; NULL: none
-- held), whether any job with limits was met, and the next scheduled job's distance (as
-- claim_many_queues).
WITH no_flush_wait AS (
    SELECT set_config('synchronous_commit', 'off', true)
), g AS (
    SELECT * FROM {schema}.gate_claim(%(queues)s::text[], %(ids)s::text[], %(limit)s, {now},
                                      %(ns)s)
), claimed AS (
    UPDATE {schema}.jobs j
    SET state = 'running', attempt = j.attempt + 1, worker_id = %(worker_id)s,
        started_at = {now}, lease_expires_at = {now} + %(lease_s)s
    FROM (SELECT unnest(g.ids) AS id FROM g) c  -- a join: one primary key probe per id
    WHERE j.id = c.id AND j.state IN ('scheduled', 'queued')
      AND (j.limits IS NOT NULL OR NOT %(limited_only)s)
    RETURNING {jcols}
), next AS (
    SELECT min(s.run_at) - {now} AS next_in
    FROM unnest(%(queues)s::text[]) AS w(q),
         LATERAL (SELECT run_at FROM {schema}.jobs
                  WHERE queue = w.q AND state = 'scheduled' AND run_at > {now}
                  ORDER BY run_at LIMIT 1) s
    WHERE w.q <> ALL(ARRAY(SELECT queue FROM {schema}.paused_queues))
)
SELECT claimed.*, g.held_until - {now}, g.limited, next.next_in
FROM g CROSS JOIN next LEFT JOIN claimed ON true, no_flush_wait

-- name: notify_queues
-- A limited job finished: jobs its slot held back may start now, in any process.
SELECT count(pg_notify(%(channel)s, q)) FROM unnest(%(queues)s::text[]) AS q

-- name: limit_usage
-- Per queue and bucket of waiting or running limited jobs: how many run, how many wait.
SELECT j.queue, x, count(*) FILTER (WHERE j.state = 'running'),
       count(*) FILTER (WHERE j.state IN ('scheduled', 'queued'))
FROM {schema}.jobs j, unnest(j.limits) x
WHERE j.limits IS NOT NULL AND j.state IN ('scheduled', 'queued', 'running')
  AND x NOT LIKE 'fair:%%'  -- a fair key is not a limit (offload.backends.fairness)
GROUP BY j.queue, x ORDER BY j.queue, x

-- name: insert_workflow
INSERT INTO {schema}.workflows (id, created_at, body) VALUES (%(id)s, {now}, %(body)s)
RETURNING created_at

-- name: get_workflow
SELECT body, created_at FROM {schema}.workflows WHERE id = %(id)s

-- name: lock_workflow
-- A step's completion holds its workflow row until it commits: the members of a group that
-- end at once advance it one after the other, so exactly one of them sees the last.
SELECT body, created_at FROM {schema}.workflows WHERE id = %(id)s FOR UPDATE

-- name: update_workflow
UPDATE {schema}.workflows SET body = %(body)s WHERE id = %(id)s

-- name: lock_workflows
-- A batch of step completions holds its workflows' rows, in id order (two batches never wait
-- on each other), until it commits.
SELECT id, body, created_at FROM {schema}.workflows WHERE id = ANY(%(ids)s::text[])
ORDER BY id FOR UPDATE

-- name: held_leases
-- The step jobs whose lease still holds, locked until the completion commits.
SELECT j.id FROM {schema}.jobs j
JOIN unnest(%(ids)s::text[], %(worker_ids)s::text[], %(attempts)s::int4[]) AS l(id, worker_id, attempt)
  ON j.id = l.id AND j.worker_id = l.worker_id AND j.attempt = l.attempt
WHERE j.state = 'running'
ORDER BY j.id FOR UPDATE OF j

-- name: update_workflows
UPDATE {schema}.workflows w SET body = u.body
FROM unnest(%(ids)s::text[], %(bodies)s::bytea[]) AS u(id, body)
WHERE w.id = u.id
