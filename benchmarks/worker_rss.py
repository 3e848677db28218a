"""Worker peak RSS alone, measured as compare.py measures it: bulk-enqueue N no-op jobs, drain
them with one worker process (``peers/driver.py``'s drain phase, RSS of the process and its
children sampled every 20 ms), ``--runs`` times; prints each run's peak and the median.

    .venv/bin/python benchmarks/worker_rss.py [--system offload-redis] [--jobs 5000] [--runs 3]

No rates are printed: this is for looking at memory (issue 15) without a full comparison run.
A peer runs with the peers' interpreter: ``benchmarks/.peers-venv/<group>/bin/python
benchmarks/worker_rss.py --system arq-redis --module arq_peer``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.peers import cleanup  # noqa: E402
from benchmarks.peers.driver import Driver, make_config  # noqa: E402


async def one_run(args: argparse.Namespace) -> float:
    cfg = make_config(args, 0)
    module = importlib.import_module(f"benchmarks.peers.{args.module}")
    module = importlib.reload(module)  # its module-level objects are made from this run's config
    peer = module.make_peer(cfg)
    before = cleanup.redis_keys(cfg.redis_url)
    with tempfile.TemporaryDirectory(prefix="offload-rss-") as tmp:
        driver = Driver(peer, cfg, argparse.Namespace(phase_timeout=120.0), Path(tmp))
        try:
            await peer.setup()
            if peer.bulk:
                await driver.enqueue_bulk(args.jobs)
            else:
                await driver.enqueue_one(args.jobs)
            _, rss = await driver.drain(args.jobs, 1)
        finally:
            driver.workers.stop()
            await peer.close()
            await peer.cleanup()
            cleanup.delete_new_redis_keys(cfg.redis_url, before)
    return rss / 2**20


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--system", default="offload-redis")
    p.add_argument("--module", default="offload_peer", help="module under benchmarks/peers")
    p.add_argument("--jobs", type=int, default=5_000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/14")
    p.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/test")
    p.add_argument("--amqp-url", default="amqp://guest:guest@127.0.0.1:5672//")
    args = p.parse_args()
    peaks = [asyncio.run(one_run(args)) for _ in range(args.runs)]
    runs = " ".join(f"{mb:.1f}" for mb in peaks)
    print(f"{args.system}: worker peak RSS {statistics.median(peaks):.1f} MB (runs: {runs})")


if __name__ == "__main__":
    main()
