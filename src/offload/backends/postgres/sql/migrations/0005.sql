-- offload PostgreSQL schema, version 5: rate and concurrency limits at claim (docs/limits.md).
-- A job carries its limits as buckets ('<cap>/<period_ms>/<scope>'; period 0: concurrency),
-- NULL for none. The ordinary claim takes only jobs without limits; jobs with limits are
-- claimed by gate_claim, one gated claim at a time (an advisory transaction lock), which
-- counts the running holders of each bucket and the claims within each rate window and passes
-- over held jobs: nothing is claimed and given back, and a held job uses no attempt.

ALTER TABLE {schema}.jobs ADD COLUMN limits text[];

-- Waiting limited jobs in claim order: the ordinary claim probes it (limited_due).
CREATE INDEX jobs_limited_claim_idx ON {schema}.jobs (queue, priority DESC, run_at, seq)
    WHERE limits IS NOT NULL AND state IN ('scheduled', 'queued');

-- The ordinary claim's order over jobs without limits: it filters limits IS NULL, and on the
-- claim index alone it would step over every waiting limited job of the queue on each claim.
CREATE INDEX jobs_claim_unlimited_idx ON {schema}.jobs (queue, priority DESC, run_at, seq)
    WHERE limits IS NULL AND state IN ('scheduled', 'queued');

-- Running limited jobs: the concurrency counts are taken from them, so a slot is free the
-- moment its job leaves running by any path (completion, cancel, recovery of a lost lease).
CREATE INDEX jobs_limited_running_idx ON {schema}.jobs (seq)
    WHERE limits IS NOT NULL AND state = 'running';

-- Claim times within each rate bucket's window.
CREATE TABLE {schema}.rate_log (
    bucket text NOT NULL,
    at     float8 NOT NULL
);
CREATE INDEX rate_log_bucket_idx ON {schema}.rate_log (bucket, at);

-- The ids to lease (at most p_limit, in claim order, jobs with and without limits), when jobs
-- were held the earliest time a rate lets one go ('infinity': only a completion frees them;
-- NULL: none held), and whether the walk met any job with limits.
CREATE FUNCTION {schema}.gate_claim(
    p_queues text[], p_ids text[], p_limit int, p_now float8, p_lock_ns int
) RETURNS TABLE (ids text[], held_until float8, limited boolean)
-- The walk usually stops after a few rows: plan its cursor for the first rows (an ordered
-- index scan), not for reading them all (a sort of every waiting job of the queue).
LANGUAGE plpgsql VOLATILE SET cursor_tuple_fraction = 0.001 AS $$
DECLARE
    -- Buckets seen by this claim, with their use (running, or claims in the window) and, for
    -- rates, when a slot frees: parallel arrays (array_position is C; jsonb updates copy).
    ub text[];
    uc int[];
    uf float8[];
    chosen text[] := '{}';
    cands refcursor;
    cand record;
    b text;
    i int;
    cap int;
    period float8;
    n int;
    t float8;
    ok boolean;
    until float8 := NULL;
    seen boolean := false;
BEGIN
    -- One gated claim at a time per schema; each statement below then sees the commits of
    -- the previous ones (READ COMMITTED takes a snapshot per statement).
    PERFORM pg_advisory_xact_lock(p_lock_ns, 5);
    SELECT coalesce(array_agg(x), '{}'), coalesce(array_agg(c), '{}'),
           coalesce(array_agg(NULL::float8), '{}')
    INTO ub, uc, uf
    FROM (SELECT x, count(*)::int AS c FROM {schema}.jobs j, unnest(j.limits) x
          WHERE j.limits IS NOT NULL AND j.state = 'running' GROUP BY x) s;
    -- One queue (the usual case) is walked down its claim index in order; with several,
    -- queue = ANY() makes PostgreSQL sort them.
    IF cardinality(p_queues) = 1 THEN
        OPEN cands FOR
            SELECT j.id, j.limits FROM {schema}.jobs j
            WHERE j.queue = p_queues[1]
              AND j.state IN ('scheduled', 'queued') AND j.run_at <= p_now
              AND (p_ids IS NULL OR j.id = ANY(p_ids))
              AND j.queue <> ALL(ARRAY(SELECT queue FROM {schema}.paused_queues))
            ORDER BY j.priority DESC, j.run_at, j.seq;
    ELSE
        OPEN cands FOR
            SELECT j.id, j.limits FROM {schema}.jobs j
            WHERE j.queue = ANY(p_queues)
              AND j.state IN ('scheduled', 'queued') AND j.run_at <= p_now
              AND (p_ids IS NULL OR j.id = ANY(p_ids))
              AND j.queue <> ALL(ARRAY(SELECT queue FROM {schema}.paused_queues))
            ORDER BY j.priority DESC, j.run_at, j.seq;
    END IF;
    LOOP
        FETCH cands INTO cand;
        EXIT WHEN NOT FOUND OR cardinality(chosen) >= p_limit;
        ok := true;
        seen := seen OR cand.limits IS NOT NULL;
        FOREACH b IN ARRAY coalesce(cand.limits, '{}') LOOP
            cap := split_part(b, '/', 1)::int;
            period := split_part(b, '/', 2)::float8 / 1000;
            i := array_position(ub, b);
            IF i IS NULL OR (period > 0 AND uf[i] IS NULL) THEN
                n := 0;
                t := NULL;
                IF period > 0 THEN
                    DELETE FROM {schema}.rate_log WHERE bucket = b AND at <= p_now - period;
                    -- Once full, a slot frees when the oldest of the last cap claims leaves.
                    SELECT count(*), coalesce(min(at), p_now) + period INTO n, t
                    FROM (SELECT at FROM {schema}.rate_log WHERE bucket = b
                          ORDER BY at DESC LIMIT cap) s;
                END IF;
                IF i IS NULL THEN
                    ub := ub || b;
                    uc := uc || n;
                    uf := uf || t;
                    i := cardinality(ub);
                ELSE
                    uc[i] := n;
                    uf[i] := t;
                END IF;
            END IF;
            IF uc[i] >= cap THEN
                ok := false;
                until := least(coalesce(until, 'infinity'), coalesce(uf[i], 'infinity'));
                EXIT;
            END IF;
        END LOOP;
        CONTINUE WHEN NOT ok;
        FOREACH b IN ARRAY coalesce(cand.limits, '{}') LOOP
            i := array_position(ub, b);
            uc[i] := uc[i] + 1;
            IF split_part(b, '/', 2)::int > 0 THEN
                INSERT INTO {schema}.rate_log (bucket, at) VALUES (b, p_now);
            END IF;
        END LOOP;
        chosen := chosen || cand.id;
    END LOOP;
    CLOSE cands;
    RETURN QUERY SELECT chosen, until, seen;
END;
$$;

-- Whether a limited job is due in these queues (the ordinary claim asks, to hand over to
-- gate_claim); one probe of jobs_limited_claim_idx per queue.
CREATE FUNCTION {schema}.limited_due(p_queues text[], p_now float8) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (SELECT 1 FROM unnest(p_queues) AS w(q),
                   LATERAL (SELECT 1 FROM {schema}.jobs
                            WHERE queue = w.q AND limits IS NOT NULL
                              AND state IN ('scheduled', 'queued') AND run_at <= p_now
                            LIMIT 1) d)
$$;
