-- offload PostgreSQL schema, version 1. {schema} is replaced by the quoted schema name.
-- Times are float8 seconds since the Unix epoch on the database's clock.

CREATE TABLE {schema}.jobs (
    id               text PRIMARY KEY,
    seq              bigint GENERATED ALWAYS AS IDENTITY,
    task             text NOT NULL,
    queue            text NOT NULL,
    args             bytea NOT NULL,
    state            text NOT NULL CHECK (state IN
                        ('scheduled', 'queued', 'running', 'succeeded', 'dead', 'cancelled')),
    priority         smallint NOT NULL DEFAULT 0,
    attempt          integer NOT NULL DEFAULT 0,
    max_attempts     integer NOT NULL,
    run_at           float8 NOT NULL,
    created_at       float8 NOT NULL,
    key              text,
    started_at       float8,
    finished_at      float8,
    worker_id        text,
    lease_expires_at float8,
    result           bytea,
    error            text,
    errors           jsonb NOT NULL DEFAULT '[]'
);

-- Claim order over waiting rows only: finished rows (the bulk of the table) never enter it.
CREATE INDEX jobs_claim_idx ON {schema}.jobs (queue, priority DESC, run_at, seq)
    WHERE state IN ('scheduled', 'queued');

-- The next scheduled run_at of a queue, for waking idle workers when a job becomes due.
CREATE INDEX jobs_scheduled_idx ON {schema}.jobs (queue, run_at)
    WHERE state = 'scheduled';

-- Expired leases, for recover().
CREATE INDEX jobs_lease_idx ON {schema}.jobs (lease_expires_at)
    WHERE state = 'running';

-- Dedup by key among active jobs.
CREATE UNIQUE INDEX jobs_active_key_idx ON {schema}.jobs (key)
    WHERE key IS NOT NULL AND state IN ('scheduled', 'queued', 'running');

-- Listing, newest first.
CREATE INDEX jobs_created_idx ON {schema}.jobs (created_at DESC, id DESC);

-- Retention and purge.
CREATE INDEX jobs_finished_idx ON {schema}.jobs (state, finished_at)
    WHERE state IN ('succeeded', 'dead', 'cancelled');

CREATE TABLE {schema}.paused_queues (
    queue     text PRIMARY KEY,
    paused_at float8 NOT NULL
);

CREATE TABLE {schema}.workers (
    id           text PRIMARY KEY,
    info         bytea NOT NULL,
    last_seen_at float8 NOT NULL,
    expires_at   float8 NOT NULL
);
