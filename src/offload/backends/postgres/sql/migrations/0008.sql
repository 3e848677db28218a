-- offload PostgreSQL schema, version 8: autovacuum settings of the jobs table (issue 24).
-- Every claim and every completion leaves a dead row version (the state column is in the
-- predicate of the partial indexes, so no state change can be a HOT update), and a claim's
-- dead entry stays at the head of the claim index, where every later claim steps over it,
-- until a VACUUM removes it. The server defaults wait for 20% of the table to be dead: 200,000
-- row versions in a table of a million jobs. These make autovacuum take the jobs table each
-- time it visits the database once 10,000 versions are dead, whatever the table's size, at
-- full speed (no cost delay: the table is hot and its dead rows are what claims walk over).
-- Inserts alone (a bulk enqueue) also trigger one every 100,000 rows, which sets the
-- visibility map, so later vacuums skip the pages no claim touched.
-- Storage parameters only: no row is rewritten, the lock is brief. The backend also vacuums
-- the table itself as jobs pass (vacuum_every, docs/postgres.md), since autovacuum visits a
-- database at most once per autovacuum_naptime (a server setting, one minute by default).

ALTER TABLE {schema}.jobs SET (
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 10000,
    autovacuum_vacuum_insert_scale_factor = 0,
    autovacuum_vacuum_insert_threshold = 100000,
    autovacuum_vacuum_cost_delay = 0
);
