"""The least enqueue-to-start latency three Redis queue shapes allow, beside offload's own.

compare.py's latency target asks offload's p99 (a sync task enqueued one by one, 200 jobs/s,
one worker process) to be at most Huey's. Huey's worker waits in ``BRPOP`` on a list: the
wake-up hands it the message, and the message has left Redis. A worker killed after that
``BRPOP`` loses the job. offload keeps a job until its worker says it is done (a lease), and a
queue with priorities is a sorted set, which Redis cannot pop into another key in a blocking
command (there is ``BLMOVE`` for lists, nothing like it for sorted sets). So its worker waits
for a wake-up, then claims in a second round trip.

This runs the same paced load through three shapes written as plainly as redis-py allows,
each with a sync producer and a consumer process that records when each job "starts":

- ``list``: the producer ``LPUSH``es the message; the consumer loops on ``BRPOP`` (Huey).
- ``leased``: the producer's script stores the job in a hash and its id in a sorted set and
  pushes a wake-up; the consumer loops on ``BLPOP`` of the wake-up, then a script pops the
  first id and records its lease (the least a claim that can lose nothing does).
- ``pipelined``: ``leased`` with the claim script sent behind the ``BLPOP`` on its connection:
  Redis runs it as the pop returns, so the wake-up brings the leased job (what offload's Redis
  worker does, ``ClaimOnWake``).

and then compare.py's own latency phase for Huey and for offload (a sync task enqueued one by
one from sync code, one worker process at its defaults), through the same driver as the full
run. Times run from just before the enqueue call to the start::

    python benchmarks/latency_floor.py [--rate 200] [--seconds 10] [--rounds 2]
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

REDIS = "redis://127.0.0.1:6379/0"

ENQUEUE = """
redis.call('HSET', KEYS[3] .. ARGV[1], 'a', ARGV[3], 's', 'queued')
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('LPUSH', KEYS[2], 1)
"""

CLAIM = """
local first = redis.call('ZPOPMIN', KEYS[1])
if #first == 0 then return false end
local id = first[1]
redis.call('ZADD', KEYS[2], ARGV[1], id)
redis.call('HSET', KEYS[3] .. id, 's', 'running', 'l', ARGV[1])
return {id, redis.call('HGET', KEYS[3] .. id, 'a')}
"""


def lease_ms() -> int:
    return int(time.time() * 1000) + 30_000


def consume(shape: str, prefix: str, out: str, ready: multiprocessing.Event) -> None:  # type: ignore[valid-type]
    """The consumer process: record ``<i> <time>`` for each job it gets, until ``stop``."""
    import redis

    r = redis.Redis.from_url(REDIS)
    claim = r.register_script(CLAIM)
    r.script_load(CLAIM)  # the pipelined shape sends EVALSHA itself
    keys = [f"{prefix}:ready", f"{prefix}:leases", f"{prefix}:job:"]
    starts: list[str] = []
    ready.set()  # type: ignore[attr-defined]
    while True:
        if shape == "list":
            got = r.brpop([f"{prefix}:list"], 1)
            if got is None:
                continue
            body = got[1]
        elif shape == "leased":
            if r.blpop([f"{prefix}:wake"], 1) is None:
                continue
            claimed = claim(keys=keys, args=[lease_ms()])
            if not claimed:
                continue
            body = claimed[1]
        else:  # "pipelined": the claim sent with the wait, run by Redis as the wait ends
            pipe = r.pipeline(transaction=False)
            pipe.blpop([f"{prefix}:wake"], 1)
            # EVALSHA itself: a Script object on a pipeline asks SCRIPT EXISTS first
            pipe.execute_command("EVALSHA", claim.sha, len(keys), *keys, lease_ms())
            _, claimed = pipe.execute()
            if not claimed:
                continue
            body = claimed[1]
        now = time.time()
        if body == b"stop":
            break
        starts.append(f"{body.decode()} {now}")
    Path(out).write_text("\n".join(starts) + "\n")


def run_shape(shape: str, rate: float, seconds: float) -> dict[str, float]:
    import redis

    prefix = f"latfloor:{uuid.uuid4().hex[:8]}"
    r = redis.Redis.from_url(REDIS)
    enqueue = r.register_script(ENQUEUE)
    keys = [f"{prefix}:ready", f"{prefix}:wake", f"{prefix}:job:"]
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "starts.txt")
        consumer = ctx.Process(target=consume, args=(shape, prefix, out, ready))
        consumer.start()
        ready.wait(30)

        def send(i: int, body: str) -> None:
            if shape == "list":
                r.lpush(f"{prefix}:list", body)
            else:
                enqueue(keys=keys, args=[f"j{i}", i, body])  # scored in order

        calls, _ = paced(send, rate, seconds)
        consumer.join(30)
        starts = read_starts(out)
    r.delete(*r.keys(f"{prefix}:*") or [f"{prefix}:none"])
    kept = [i for i in calls if i >= rate and i in starts]  # the first second warms up
    whole = sorted(starts[i] - calls[i] for i in kept)
    return {"jobs": len(kept), "missing": len(calls) - len(starts), **percentiles_ms(whole)}


def paced(
    send: Callable[[int, str], None], rate: float, seconds: float
) -> tuple[dict[int, float], list[float]]:
    """``send(i, str(i))`` for ``rate * seconds`` jobs evenly paced, then ``send(n, "stop")``:
    when each call began (epoch seconds) and how long each took (seconds)."""
    calls: dict[int, float] = {}
    took: list[float] = []
    n = int(rate * seconds)
    start = time.perf_counter()
    for i in range(n):
        pause = start + i / rate - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
        calls[i] = time.time()
        t0 = time.perf_counter()
        send(i, str(i))
        took.append(time.perf_counter() - t0)
    send(n, "stop")
    return calls, took


def read_starts(out: str) -> dict[int, float]:
    """The consumer's ``<i> <time>`` lines."""
    starts = {}
    for line in Path(out).read_text().splitlines():
        i, at = line.split()
        starts[int(i)] = float(at)
    return starts


def percentiles_ms(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {f"p{q}": ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))] * 1000
            for q in (50, 99)}  # fmt: skip


def run_peer(system: str, rate: float, seconds: float) -> dict[str, float]:
    """compare.py's latency phase alone for one of its systems (``huey-redis``,
    ``offload-sync-redis``): the same driver, interpreter and worker as the full run."""
    import json
    import subprocess

    from benchmarks.compare import SYSTEMS, python_of

    module, group = SYSTEMS[system]
    cmd = [
        str(python_of(group)), str(ROOT / "benchmarks" / "peers" / "driver.py"),
        "--system", system, "--module", module, "--latency-only",
        "--latency-rate", str(rate), "--latency-seconds", str(seconds),
    ]  # fmt: skip
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    lines = out.stdout.strip().splitlines()
    if not lines:
        raise RuntimeError(f"{system}: the driver printed nothing: {out.stderr[-500:]}")
    got = json.loads(lines[-1])
    if "error" in got:
        raise RuntimeError(f"{system}: {got['error']}")
    # the driver fails the phase unless every job's latency was recorded
    jobs = round(rate * seconds)
    return {"jobs": jobs, "missing": 0, "p50": got["p50_ms"], "p99": got["p99_ms"]}


SHAPES = ("list", "leased", "pipelined", "huey-redis", "offload-sync-redis")


def paced_args(description: str, shapes: tuple[str, ...]) -> argparse.Namespace:
    """The options of a paced latency run (this one, pg_latency_floor.py's), parsed; prints
    the load line its output opens with."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--rate", type=float, default=200)
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--shapes", default=",".join(shapes))
    args = p.parse_args()
    load = open("/proc/loadavg").read().split()[:3]
    print(f"load average at start: {' '.join(load)}; {args.rate:.0f} jobs/s for "
          f"{args.seconds:.0f} s a round, {args.rounds} rounds interleaved\n")  # fmt: skip
    return args


def main() -> None:
    args = paced_args(__doc__.splitlines()[0], SHAPES)
    print("| shape | round | jobs | enqueue → start p50 / p99 ms |")
    print("|---|---:|---:|---|")
    for k in range(args.rounds):
        for shape in args.shapes.split(","):
            if "-" in shape:
                got = run_peer(shape, args.rate, args.seconds)
            else:
                got = run_shape(shape, args.rate, args.seconds)
            lost = f" ({got['missing']:.0f} not started)" if got["missing"] else ""
            print(f"| {shape} | {k + 1} | {got['jobs']:.0f}{lost} | "
                  f"{got['p50']:.2f} / {got['p99']:.2f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
