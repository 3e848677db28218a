-- Named queries of the sqlite:// backend (offload.backends.sqlite), loaded once at import.
-- A block runs from its "-- name: xyz" line to the next one. Words in braces are replaced by
-- the backend before use (cols: the job columns in the order it decodes them; queues, queue,
-- states, candidates: generated parameter lists; own: a finished job's own retention, see
-- queries.py), so braces never appear in a comment inside a block. Parameters are named (:now, :limit, ...). States are JobState's text values.

-- name: schema
-- seq is the rowid: enqueue order, and the cheapest key to update claimed rows by.
CREATE TABLE IF NOT EXISTS offload_jobs (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    task TEXT NOT NULL,
    queue TEXT NOT NULL,
    args BLOB NOT NULL,
    state TEXT NOT NULL,
    priority INTEGER NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    run_at REAL NOT NULL,
    created_at REAL NOT NULL,
    key TEXT,
    started_at REAL,
    finished_at REAL,
    worker_id TEXT,
    lease_expires_at REAL,
    result BLOB,
    error TEXT,
    errors TEXT
);
-- Claim walks this index in claim order within a queue; finished rows are not in it, so a
-- file holding millions of finished jobs claims as fast as an empty one.
CREATE INDEX IF NOT EXISTS offload_jobs_waiting
    ON offload_jobs (queue, priority DESC, run_at, seq)
    WHERE state IN ('scheduled', 'queued');
-- Dedup by key among a queue's active jobs (keys are scoped by queue); also makes the dedup
-- lookup on enqueue an index probe.
CREATE UNIQUE INDEX IF NOT EXISTS offload_jobs_active_queue_key
    ON offload_jobs (queue, key)
    WHERE key IS NOT NULL AND state IN ('scheduled', 'queued', 'running');
CREATE INDEX IF NOT EXISTS offload_jobs_lease
    ON offload_jobs (lease_expires_at)
    WHERE state = 'running';
CREATE INDEX IF NOT EXISTS offload_jobs_created ON offload_jobs (created_at, id);
-- unique_for: the newest job holding a key, whatever its state, is one index probe.
CREATE INDEX IF NOT EXISTS offload_jobs_queue_key_created
    ON offload_jobs (queue, key, created_at)
    WHERE key IS NOT NULL;
CREATE TABLE IF NOT EXISTS offload_paused (queue TEXT PRIMARY KEY) WITHOUT ROWID;
-- One row per declared schedule (offload.schedules): the latest tick enqueued or skipped
-- (never lowered), the job of the latest enqueued one, and the operator's pause flag.
CREATE TABLE IF NOT EXISTS offload_schedules (
    name TEXT PRIMARY KEY,
    last_tick REAL,
    last_job_id TEXT,
    paused INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS offload_workers (
    id TEXT PRIMARY KEY,
    info BLOB NOT NULL,
    last_seen_at REAL NOT NULL,
    expires_at REAL NOT NULL
) WITHOUT ROWID;

-- name: upgrade_2
-- Version 1 files deduplicated by key alone; schema (run just before) has created the index
-- by (queue, key), which the old, stricter index cannot have made fail.
DROP INDEX IF EXISTS offload_jobs_active_key;

-- name: upgrade_4
-- Retention and purge delete the oldest finished jobs of a state, in batches: this index finds
-- them without a scan. Active jobs (finished_at NULL) stay out of it, so enqueue and claim do
-- not pay for it; a completion pays one index insert.
CREATE INDEX IF NOT EXISTS offload_jobs_finished
    ON offload_jobs (state, finished_at) WHERE finished_at IS NOT NULL;

-- name: upgrade_7
-- Job headers (a JSON object, NULL when none) and the last progress a running attempt
-- reported (JSON). Not in the schema block: a fresh file gets them here too.
ALTER TABLE offload_jobs ADD COLUMN headers TEXT;
ALTER TABLE offload_jobs ADD COLUMN progress BLOB;

-- name: upgrade_8
-- A job's own retention (its task's retention=; NULL: the backend's), seconds by final state,
-- and the two indexes retention walks: the finished index split by whether a job has its own
-- retention for the state it is in (the backend's policy walks one half, purge both), and the
-- expiry (finish + own retention) of those that have. Every finish sets state and finished_at,
-- and these index expressions follow from them: no finishing path can forget an expiry.
ALTER TABLE offload_jobs ADD COLUMN keep_succeeded_s REAL;
ALTER TABLE offload_jobs ADD COLUMN keep_dead_s REAL;
ALTER TABLE offload_jobs ADD COLUMN keep_cancelled_s REAL;
DROP INDEX IF EXISTS offload_jobs_finished;
CREATE INDEX IF NOT EXISTS offload_jobs_finished_by_own
    ON offload_jobs (state, ({own} IS NULL), finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS offload_jobs_keep_until
    ON offload_jobs (finished_at + {own}) WHERE finished_at IS NOT NULL AND {own} IS NOT NULL;

-- name: insert_job
INSERT INTO offload_jobs (id, task, queue, args, state, priority, max_attempts, run_at,
                          created_at, key, headers, keep_succeeded_s, keep_dead_s,
                          keep_cancelled_s)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?);

-- name: set_progress
-- Fenced by the lease, as heartbeat is: a lost lease writes nothing.
UPDATE offload_jobs SET progress = ?
WHERE id = ? AND state = 'running' AND worker_id = ? AND attempt = ?;

-- name: active_by_key
SELECT {cols} FROM offload_jobs
WHERE queue = ? AND key = ? AND key IS NOT NULL AND state IN ('scheduled', 'queued', 'running');

-- name: newest_by_key
-- The newest job of any state holding (queue, key): a finished one still blocks the key while
-- younger than the new job's unique_for window.
SELECT {cols} FROM offload_jobs
WHERE queue = ? AND key = ? AND key IS NOT NULL
ORDER BY created_at DESC, seq DESC LIMIT 1;

-- name: replace_waiting
-- Debounce: a waiting job takes the new job's arguments and time (it keeps its id and key).
UPDATE offload_jobs SET args = ?, priority = ?, run_at = ?, state = ?
WHERE id = ? AND state IN ('scheduled', 'queued');

-- name: waiting_count
-- The claim index holds the jobs without a fair key, the fair index those with one (upgrade 8).
SELECT (SELECT count(*) FROM offload_jobs
        WHERE queue = ?1 AND state IN ('scheduled', 'queued') AND fair IS NULL)
     + (SELECT count(*) FROM offload_jobs
        WHERE queue = ?1 AND state IN ('scheduled', 'queued') AND fair IS NOT NULL);

-- name: claim
-- One statement: pick due jobs in claim order and lease them. The candidates are one
-- claim_candidates block per queue joined by UNION ALL: each walks the waiting index of its
-- queue in order and stops at :limit, so a claim over several deep queues never sorts more than
-- :limit rows per queue; a claim of given ids has one claim_ids_candidates block instead.
-- RETURNING does not promise the subquery's order, so the backend sorts the (at most :limit)
-- returned rows again.
UPDATE offload_jobs
SET state = 'running', attempt = attempt + 1, worker_id = :worker_id, started_at = :now,
    lease_expires_at = :expires
WHERE seq IN (
    SELECT seq FROM ({candidates})
    ORDER BY priority DESC, run_at, seq
    LIMIT :limit
)
RETURNING {cols};

-- name: claim_candidates
SELECT * FROM (
    SELECT seq, priority, run_at FROM offload_jobs
    WHERE state IN ('scheduled', 'queued') AND queue = {queue} AND run_at <= :now
      AND fair IS NULL AND {queue} NOT IN (SELECT queue FROM offload_paused)
    ORDER BY priority DESC, run_at, seq
    LIMIT :limit
)

-- name: claim_ids_candidates
-- The candidates of a claim narrowed to given ids (a broker's deliveries), passed as one JSON
-- array of distinct ids so that any number fits in one parameter. CROSS JOIN fixes the loop
-- order: each id is one probe of the id index; left to itself, the planner may walk the
-- queue's whole waiting index instead, which a broker's state store keeps deep.
SELECT j.seq, j.priority, j.run_at FROM json_each(:ids) AS wanted
CROSS JOIN offload_jobs AS j ON j.id = wanted.value
WHERE j.state IN ('scheduled', 'queued') AND j.queue IN ({queues}) AND j.run_at <= :now
  AND j.queue NOT IN (SELECT queue FROM offload_paused)

-- name: bury_undecodable
-- A broken errors history is dropped so that the dead job can at least be listed with why.
UPDATE offload_jobs
SET state = 'dead', error = ?, finished_at = ?, worker_id = NULL, lease_expires_at = NULL,
    errors = CASE WHEN json_valid(errors) AND json_type(errors) = 'array' THEN errors END
WHERE seq = ?;

-- name: heartbeat
UPDATE offload_jobs SET lease_expires_at = ?
WHERE id = ? AND worker_id = ? AND attempt = ? AND state = 'running';

-- name: complete_succeeded
UPDATE offload_jobs
SET state = 'succeeded', result = :result, finished_at = :now, error = NULL,
    worker_id = NULL, lease_expires_at = NULL
WHERE id = :id AND worker_id = :worker_id AND attempt = :attempt AND state = 'running';

-- name: complete_dead
-- A broken errors column must not make the batch fail: it is replaced, not appended to.
UPDATE offload_jobs
SET state = 'dead', error = :error, finished_at = :now, result = NULL,
    errors = CASE WHEN json_valid(errors) AND json_type(errors) = 'array'
                  THEN json_insert(errors, '$[#]', json_object('attempt', attempt, 'at', :now,
                                                              'error', :error,
                                                              'worker_id', worker_id))
                  ELSE json_array(json_object('attempt', attempt, 'at', :now,
                                              'error', :error, 'worker_id', worker_id)) END,
    worker_id = NULL, lease_expires_at = NULL
WHERE id = :id AND worker_id = :worker_id AND attempt = :attempt AND state = 'running';

-- name: complete_retry
UPDATE offload_jobs
SET state = 'scheduled', run_at = :run_at,
    errors = CASE WHEN json_valid(errors) AND json_type(errors) = 'array'
                  THEN json_insert(errors, '$[#]', json_object('attempt', attempt, 'at', :now,
                                                              'error', :error,
                                                              'worker_id', worker_id))
                  ELSE json_array(json_object('attempt', attempt, 'at', :now,
                                              'error', :error, 'worker_id', worker_id)) END,
    worker_id = NULL, lease_expires_at = NULL
WHERE id = :id AND worker_id = :worker_id AND attempt = :attempt AND state = 'running';

-- name: complete_cancelled
UPDATE offload_jobs
SET state = 'cancelled', error = :error, finished_at = :now, result = NULL,
    worker_id = NULL, lease_expires_at = NULL
WHERE id = :id AND worker_id = :worker_id AND attempt = :attempt AND state = 'running';

-- name: complete_snoozed
UPDATE offload_jobs
SET state = CASE WHEN :run_at <= :now THEN 'queued' ELSE 'scheduled' END, run_at = :run_at,
    attempt = max(attempt - 1, 0), worker_id = NULL, lease_expires_at = NULL
WHERE id = :id AND worker_id = :worker_id AND attempt = :attempt AND state = 'running';

-- name: expired_leases
-- Recovery's find: running jobs whose lease expired by :now, oldest expiry first. The decision
-- for each is made in Python (offload.backends.common.expired_lease), not here.
SELECT id, attempt, max_attempts, worker_id FROM offload_jobs
WHERE state = 'running' AND lease_expires_at <= :now
ORDER BY lease_expires_at
LIMIT :limit;

-- name: write_expired_lease
-- Recovery's write of one decision, fenced on the lease it was found with: a job finished,
-- heartbeated or re-leased since it was found matches nothing. :entry is the AttemptError to
-- append; :error is the job's final error when :state is dead (run_at is kept then).
UPDATE offload_jobs
SET state = :state,
    run_at = CASE WHEN :state = 'dead' THEN run_at ELSE :now END,
    finished_at = CASE WHEN :state = 'dead' THEN :now END,
    error = CASE WHEN :state = 'dead' THEN :error ELSE error END,
    errors = CASE WHEN json_valid(errors) AND json_type(errors) = 'array'
                  THEN json_insert(errors, '$[#]', json(:entry))
                  ELSE json_array(json(:entry)) END,
    worker_id = NULL, lease_expires_at = NULL
WHERE id = :id AND state = 'running' AND attempt = :attempt AND worker_id IS :worker_id
  AND lease_expires_at <= :now;

-- name: get
SELECT {cols} FROM offload_jobs WHERE id = ?;

-- name: cancel
UPDATE offload_jobs
SET state = 'cancelled', error = 'cancelled', finished_at = ?, result = NULL,
    worker_id = NULL, lease_expires_at = NULL
WHERE id = ? AND state IN ('scheduled', 'queued', 'running')
RETURNING {cols};

-- name: requeue
UPDATE offload_jobs
SET state = 'queued', attempt = 0, run_at = ?, finished_at = NULL, error = NULL, result = NULL,
    worker_id = NULL, lease_expires_at = NULL
WHERE id = ? AND state IN ('dead', 'cancelled')
RETURNING {cols};

-- name: delete
DELETE FROM offload_jobs WHERE id = ? AND state != 'running';

-- name: purge_batch
-- One bounded batch of a purge; the caller repeats it until a batch comes back short, so no
-- single transaction holds the writer for long. The finished index gives the oldest rows of
-- one state without a scan (both halves of it: jobs with their own retention and without).
DELETE FROM offload_jobs WHERE seq IN (
    SELECT seq FROM offload_jobs
    WHERE state = :state AND ({own} IS NULL) IN (0, 1) AND finished_at <= :cutoff
      AND finished_at IS NOT NULL AND (:queue IS NULL OR queue = :queue)
    LIMIT :batch
);

-- name: prune_batch
-- One bounded batch of retention by the backend's policy: jobs of :state without their own
-- retention finished at or before :cutoff. Jobs with their own are in the other half of the
-- finished index, so a backlog of them (a task keeping its jobs for a year) is never scanned.
DELETE FROM offload_jobs WHERE seq IN (
    SELECT seq FROM offload_jobs
    WHERE state = :state AND ({own} IS NULL) = 1 AND finished_at <= :cutoff
      AND finished_at IS NOT NULL
    LIMIT :batch
);

-- name: prune_own_batch
-- One bounded batch of retention by the jobs' own (their task's retention=): those whose
-- finish plus their own age for their state is past :now, found by the keep_until index.
DELETE FROM offload_jobs WHERE seq IN (
    SELECT seq FROM offload_jobs
    WHERE finished_at + {own} <= :now AND finished_at IS NOT NULL AND {own} IS NOT NULL
    LIMIT :batch
);

-- name: free_pages
PRAGMA freelist_count;

-- name: incremental_vacuum
-- Gives a free page back to the file system (the file has auto_vacuum=INCREMENTAL); see
-- offload.backends.sqlite.retention for why it is run once per page.
PRAGMA incremental_vacuum(1);

-- name: checkpoint_truncate
-- Copies the WAL into the file and truncates both (offload.backends.sqlite.retention). Run on
-- a connection with busy_timeout 0: with a reader in the way it reports busy, never waits.
PRAGMA wal_checkpoint(TRUNCATE);

-- name: list_jobs
-- Optional filters are NULL when unused; the cursor is the (created_at, id) of the last row
-- of the previous page.
SELECT {cols} FROM offload_jobs
WHERE (:state IS NULL OR state = :state)
  AND (:queue IS NULL OR queue = :queue)
  AND (:task IS NULL OR task = :task)
  AND (:needle IS NULL OR instr(args, :needle) > 0)
  AND (:after IS NULL OR created_at >= :after)
  AND (:before IS NULL OR created_at < :before)
  AND (:c_at IS NULL OR created_at < :c_at OR (created_at = :c_at AND id < :c_id))
ORDER BY created_at DESC, id DESC
LIMIT :limit;

-- name: counts
SELECT queue, state, count(*) FROM offload_jobs GROUP BY queue, state;

-- name: next_due
-- The earliest run_at of waiting jobs in the given queues that are not paused (NULL: none),
-- without a fair key and with one (each on its index).
SELECT min(at) FROM (
    SELECT min(run_at) AS at FROM offload_jobs
    WHERE state IN ('scheduled', 'queued') AND queue IN ({queues}) AND fair IS NULL
      AND queue NOT IN (SELECT queue FROM offload_paused)
    UNION ALL
    SELECT min(run_at) FROM offload_jobs
    WHERE state IN ('scheduled', 'queued') AND queue IN ({queues}) AND fair IS NOT NULL
      AND queue NOT IN (SELECT queue FROM offload_paused)
);

-- name: data_version
PRAGMA data_version;

-- name: pause
INSERT OR IGNORE INTO offload_paused (queue) VALUES (?);

-- name: resume
DELETE FROM offload_paused WHERE queue = ?;

-- name: paused_queues
SELECT queue FROM offload_paused;

-- name: report_worker
INSERT INTO offload_workers (id, info, last_seen_at, expires_at) VALUES (?, ?, ?, ?)
ON CONFLICT (id) DO UPDATE
SET info = excluded.info, last_seen_at = excluded.last_seen_at, expires_at = excluded.expires_at;

-- name: forget_expired_workers
DELETE FROM offload_workers WHERE expires_at <= ?;

-- name: remove_worker
DELETE FROM offload_workers WHERE id = ?;

-- name: workers
SELECT info, last_seen_at FROM offload_workers WHERE expires_at > ?;

-- name: schedule_records
SELECT name, last_tick, last_job_id, paused FROM offload_schedules ORDER BY name;

-- name: advance_schedule
-- last_tick only rises; the job id goes with the tick that rose it.
INSERT INTO offload_schedules (name, last_tick, last_job_id) VALUES (:name, :tick, :job_id)
ON CONFLICT (name) DO UPDATE
SET last_job_id = CASE WHEN last_tick IS NULL OR excluded.last_tick > last_tick
                       THEN coalesce(excluded.last_job_id, last_job_id)
                       ELSE last_job_id END,
    last_tick = CASE WHEN last_tick IS NULL OR excluded.last_tick > last_tick
                     THEN excluded.last_tick ELSE last_tick END;

-- name: set_schedule_paused
INSERT INTO offload_schedules (name, paused) VALUES (:name, :paused)
ON CONFLICT (name) DO UPDATE SET paused = excluded.paused;

-- name: upgrade_5
-- Rate and concurrency limits (docs/limits.md): the buckets a job carries (a JSON array, NULL
-- for none), an index of the waiting limited jobs (so a claim learns in one probe whether it
-- needs the gated path), one of the running limited jobs (the concurrency counts are taken
-- from them: a slot is free the moment its job leaves running, by any path, recovery too),
-- and the claim times within each rate bucket's window.
ALTER TABLE offload_jobs ADD COLUMN limits TEXT;
CREATE INDEX IF NOT EXISTS offload_jobs_limited_waiting
    ON offload_jobs (queue, run_at)
    WHERE limits IS NOT NULL AND state IN ('scheduled', 'queued');
CREATE INDEX IF NOT EXISTS offload_jobs_limited_running
    ON offload_jobs (seq)
    WHERE limits IS NOT NULL AND state = 'running';
CREATE TABLE IF NOT EXISTS offload_rate_log (bucket TEXT NOT NULL, at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS offload_rate_log_bucket ON offload_rate_log (bucket, at);

-- name: set_limits
UPDATE offload_jobs SET limits = ? WHERE id = ?;

-- name: any_limited_due
SELECT 1 FROM offload_jobs
WHERE limits IS NOT NULL AND state IN ('scheduled', 'queued') AND queue IN ({queues})
  AND run_at <= :now
LIMIT 1;

-- name: gated_candidates
-- Waiting due jobs without a fair key in claim order, walked by the claim until it has taken
-- :limit of them; jobs held by a limit are passed over (they stay as they are: no attempt is
-- used). Jobs with a fair key are claimed by fair_claim (offload.backends.sqlite.fairness).
SELECT seq, limits, priority, run_at FROM offload_jobs
WHERE state IN ('scheduled', 'queued') AND queue IN ({queues}) AND run_at <= :now
  AND fair IS NULL AND queue NOT IN (SELECT queue FROM offload_paused) {only_ids}
ORDER BY priority DESC, run_at, seq;

-- name: claim_seqs
UPDATE offload_jobs
SET state = 'running', attempt = attempt + 1, worker_id = :worker_id, started_at = :now,
    lease_expires_at = :expires
WHERE seq IN (SELECT value FROM json_each(:seqs))
RETURNING {cols};

-- name: running_limits
SELECT limits FROM offload_jobs WHERE limits IS NOT NULL AND state = 'running';

-- name: rate_forget
DELETE FROM offload_rate_log WHERE bucket = ? AND at <= ?;

-- name: rate_recent
SELECT at FROM offload_rate_log WHERE bucket = ?;

-- name: rate_log
INSERT INTO offload_rate_log (bucket, at) VALUES (?, ?);

-- name: limit_usage
SELECT queue, state, limits FROM offload_jobs
WHERE limits IS NOT NULL AND state IN ('scheduled', 'queued', 'running');

-- name: upgrade_6
-- Workflows (offload.workflow): one row per workflow, its record as JSON; a step's job is an
-- ordinary row of offload_jobs whose id is "<workflow id>.<step index>".
CREATE TABLE IF NOT EXISTS offload_workflows (
    id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    body BLOB NOT NULL
) WITHOUT ROWID;

-- name: insert_workflow
INSERT INTO offload_workflows (id, created_at, body) VALUES (?, ?, ?);

-- name: get_workflow
SELECT body FROM offload_workflows WHERE id = ?;

-- name: update_workflow
UPDATE offload_workflows SET body = ? WHERE id = ?;

-- name: upgrade_9
-- Fair claims (offload.backends.fairness). A job's fair key is the first entry of its limits
-- ("fair:tenant=..."); the virtual column fair names it (NULL: none), computed, never written.
-- The claim index (schema) is rebuilt without the jobs that have one, so the ordinary claim
-- walks exactly what it did before whatever fair jobs wait beside it; they get an index of
-- their own, by key: a fair claim reads the keys of a queue by a loose index scan, then the
-- first due jobs of each. offload_fair_turns: when each key was last served (a counter).
-- (json_valid: a damaged limits column must not make every write of its row fail)
ALTER TABLE offload_jobs ADD COLUMN fair TEXT GENERATED ALWAYS AS (
    CASE WHEN substr(limits, 1, 7) = '["fair:' AND json_valid(limits)
         THEN json_extract(limits, '$[0]') END) VIRTUAL;
DROP INDEX IF EXISTS offload_jobs_waiting;
CREATE INDEX offload_jobs_waiting
    ON offload_jobs (queue, priority DESC, run_at, seq)
    WHERE state IN ('scheduled', 'queued') AND fair IS NULL;
-- (state last: the loose scan then reads the index alone)
CREATE INDEX IF NOT EXISTS offload_jobs_fair_waiting
    ON offload_jobs (queue, fair, priority DESC, run_at, seq, state)
    WHERE state IN ('scheduled', 'queued') AND fair IS NOT NULL;
CREATE TABLE IF NOT EXISTS offload_fair_turns (
    queue TEXT NOT NULL,
    fair TEXT NOT NULL,
    turn INTEGER NOT NULL,
    PRIMARY KEY (queue, fair)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS offload_fair_turns_turn ON offload_fair_turns (turn);

-- name: any_fair_due
SELECT 1 FROM offload_jobs
WHERE fair IS NOT NULL AND state IN ('scheduled', 'queued') AND queue IN ({queues})
  AND run_at <= :now
LIMIT 1;

-- name: fair_heads
-- The first due job of every key of queue :q (a key with none due has no row), by a loose
-- scan of the fair index (one probe per key, on the index alone) and one probe for its head,
-- with the key's turn (0: none kept).
WITH RECURSIVE k(fair) AS (
    SELECT min(fair) FROM offload_jobs
    WHERE queue = :q AND fair IS NOT NULL AND state IN ('scheduled', 'queued')
    UNION ALL
    SELECT (SELECT min(fair) FROM offload_jobs
            WHERE queue = :q AND fair > k.fair AND fair IS NOT NULL
              AND state IN ('scheduled', 'queued'))
    FROM k WHERE k.fair IS NOT NULL
), h AS (
    SELECT k.fair, (SELECT seq FROM offload_jobs
                    WHERE queue = :q AND fair = k.fair AND fair IS NOT NULL
                      AND state IN ('scheduled', 'queued') AND run_at <= :now
                    ORDER BY priority DESC, run_at, seq LIMIT 1) AS seq
    FROM k WHERE k.fair IS NOT NULL
)
SELECT h.fair, j.seq, j.limits, j.priority, j.run_at, coalesce(t.turn, 0)
FROM h JOIN offload_jobs AS j ON j.seq = h.seq
LEFT JOIN offload_fair_turns AS t ON t.queue = :q AND t.fair = h.fair;

-- name: fair_lane
-- The first :cap due jobs of one key, in claim order.
SELECT seq, limits, priority, run_at FROM offload_jobs
WHERE queue = :q AND fair = :fair AND fair IS NOT NULL AND state IN ('scheduled', 'queued')
  AND run_at <= :now
ORDER BY priority DESC, run_at, seq
LIMIT :cap;

-- name: fair_last_turn
SELECT coalesce(max(turn), 0) FROM offload_fair_turns;

-- name: fair_turn
SELECT turn FROM offload_fair_turns WHERE queue = ? AND fair = ?;

-- name: fair_set_turn
INSERT INTO offload_fair_turns (queue, fair, turn) VALUES (?, ?, ?)
ON CONFLICT (queue, fair) DO UPDATE SET turn = excluded.turn;

-- name: fair_forget_emptied
-- The turns of the keys :keys of queue :q that have no due job left once the jobs :seqs (a
-- JSON array, about to be leased) are taken.
DELETE FROM offload_fair_turns
WHERE queue = :q AND fair IN (SELECT value FROM json_each(:keys))
  AND NOT EXISTS (SELECT 1 FROM offload_jobs AS j
                  WHERE j.queue = :q AND j.fair = offload_fair_turns.fair
                    AND j.fair IS NOT NULL AND j.state IN ('scheduled', 'queued')
                    AND j.run_at <= :now
                    AND j.seq NOT IN (SELECT value FROM json_each(:seqs)));

-- name: is_paused
SELECT 1 FROM offload_paused WHERE queue = ?;
