-- offload PostgreSQL schema, version 3: uniqueness with a window, and schedule records.
-- unique_for looks up the newest job holding a key whatever its state: one index probe.
CREATE INDEX jobs_queue_key_created_idx ON {schema}.jobs (queue, key, created_at)
    WHERE key IS NOT NULL;

-- One row per declared schedule: the latest tick enqueued (never lowered) and whether an
-- operator paused it. Written by every worker's scheduler; the tick's job key makes each tick
-- run once, this row only tells a scheduler where to resume.
CREATE TABLE {schema}.schedules (
    name text PRIMARY KEY,
    last_tick float8,
    last_job_id text,
    paused boolean NOT NULL DEFAULT false
);
