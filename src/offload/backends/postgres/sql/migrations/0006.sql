-- offload PostgreSQL schema, version 6: workflows (offload.workflow). One row per workflow,
-- its record as JSON; a step's job is an ordinary row of jobs whose id is
-- "<workflow id>.<step index>". A completion locks the row (FOR UPDATE) to advance it.

CREATE TABLE {schema}.workflows (
    id          text PRIMARY KEY,
    created_at  float8 NOT NULL,
    body        bytea NOT NULL
);
