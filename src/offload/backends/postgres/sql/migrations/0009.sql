-- offload PostgreSQL schema, version 9: a job's own retention (its task's retention=).
-- keep_<state>_s: seconds a job finished in that state is kept (NULL: the backend's retention,
-- the URL's), written at enqueue. Nullable with no default: adding them rewrites no row.
-- The finished index is split in two partial indexes by whether a job has its own retention
-- for the state it is in: the backend's policy walks the first only (a backlog a task keeps for
-- a year is never walked by a pass), purge both; each finished row is in exactly one. An expiry
-- index (finish + own retention) finds the jobs whose own retention has run out. Every finish
-- sets state and finished_at, and the indexes follow from them: no finishing path can forget an
-- expiry. Partial rather than one index with a boolean column: the planner estimates a partial
-- index's size from its own entries, so it keeps using it when a backlog of the other kind
-- makes a sequential scan look cheap. Building them scans the table once, holding writes
-- meanwhile (like every migration here: run `offload migrate` before starting workers).

ALTER TABLE {schema}.jobs ADD COLUMN keep_succeeded_s float8, ADD COLUMN keep_dead_s float8,
    ADD COLUMN keep_cancelled_s float8;

CREATE INDEX jobs_finished_backend_idx ON {schema}.jobs (state, finished_at)
    WHERE finished_at IS NOT NULL AND {own} IS NULL;

CREATE INDEX jobs_finished_own_idx ON {schema}.jobs (state, finished_at)
    WHERE finished_at IS NOT NULL AND {own} IS NOT NULL;

CREATE INDEX jobs_keep_until_idx ON {schema}.jobs ((finished_at + {own}))
    WHERE finished_at IS NOT NULL AND {own} IS NOT NULL;

DROP INDEX {schema}.jobs_finished_idx;
