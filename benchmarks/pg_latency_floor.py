"""The least enqueue-to-start latency a PostgreSQL queue allows here, beside offload's own.

compare.py's latency target asks offload's p99 on PostgreSQL (a job enqueued one by one, 200
jobs/s, one worker process) to be at most 2 ms. This runs the same paced load through the
plainest queue psycopg allows that keeps offload's promises, with a sync producer and a
consumer process that records when each job "starts":

- the producer's call is one autocommitted statement: it inserts the job and notifies
  (``pg_notify`` in the same statement, so the notification leaves with the commit). The
  commit waits for the WAL to reach the disk, as "stored before enqueue returns" needs;
- the consumer waits on ``LISTEN`` and, when woken, claims on the same connection: one
  ``UPDATE ... FOR UPDATE SKIP LOCKED ... RETURNING`` that marks the oldest queued job running
  with a lease, committed without waiting for the disk (offload's claims commit so too: a
  claim lost in a crash only means the job runs again).

The table has what such a claim needs and nothing more: the columns, a primary key and one
partial index on the queued jobs. ``--shapes`` adds compare.py's own latency phase for
``offload-postgres`` (async task, ``aenqueue``) and ``offload-sync-postgres`` (sync task,
``task.enqueue()``), through the same driver as the full run. Times run from just before the
enqueue call to the start::

    python benchmarks/pg_latency_floor.py [--rate 200] [--seconds 10] [--rounds 2]
"""

from __future__ import annotations

import multiprocessing
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.latency_floor import paced, paced_args, percentiles_ms, read_starts, run_peer  # noqa: E402

POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"

SCHEMA = """
CREATE TABLE {t} (
    id bigserial PRIMARY KEY,
    state text NOT NULL DEFAULT 'queued',
    body text NOT NULL,
    lease_until timestamptz
);
CREATE INDEX ON {t} (id) WHERE state = 'queued';
"""
ENQUEUE = (
    "WITH j AS (INSERT INTO {t} (body) VALUES (%s) RETURNING id) SELECT pg_notify('{t}', '') FROM j"
)
CLAIM = """
UPDATE {t} SET state = 'running', lease_until = now() + interval '30 seconds'
WHERE id = (SELECT id FROM {t} WHERE state = 'queued' ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)
RETURNING body
"""


def consume(table: str, out: str, ready: multiprocessing.Event) -> None:  # type: ignore[valid-type]
    """The consumer process: record ``<i> <time>`` for each job it claims, until ``stop``."""
    import psycopg

    conn = psycopg.connect(POSTGRES, autocommit=True)
    conn.execute("SET synchronous_commit = off")  # the claim's commit: see the module's text
    conn.execute(f"LISTEN {table}")
    claim = CLAIM.format(t=table)
    starts: list[str] = []
    ready.set()  # type: ignore[attr-defined]
    done = False
    while not done:
        # A wake-up may stand for several jobs: claim until none is left, then wait again.
        for _ in conn.notifies(timeout=1.0, stop_after=1):
            pass
        while (row := conn.execute(claim).fetchone()) is not None:
            now = time.time()
            if row[0] == "stop":
                done = True
                break
            starts.append(f"{row[0]} {now}")
    conn.close()
    Path(out).write_text("\n".join(starts) + "\n")


def run_plain(rate: float, seconds: float) -> dict[str, float]:
    import psycopg

    table = f"pgfloor_{uuid.uuid4().hex[:8]}"
    conn = psycopg.connect(POSTGRES, autocommit=True)
    conn.execute(SCHEMA.format(t=table))
    enqueue = ENQUEUE.format(t=table)
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            out = str(Path(tmp) / "starts.txt")
            consumer = ctx.Process(target=consume, args=(table, out, ready))
            consumer.start()
            ready.wait(30)
            calls, call_s = paced(lambda _, body: conn.execute(enqueue, (body,)), rate, seconds)
            consumer.join(30)
            starts = read_starts(out)
    finally:
        conn.execute(f"DROP TABLE IF EXISTS {table}")
        conn.close()
    kept = [i for i in calls if i >= rate and i in starts]  # the first second warms up
    whole = [starts[i] - calls[i] for i in kept]
    call = {f"call_{k}": v for k, v in percentiles_ms(call_s[int(rate) :]).items()}
    return {"jobs": len(kept), "missing": len(calls) - len(starts), **percentiles_ms(whole), **call}


SHAPES = ("plain", "offload-postgres", "offload-sync-postgres")


def main() -> None:
    args = paced_args(__doc__.splitlines()[0], SHAPES)
    print("| shape | round | jobs | enqueue → start p50 / p99 ms | the call alone p50 / p99 ms |")
    print("|---|---:|---:|---|---|")
    for k in range(args.rounds):
        for shape in args.shapes.split(","):
            got = (
                run_plain(args.rate, args.seconds)
                if shape == "plain"
                else run_peer(shape, args.rate, args.seconds)
            )
            lost = f" ({got['missing']:.0f} not started)" if got["missing"] else ""
            call = (f"{got['call_p50']:.2f} / {got['call_p99']:.2f}" if "call_p50" in got
                    else "—")  # fmt: skip
            print(f"| {shape} | {k + 1} | {got['jobs']:.0f}{lost} | "
                  f"{got['p50']:.2f} / {got['p99']:.2f} | {call} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
