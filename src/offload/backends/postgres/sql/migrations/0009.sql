-- offload PostgreSQL schema, version 9: a job's own retention (its task's retention=).
-- keep_<state>_s: seconds a job finished in that state is kept (NULL: the backend's retention,
-- the URL's), written at enqueue. Nullable with no default: adding them rewrites no row.
-- The finished index is split by whether a job has its own retention for the state it is in
-- (the backend's policy walks one half; purge both), and an expiry index (finish + own
-- retention) serves the others. Every finish sets state and finished_at, and both indexes
-- follow from them: no finishing path can forget an expiry. Building them scans the table
-- once, holding writes meanwhile (like every migration here: run `offload migrate` first).

ALTER TABLE {schema}.jobs ADD COLUMN keep_succeeded_s float8, ADD COLUMN keep_dead_s float8,
    ADD COLUMN keep_cancelled_s float8;

CREATE INDEX jobs_finished_by_own_idx ON {schema}.jobs (state, ({own} IS NULL), finished_at)
    WHERE finished_at IS NOT NULL;

CREATE INDEX jobs_keep_until_idx ON {schema}.jobs ((finished_at + {own}))
    WHERE finished_at IS NOT NULL AND {own} IS NOT NULL;

DROP INDEX {schema}.jobs_finished_idx;
