-- offload PostgreSQL schema, version 2: dedup keys are scoped by queue.
-- Version 1 held one active job per key across all queues; the contract is one per
-- (queue, key). The new index accepts every row the old one did, so it builds on existing data.
-- Enqueue names the index's columns in ON CONFLICT, so processes of the previous release
-- cannot enqueue once this has run: migrate, then deploy the new release everywhere.

CREATE UNIQUE INDEX jobs_active_queue_key_idx ON {schema}.jobs (queue, key)
    WHERE key IS NOT NULL AND state IN ('scheduled', 'queued', 'running');

DROP INDEX {schema}.jobs_active_key_idx;
