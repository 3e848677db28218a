"""Run every scenario once for one system and print its figures as one JSON line.

    <python of the system's venv> benchmarks/peers/driver.py --system celery-redis \
        --module celery_peer --jobs 20000 --latency-rate 200 --latency-seconds 10

compare.py starts it with the right interpreter (offload's venv, or the peers' one) and
interleaves the systems. Scenarios, in order, on one run-private queue:

1. enqueue ``--jobs`` jobs one by one (jobs/s);
2. drain them with one worker process (jobs/s from the moment every worker has its first job
   to the last job's start; peak RSS of the worker process and its children);
3. enqueue ``--jobs`` jobs with the bulk call (or one by one, not timed, without one), drain
   them with two worker processes;
4. one worker; a steady ``--latency-rate`` jobs/s for ``--latency-seconds``; enqueue-to-start
   p50/p95/p99 from the time passed as the argument to the time the task starts.

``--latency-only`` runs scenario 4 alone (``latency_floor.py`` puts it beside raw shapes).
A phase that fails or overruns ``--phase-timeout`` ends the run; the JSON says which and why.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib
import json
import os
import signal
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.peers import cleanup  # noqa: E402
from benchmarks.peers.protocol import (  # noqa: E402
    CONFIG_ENV,
    Peer,
    RunConfig,
    read_latencies,
    read_stats,
)
from benchmarks.peers.workers import Workers  # noqa: E402

BULK_CHUNK = 1_000
WARMUP_JOBS = 20
READY_WAIT_S = 20.0


class PhaseFailed(Exception):
    pass


def now_us() -> int:
    return time.time_ns() // 1000


class Driver:
    def __init__(self, peer: Peer, cfg: RunConfig, args: argparse.Namespace, tmp: Path) -> None:
        self.peer, self.cfg, self.args, self.tmp = peer, cfg, args, tmp
        self.workers = Workers(tmp)
        self.result: dict[str, Any] = {"system": cfg.system, "config": peer.config}
        self.progress = ""  # what a phase that runs out of time had done, for its error

    async def run(self) -> None:
        if self.args.latency_only:
            self.result.update(await self.phase("latency", self.latency()))
            return
        n = self.args.jobs
        self.result["enqueue_one"] = await self.phase("enqueue_one", self.enqueue_one(n))
        rate, rss = await self.phase("drain_1", self.drain(n, 1))
        self.result["drain_1"], self.result["rss_mb"] = rate, rss / 2**20
        if self.peer.bulk:
            self.result["enqueue_bulk"] = await self.phase("enqueue_bulk", self.enqueue_bulk(n))
        else:
            await self.phase("enqueue (for drain_2)", self.enqueue_one(n))
        rate, _ = await self.phase("drain_2", self.drain(n, 2))
        self.result["drain_2"] = rate
        self.result.update(await self.phase("latency", self.latency()))

    async def phase(self, name: str, work: Any) -> Any:
        try:
            return await asyncio.wait_for(work, self.args.phase_timeout)
        except TimeoutError:
            limit = f"{name}: no result within {self.args.phase_timeout:g} s"
            raise PhaseFailed(f"{limit} ({self.progress})" if self.progress else limit) from None
        except PhaseFailed as exc:
            raise PhaseFailed(f"{name}: {exc}") from None
        except Exception as exc:
            raise PhaseFailed(f"{name}: {type(exc).__name__}: {exc}") from exc
        finally:
            self.progress = ""
            self.workers.stop()

    async def enqueue_one(self, n: int) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            await self.peer.enqueue(now_us())
        return n / (time.perf_counter() - t0)

    async def enqueue_bulk(self, n: int) -> float:
        t0 = time.perf_counter()
        for start in range(0, n, BULK_CHUNK):
            stamp = now_us()
            await self.peer.enqueue_bulk([stamp] * (min(n, start + BULK_CHUNK) - start))
        return n / (time.perf_counter() - t0)

    def start_workers(self, count: int, stats: Path, record_latency: bool) -> None:
        cfg = dataclasses.replace(self.cfg, stats_dir=str(stats), record_latency=record_latency)
        path = os.pathsep.join([str(ROOT), str(ROOT / "src")])  # this tree's offload
        env = {**os.environ, CONFIG_ENV: cfg.to_env(), "PYTHONPATH": path}
        self.workers.start(self.peer.worker_command(), count, env, ROOT)

    async def wait_for(self, done: Callable[[], bool]) -> None:
        while not done():
            self.workers.check_alive()
            await asyncio.sleep(0.01)

    async def drain(self, n: int, processes: int) -> tuple[float, int]:
        stats = Path(tempfile.mkdtemp(dir=self.tmp))
        self.start_workers(processes, stats, record_latency=False)

        # Every worker process holds its first job at the gate: start-up is not timed. A worker
        # that takes every job before the other one starts leaves that one without a job: go
        # after READY_WAIT_S, and say so.
        def ready() -> int:
            return len(list(stats.glob("*.ready")))

        deadline = time.monotonic() + READY_WAIT_S
        await self.wait_for(lambda: ready() >= processes or time.monotonic() > deadline)
        if ready() < processes:
            self.result.setdefault("notes", []).append(
                f"{processes} processes: only {ready()} received a job before the clock started"
            )
        (stats / "go").touch()
        t_go = time.time()

        def done() -> bool:
            started = read_stats(stats)[0]
            self.progress = f"{started} of {n} jobs started, {ready()} process(es) had a job"
            return started >= n

        await self.wait_for(done)
        count, _, last = read_stats(stats)
        if count > n:
            raise PhaseFailed(f"{count} task starts for {n} jobs (a job ran twice)")
        return n / (last - t_go), self.workers.peak_rss_bytes()

    async def latency(self) -> dict[str, float]:
        stats = Path(tempfile.mkdtemp(dir=self.tmp))
        (stats / "go").touch()
        self.start_workers(1, stats, record_latency=True)
        for _ in range(WARMUP_JOBS):
            await self.peer.enqueue(0)
        await self.wait_for(lambda: read_stats(stats)[0] >= WARMUP_JOBS)
        rate, total = self.args.latency_rate, round(self.args.latency_rate * self.args.latency_s)
        t0 = time.perf_counter()
        for k in range(total):
            delay = t0 + k / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            await self.peer.enqueue(now_us())
        achieved = total / (time.perf_counter() - t0)
        await self.wait_for(lambda: read_stats(stats)[0] >= WARMUP_JOBS + total)
        await asyncio.sleep(0.1)  # the probe's last flush of latencies
        lat = sorted(read_latencies(stats))
        if len(lat) < total:
            raise PhaseFailed(f"{len(lat)} latencies recorded for {total} jobs")

        def pct(q: float) -> float:
            return lat[min(len(lat) - 1, int(q * len(lat)))] * 1000

        return {"p50_ms": pct(0.50), "p95_ms": pct(0.95), "p99_ms": pct(0.99), "rate": achieved}


def make_config(args: argparse.Namespace, concurrency: int) -> RunConfig:
    """A fresh run's config (an id and a queue of its own), exported to the environment the
    peer module and its workers read it from."""
    run_id = uuid.uuid4().hex[:10]
    cfg = RunConfig(
        system=args.system,
        run_id=run_id,
        queue=f"bench_{run_id}",
        stats_dir="",
        redis_url=args.redis_url,
        postgres_url=args.postgres_url,
        amqp_url=args.amqp_url,
        concurrency=concurrency,
    )
    os.environ[CONFIG_ENV] = cfg.to_env()
    return cfg


async def run(args: argparse.Namespace) -> dict[str, Any]:
    cfg = make_config(args, args.concurrency)
    module = importlib.import_module(f"benchmarks.peers.{args.module}")
    peer: Peer = module.make_peer(cfg)
    before = cleanup.redis_keys(cfg.redis_url)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="offload-bench-") as tmp:
        driver = Driver(peer, cfg, args, Path(tmp))
        try:
            await peer.setup()
            await driver.run()
        except PhaseFailed as exc:
            driver.result["error"] = str(exc)
        except Exception as exc:
            driver.result["error"] = f"setup: {type(exc).__name__}: {exc}"
            traceback.print_exc()
        finally:
            driver.workers.stop()
            await peer.close()
            await peer.cleanup()
            cleanup.delete_new_redis_keys(cfg.redis_url, before)
    driver.result["seconds"] = time.monotonic() - t0
    return driver.result


def _interrupt(signum: int, frame: object) -> None:
    # compare.py stops an overrunning driver with SIGTERM: unwinding runs the cleanup, so no
    # worker process and no data of this run is left behind.
    raise KeyboardInterrupt


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--system", required=True)
    p.add_argument("--module", required=True, help="module under benchmarks/peers")
    p.add_argument("--jobs", type=int, default=20_000)
    p.add_argument("--concurrency", type=int, default=0, help="0: the module's own choice")
    p.add_argument("--latency-rate", type=float, default=200.0)
    p.add_argument("--latency-seconds", dest="latency_s", type=float, default=10.0)
    p.add_argument("--phase-timeout", type=float, default=120.0)
    p.add_argument("--latency-only", action="store_true", help="run the latency phase alone")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/13")
    p.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/test")
    p.add_argument("--amqp-url", default="amqp://guest:guest@127.0.0.1:5672//")
    args = p.parse_args()
    signal.signal(signal.SIGTERM, _interrupt)
    result = asyncio.run(run(args))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
