"""One system's figures with its worker processes in network namespaces (run by
benchmarks/network.py with the system's interpreter; standard library and benchmarks.peers
only). For each worker-process count k: drain ``--jobs`` x k jobs (jobs/s), then a steady
``--latency-rate`` for ``--latency-seconds`` (enqueue-to-start p50/p95). Worker ``j`` runs in
namespace ``j mod len(namespaces)`` and reaches every service through the delay proxy; the
producer (this process) stays in the root namespace, on loopback. Prints one JSON line."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.netns import rewrite  # noqa: E402
from benchmarks.peers import cleanup  # noqa: E402
from benchmarks.peers.driver import WARMUP_JOBS, Driver, PhaseFailed, now_us  # noqa: E402
from benchmarks.peers.protocol import (  # noqa: E402
    CONFIG_ENV,
    Peer,
    RunConfig,
    read_latencies,
    read_stats,
)
from benchmarks.peers.workers import Workers  # noqa: E402


class NetWorkers(Workers):
    """Workers each with its own argv and environment (its namespace, its proxied URLs)."""

    def start_each(self, specs: list[tuple[list[str], dict[str, str]]]) -> None:
        for argv, env in specs:
            log = self._log_dir / f"worker-{len(self._logs)}.log"
            with log.open("wb") as out:
                proc = subprocess.Popen(
                    argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out,
                    stderr=subprocess.STDOUT, start_new_session=True,
                )  # fmt: skip
            self._procs.append(proc)
            self._logs.append(log)
            self._peaks.append(0)
        self._sampling.set()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()


class NetDriver(Driver):
    def __init__(self, peer: Peer, cfg: RunConfig, args: argparse.Namespace, tmp: Path) -> None:
        super().__init__(peer, cfg, args, tmp)
        self.workers = NetWorkers(tmp)
        self.prefixes: list[list[str]] = json.loads(args.prefixes)
        self.routes: list[list[tuple[str, str]]] = json.loads(args.routes)

    def start_workers(self, count: int, stats: Path, record_latency: bool) -> None:
        path = os.pathsep.join([str(ROOT), str(ROOT / "src")])
        argv = self.peer.worker_command()
        specs = []
        for j in range(count):
            i = j % len(self.prefixes)
            routes = self.routes[i]
            cfg = dataclasses.replace(
                self.cfg,
                stats_dir=str(stats),
                record_latency=record_latency,
                redis_url=rewrite(self.cfg.redis_url, routes),
                postgres_url=rewrite(self.cfg.postgres_url, routes),
                amqp_url=rewrite(self.cfg.amqp_url, routes),
            )
            env = {**os.environ, CONFIG_ENV: cfg.to_env(), "PYTHONPATH": path}
            specs.append(([*self.prefixes[i], *(rewrite(a, routes) for a in argv)], env))
        self.workers.start_each(specs)

    async def run(self) -> None:
        for k in (int(c) for c in self.args.counts.split(",")):
            # Per process: each process holds a first batch at the start gate (its slots, or
            # a peer's prefetch), which starts at once and is not a drain; scaling the jobs
            # with the processes keeps that share the same at every count.
            n = self.args.jobs * k
            if self.peer.bulk:
                await self.phase(f"enqueue ({k})", self.enqueue_bulk(n))
            else:
                await self.phase(f"enqueue ({k})", self.enqueue_one(n))
            rate, _ = await self.phase(f"drain ({k} processes)", self.drain(n, k))
            lat = await self.phase(f"latency ({k} processes)", self.latency_k(k))
            self.result.setdefault("points", []).append({"processes": k, "drain": rate, **lat})

    async def latency_k(self, k: int) -> dict[str, float]:
        stats = Path(tempfile.mkdtemp(dir=self.tmp))
        (stats / "go").touch()
        self.start_workers(k, stats, record_latency=True)
        for _ in range(WARMUP_JOBS):
            await self.peer.enqueue(0)
        await self.wait_for(lambda: read_stats(stats)[0] >= WARMUP_JOBS)
        rate, total = self.args.latency_rate, round(self.args.latency_rate * self.args.latency_s)
        t0 = time.perf_counter()
        for m in range(total):
            delay = t0 + m / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            await self.peer.enqueue(now_us())
        await self.wait_for(lambda: read_stats(stats)[0] >= WARMUP_JOBS + total)
        await asyncio.sleep(0.1)  # the probe's last flush of latencies
        lat = sorted(read_latencies(stats))
        if len(lat) < total:
            raise PhaseFailed(f"{len(lat)} latencies recorded for {total} jobs")
        return {
            "p50_ms": lat[len(lat) // 2] * 1000,
            "p95_ms": lat[min(len(lat) - 1, int(0.95 * len(lat)))] * 1000,
        }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    run_id = uuid.uuid4().hex[:10]
    cfg = RunConfig(
        system=args.system, run_id=run_id, queue=f"bench_{run_id}", stats_dir="",
        redis_url=args.redis_url, postgres_url=args.postgres_url, amqp_url=args.amqp_url,
        concurrency=args.concurrency,
    )  # fmt: skip
    os.environ[CONFIG_ENV] = cfg.to_env()
    peer: Peer = importlib.import_module(f"benchmarks.peers.{args.module}").make_peer(cfg)
    before = cleanup.redis_keys(cfg.redis_url)
    with tempfile.TemporaryDirectory(prefix="offload-net-") as tmp:
        driver = NetDriver(peer, cfg, args, Path(tmp))
        try:
            await peer.setup()
            await driver.run()
        except PhaseFailed as exc:
            driver.result["error"] = str(exc)
        except Exception as exc:
            driver.result["error"] = f"setup: {type(exc).__name__}: {exc}"
        finally:
            driver.workers.stop()
            await peer.close()
            await peer.cleanup()
            cleanup.delete_new_redis_keys(cfg.redis_url, before)
    return driver.result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--system", required=True)
    p.add_argument("--module", required=True)
    p.add_argument("--counts", default="1,2,4,8,16")
    p.add_argument("--jobs", type=int, default=500, help="per worker process")
    p.add_argument("--concurrency", type=int, default=0)
    p.add_argument("--latency-rate", type=float, default=100.0)
    p.add_argument("--latency-seconds", dest="latency_s", type=float, default=3.0)
    p.add_argument("--phase-timeout", type=float, default=120.0)
    p.add_argument("--prefixes", required=True, help="JSON: per namespace, the exec prefix")
    p.add_argument("--routes", required=True, help="JSON: per namespace, [direct, proxied]")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/13")
    p.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/test")
    p.add_argument("--amqp-url", default="amqp://guest:guest@127.0.0.1:5672//")
    args = p.parse_args()
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)  # a background job inherits SIGINT ignored
    print(json.dumps(asyncio.run(run(args))), flush=True)


def _interrupt(signum: int, frame: object) -> None:
    # Unwinding runs run()'s cleanup: no worker process and no data of this run is left.
    raise KeyboardInterrupt


if __name__ == "__main__":
    main()
