-- offload PostgreSQL schema, version 7: job headers and progress.
-- headers: the job's headers as a JSON object (NULL when it has none), written at enqueue.
-- progress: the JSON document a running attempt last reported (set_progress, lease-fenced).
-- Both nullable with no default: adding them rewrites no row and takes a brief lock only.

ALTER TABLE {schema}.jobs ADD COLUMN headers text, ADD COLUMN progress bytea;
