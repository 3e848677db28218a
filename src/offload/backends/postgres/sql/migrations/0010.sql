-- offload PostgreSQL schema, version 10: fair claims across keys (offload.backends.fairness).
-- A job's fair key is the first entry of its limits ('fair:tenant="acme"'), so a fair job
-- always has limits: the ordinary claim (limits IS NULL) never takes it, limited_due sees it,
-- and its queue's claims go to gate_claim, which now hands a claim whose queues hold due fair
-- jobs to fair_claim. The ordinary claim's statements, indexes and plans are unchanged.

-- Each key's waiting jobs in claim order: fair_claim reads the keys of a queue by a loose
-- scan of it (one probe per key), then the first jobs of each.
CREATE INDEX jobs_fair_idx ON {schema}.jobs (queue, (limits[1]), priority DESC, run_at, seq)
    WHERE limits[1] LIKE 'fair:%' AND state IN ('scheduled', 'queued');

-- The jobs without a fair key but with limits, in claim order: with jobs_claim_unlimited_idx
-- (no limits at all) they make the lane of the jobs without a key, read without stepping
-- over the fair jobs. Jobs without limits are not in it: their enqueue pays nothing.
CREATE INDEX jobs_limited_unkeyed_idx ON {schema}.jobs (queue, priority DESC, run_at, seq)
    WHERE limits IS NOT NULL AND NOT (limits[1] LIKE 'fair:%')
      AND state IN ('scheduled', 'queued');

-- When each key (fair '' : the jobs without one) of a queue was last served.
CREATE TABLE {schema}.fair_turns (
    queue text NOT NULL,
    fair  text NOT NULL,
    turn  bigint NOT NULL,
    PRIMARY KEY (queue, fair)
);
CREATE SEQUENCE {schema}.fair_turn_seq;

-- The walk of version 5, unchanged, under its new name; gate_claim below calls it.
ALTER FUNCTION {schema}.gate_claim(text[], text[], int, float8, int) RENAME TO gate_walk;

-- The fair keys with waiting jobs in p_queues, by a loose scan of jobs_fair_idx.
CREATE FUNCTION {schema}.fair_keys(p_queues text[])
RETURNS TABLE (q text, k text)
LANGUAGE sql STABLE AS $$
    WITH RECURSIVE keys(q, k) AS (
        SELECT o.q, (SELECT min(j.limits[1]) FROM {schema}.jobs j
                     WHERE j.queue = o.q AND j.limits[1] LIKE 'fair:%'
                       AND j.state IN ('scheduled', 'queued'))
        FROM unnest(p_queues) AS o(q)
        UNION ALL
        SELECT keys.q, (SELECT min(j.limits[1]) FROM {schema}.jobs j
                        WHERE j.queue = keys.q AND j.limits[1] LIKE 'fair:%'
                          AND j.limits[1] > keys.k AND j.state IN ('scheduled', 'queued'))
        FROM keys WHERE keys.k IS NOT NULL
    )
    SELECT keys.q, keys.k FROM keys WHERE keys.k IS NOT NULL
$$;

-- One due job per row of the lanes (the keys p_qs/p_ks, and the jobs without a key of each
-- open queue of p_queues), at most p_cap per lane, in fair claim order: priority, rank in the
-- lane (rn), the lane's turn, run_at, seq.
CREATE FUNCTION {schema}.fair_candidates(
    p_queues text[], p_qs text[], p_ks text[], p_now float8, p_cap int
) RETURNS TABLE (id text, limits text[], priority smallint, rn bigint, q text, k text)
LANGUAGE sql STABLE AS $$
    WITH open AS (
        SELECT w.q FROM unnest(p_queues) AS w(q)
        WHERE w.q <> ALL(ARRAY(SELECT queue FROM {schema}.paused_queues))
    ), keys AS (
        SELECT u.q, u.k FROM unnest(p_qs, p_ks) AS u(q, k) JOIN open ON open.q = u.q
    ), rows AS (
        SELECT c.*, keys.q, keys.k FROM keys
        CROSS JOIN LATERAL (
            SELECT j.id, j.limits, j.priority, j.run_at, j.seq,
                   row_number() OVER (ORDER BY j.priority DESC, j.run_at, j.seq) AS rn
            FROM (SELECT j.id, j.limits, j.priority, j.run_at, j.seq FROM {schema}.jobs j
                  WHERE j.queue = keys.q AND j.limits[1] LIKE 'fair:%'
                    AND j.limits[1] = keys.k AND j.state IN ('scheduled', 'queued')
                    AND j.run_at <= p_now
                  ORDER BY j.priority DESC, j.run_at, j.seq LIMIT p_cap) j
        ) c
        UNION ALL
        SELECT c.*, open.q, '' FROM open
        CROSS JOIN LATERAL (
            SELECT u.*, row_number() OVER (ORDER BY u.priority DESC, u.run_at, u.seq) AS rn
            FROM ((SELECT j.id, j.limits, j.priority, j.run_at, j.seq FROM {schema}.jobs j
                   WHERE j.queue = open.q AND j.limits IS NULL
                     AND j.state IN ('scheduled', 'queued') AND j.run_at <= p_now
                   ORDER BY j.priority DESC, j.run_at, j.seq LIMIT p_cap)
                  UNION ALL
                  (SELECT j.id, j.limits, j.priority, j.run_at, j.seq FROM {schema}.jobs j
                   WHERE j.queue = open.q AND j.limits IS NOT NULL
                     AND NOT (j.limits[1] LIKE 'fair:%')
                     AND j.state IN ('scheduled', 'queued') AND j.run_at <= p_now
                   ORDER BY j.priority DESC, j.run_at, j.seq LIMIT p_cap)
                  ORDER BY 3 DESC, 4, 5 LIMIT p_cap) u
        ) c
    )
    SELECT r.id, r.limits, r.priority, r.rn, r.q, r.k FROM rows r
    LEFT JOIN {schema}.fair_turns t ON t.queue = r.q AND t.fair = r.k
    ORDER BY r.priority DESC, r.rn, coalesce(t.turn, 0), r.k COLLATE "C", r.run_at, r.seq
$$;

-- The usual case, one open queue with many keys: the first due job of each lane in turn order
-- (turn, then key) while it has the best due priority of the queue. Those come first in fair
-- order, so a cursor over this stops after about p_limit lanes instead of reading them all.
CREATE FUNCTION {schema}.fair_heads(p_queue text, p_ks text[], p_now float8)
RETURNS TABLE (id text, limits text[], priority smallint, rn bigint, q text, k text)
LANGUAGE sql STABLE AS $$
    SELECT h.id, h.limits, h.priority, 1::bigint, p_queue, l.k
    FROM (SELECT u.k, coalesce(t.turn, 0) AS turn FROM unnest(p_ks || ''::text) AS u(k)
          LEFT JOIN {schema}.fair_turns t ON t.queue = p_queue AND t.fair = u.k
          ORDER BY 2, u.k COLLATE "C") l
    CROSS JOIN LATERAL (
        SELECT x.id, x.limits, x.priority FROM (
            (SELECT j.id, j.limits, j.priority, j.run_at, j.seq FROM {schema}.jobs j
             WHERE l.k <> '' AND j.queue = p_queue AND j.limits[1] LIKE 'fair:%'
               AND j.limits[1] = l.k AND j.state IN ('scheduled', 'queued') AND j.run_at <= p_now
             ORDER BY j.priority DESC, j.run_at, j.seq LIMIT 1)
            UNION ALL
            (SELECT j.id, j.limits, j.priority, j.run_at, j.seq FROM {schema}.jobs j
             WHERE l.k = '' AND j.queue = p_queue AND j.limits IS NULL
               AND j.state IN ('scheduled', 'queued') AND j.run_at <= p_now
             ORDER BY j.priority DESC, j.run_at, j.seq LIMIT 1)
            UNION ALL
            (SELECT j.id, j.limits, j.priority, j.run_at, j.seq FROM {schema}.jobs j
             WHERE l.k = '' AND j.queue = p_queue AND j.limits IS NOT NULL
               AND NOT (j.limits[1] LIKE 'fair:%')
               AND j.state IN ('scheduled', 'queued') AND j.run_at <= p_now
             ORDER BY j.priority DESC, j.run_at, j.seq LIMIT 1)
        ) x ORDER BY x.priority DESC, x.run_at, x.seq LIMIT 1
    ) h
    WHERE h.priority = (SELECT j.priority FROM {schema}.jobs j
                        WHERE j.queue = p_queue AND j.state IN ('scheduled', 'queued')
                          AND j.run_at <= p_now
                        ORDER BY j.priority DESC, j.run_at, j.seq LIMIT 1)
$$;

-- The fair claim: fair_heads when it fills the claim (one open queue), else fair_candidates
-- read with a cap per lane, walked through the gate of
-- limits (as gate_walk's), read again with twice the cap while a lane cut short might hold a
-- job that comes first. Then the rate claims are logged, and the served lanes get new turns
-- in the order each was last served (a lane left with no due job forgets its turn).
CREATE FUNCTION {schema}.fair_claim(p_queues text[], p_limit int, p_now float8)
RETURNS TABLE (ids text[], held_until float8, limited boolean)
-- A custom plan for each call: a cached generic one does not know the cap, and reads lanes
-- whole.
LANGUAGE plpgsql VOLATILE SET plan_cache_mode = force_custom_plan AS $$
DECLARE
    rb text[];
    rc int[];
    ub text[];
    uc int[];
    uf float8[];
    chosen text[];
    cq text[];
    ck text[];
    rates text[];
    cand record;
    b text;
    i int;
    cap int;
    cap_n int;
    qs text[];
    ks text[];
    period float8;
    n int;
    t float8;
    ok boolean;
    until float8;
    cut int;
    low int;
    lanes int;
    fast boolean;
    cands refcursor;
BEGIN
    SELECT coalesce(array_agg(x), '{}'), coalesce(array_agg(c), '{}') INTO rb, rc
    FROM (SELECT x, count(*)::int AS c FROM {schema}.jobs j, unnest(j.limits) x
          WHERE j.limits IS NOT NULL AND j.state = 'running' AND x NOT LIKE 'fair:%'
          GROUP BY x) s;
    SELECT coalesce(array_agg(f.q), '{}'), coalesce(array_agg(f.k), '{}') INTO qs, ks
    FROM {schema}.fair_keys(p_queues) f;
    lanes := cardinality(ks) + cardinality(p_queues);
    cap := greatest(1, ceil(p_limit::float8 / greatest(lanes, 1))::int);
    fast := cardinality(p_queues) = 1
        AND p_queues[1] <> ALL(ARRAY(SELECT queue FROM {schema}.paused_queues));
    LOOP
        ub := rb; uc := rc; uf := array_fill(NULL::float8, ARRAY[cardinality(rb)]);
        chosen := '{}'; cq := '{}'; ck := '{}'; rates := '{}';
        until := NULL; cut := NULL; low := NULL;
        IF fast THEN
            OPEN cands FOR SELECT * FROM {schema}.fair_heads(p_queues[1], ks, p_now);
        ELSE
            OPEN cands FOR SELECT * FROM {schema}.fair_candidates(p_queues, qs, ks, p_now, cap);
        END IF;
        LOOP
            FETCH cands INTO cand;
            EXIT WHEN NOT FOUND;
            -- Once full, no later row can come first: rows come by priority, and an unread row
            -- of a lane cut short comes after its lane's last read one.
            EXIT WHEN cardinality(chosen) >= p_limit;
            IF NOT fast AND cand.rn = cap THEN cut := greatest(cut, cand.priority); END IF;
            ok := true;
            FOREACH b IN ARRAY coalesce(cand.limits, '{}') LOOP
                CONTINUE WHEN b LIKE 'fair:%';
                cap_n := split_part(b, '/', 1)::int;
                period := split_part(b, '/', 2)::float8 / 1000;
                i := array_position(ub, b);
                IF i IS NULL OR (period > 0 AND uf[i] IS NULL) THEN
                    n := 0;
                    t := NULL;
                    IF period > 0 THEN
                        DELETE FROM {schema}.rate_log WHERE bucket = b AND at <= p_now - period;
                        SELECT count(*), coalesce(min(at), p_now) + period INTO n, t
                        FROM (SELECT at FROM {schema}.rate_log WHERE bucket = b
                              ORDER BY at DESC LIMIT cap_n) s;
                    END IF;
                    IF i IS NULL THEN
                        ub := ub || b; uc := uc || n; uf := uf || t;
                        i := cardinality(ub);
                    ELSE
                        uc[i] := n; uf[i] := t;
                    END IF;
                END IF;
                IF uc[i] >= cap_n THEN
                    ok := false;
                    until := least(coalesce(until, 'infinity'), coalesce(uf[i], 'infinity'));
                    EXIT;
                END IF;
            END LOOP;
            CONTINUE WHEN NOT ok;
            FOREACH b IN ARRAY coalesce(cand.limits, '{}') LOOP
                CONTINUE WHEN b LIKE 'fair:%';
                i := array_position(ub, b);
                uc[i] := uc[i] + 1;
                IF split_part(b, '/', 2)::int > 0 THEN rates := rates || b; END IF;
            END LOOP;
            chosen := chosen || cand.id;
            cq := cq || cand.q;
            ck := ck || cand.k;
            low := least(coalesce(low, cand.priority), cand.priority);
        END LOOP;
        CLOSE cands;
        IF fast THEN
            EXIT WHEN cardinality(chosen) >= p_limit;
            fast := false;  -- too few lanes at the best priority: read them all
            CONTINUE;
        END IF;
        EXIT WHEN cut IS NULL OR (cardinality(chosen) >= p_limit AND low >= cut);
        cap := cap * 2;
    END LOOP;
    INSERT INTO {schema}.rate_log (bucket, at) SELECT r, p_now FROM unnest(rates) AS r;
    INSERT INTO {schema}.fair_turns AS f (queue, fair, turn)
    SELECT s.q, s.k, nextval('{schema}.fair_turn_seq')
    FROM (SELECT u.q, u.k, max(u.o) AS m FROM unnest(cq, ck) WITH ORDINALITY AS u(q, k, o)
          GROUP BY u.q, u.k ORDER BY m) s
    ON CONFLICT (queue, fair) DO UPDATE SET turn = excluded.turn;
    -- A lane served n jobs is empty now unless it had more than n due.
    DELETE FROM {schema}.fair_turns f
    USING (SELECT u.q, u.k, count(*) AS n FROM unnest(cq, ck) AS u(q, k) WHERE u.k <> ''
           GROUP BY u.q, u.k) s
    WHERE f.queue = s.q AND f.fair = s.k
      AND NOT EXISTS (SELECT 1 FROM {schema}.jobs j
                      WHERE j.queue = s.q AND j.limits[1] LIKE 'fair:%' AND j.limits[1] = s.k
                        AND j.state IN ('scheduled', 'queued') AND j.run_at <= p_now
                      ORDER BY j.priority DESC, j.run_at, j.seq OFFSET s.n LIMIT 1);
    RETURN QUERY SELECT chosen, until, true;
END;
$$;

-- The claim of jobs with limits: fair when a fair job is due in these queues, else the walk.
CREATE FUNCTION {schema}.gate_claim(
    p_queues text[], p_ids text[], p_limit int, p_now float8, p_lock_ns int
) RETURNS TABLE (ids text[], held_until float8, limited boolean)
LANGUAGE plpgsql VOLATILE SET cursor_tuple_fraction = 0.001 AS $$
BEGIN
    -- One gated claim at a time per schema (as gate_walk, which takes the same lock again).
    PERFORM pg_advisory_xact_lock(p_lock_ns, 5);
    IF p_ids IS NULL AND EXISTS (
        SELECT 1 FROM unnest(p_queues) AS w(q),
        LATERAL (SELECT 1 FROM {schema}.jobs j
                 WHERE j.queue = w.q AND j.limits[1] LIKE 'fair:%'
                   AND j.state IN ('scheduled', 'queued') AND j.run_at <= p_now LIMIT 1) d
    ) THEN
        RETURN QUERY SELECT * FROM {schema}.fair_claim(p_queues, p_limit, p_now);
    ELSE
        RETURN QUERY SELECT * FROM {schema}.gate_walk(p_queues, p_ids, p_limit, p_now,
                                                      p_lock_ns);
    END IF;
END;
$$;
