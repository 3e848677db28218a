"""The runner protocol every benchmarked system follows, and the probe its task calls.

Standard library only: this module is imported both from offload's virtual environment and
from the peers' one (``benchmarks/.peers-venv``).

One module per system (``benchmarks/peers/<system>.py``) defines, at import time, the objects
its own worker CLI needs (a Celery app, a Dramatiq broker, ...) from the run's configuration,
a no-op task taking one integer that calls :meth:`Probe.hit`, and ``make_peer(cfg)`` returning
a :class:`Peer`. The peers' CLIs import that module by name and take no configuration of ours,
so the configuration travels in one environment variable (:data:`CONFIG_ENV`), set by the
driver for itself and for the worker processes it starts.
"""

from __future__ import annotations

import itertools
import json
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

CONFIG_ENV = "OFFLOAD_BENCH_CONFIG"

# How often a worker process writes its counters for the driver to read: often enough that the
# driver sees the end of a drain within a few tens of milliseconds, rarely enough to cost nothing.
FLUSH_EVERY_S = 0.02


@dataclass(frozen=True)
class RunConfig:
    """Where one run of one system keeps its data, and where its workers report."""

    system: str
    run_id: str  # unique per run: queue names, key prefixes, schemas and databases derive from it
    queue: str
    stats_dir: str  # the workers' probes write here; empty in the driver process
    redis_url: str  # a database number nobody else uses; only keys this run creates are deleted
    postgres_url: str  # an admin connection; the run creates and drops its own database/schema
    amqp_url: str
    concurrency: int
    record_latency: bool = False

    def to_env(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls) -> RunConfig:
        """The configuration the driver put in the environment (benchmark harness only)."""
        raw = os.environ.get(CONFIG_ENV)
        if not raw:
            raise SystemExit(f"{CONFIG_ENV} is not set: run benchmarks/compare.py instead")
        return cls(**json.loads(raw))


class Peer(Protocol):
    """One benchmarked system, driven from the client side. Every method is awaited from the
    driver's single event loop; a synchronous library simply blocks inside it."""

    config: str  # how this system is configured, printed beside its figures
    bulk: bool  # whether the library has a call that enqueues many jobs at once

    async def setup(self) -> None:
        """Create this run's storage (schema, database, queue) and connect."""

    async def enqueue(self, arg: int) -> None:
        """Enqueue one no-op job with ``arg``, and return once the library says it is queued."""

    async def enqueue_bulk(self, args: Sequence[int]) -> None:
        """Enqueue one job per argument with the library's bulk call (only when ``bulk``)."""

    def worker_command(self) -> list[str]:
        """The argv of ONE worker process (as its users would start it) for this run."""

    async def close(self) -> None:
        """Disconnect the client side."""

    async def cleanup(self) -> None:
        """Remove what this run created in a shared service, and nothing else."""


class Probe:
    """What the no-op task does: count task starts in this process, and record each job's
    enqueue-to-start latency (the argument is the enqueue time in microseconds since the epoch;
    0 marks a warm-up job).

    The first task of a worker process leaves a ``<pid>.ready`` marker and waits for the
    driver's ``go`` file, so that every worker process has started and connected before the
    clock of a drain starts. A daemon thread writes ``<pid>.json`` (count, first and last start)
    and appends latencies to ``<pid>.lat`` every :data:`FLUSH_EVERY_S`.
    """

    def __init__(self, stats_dir: str, record_latency: bool) -> None:
        self._dir = Path(stats_dir) if stats_dir else None
        self._record = record_latency
        self._lock = threading.Lock()
        self._open = False
        self._count = 0
        self._first = 0.0
        self._last = 0.0
        self._latencies: list[float] = []
        self._seq = itertools.count()

    @classmethod
    def from_env(cls) -> Probe:
        cfg = RunConfig.from_env()
        return cls(cfg.stats_dir, cfg.record_latency)

    def hit(self, arg: int) -> None:
        if not self._open:
            self._pass_gate()
        now = time.time()
        with self._lock:
            self._count += 1
            if self._count == 1:
                self._first = now
            if now > self._last:
                self._last = now
            if self._record and arg:
                self._latencies.append(now - arg / 1e6)

    def _pass_gate(self) -> None:
        with self._lock:
            if self._open or self._dir is None:
                self._open = True
                return
            pid = os.getpid()
            (self._dir / f"{pid}.ready").touch()
            go = self._dir / "go"
            while not go.exists():
                time.sleep(0.002)
            threading.Thread(target=self._flush_forever, args=(pid,), daemon=True).start()
            self._open = True

    def _flush_forever(self, pid: int) -> None:
        assert self._dir is not None
        stats, tmp, lat = (self._dir / f"{pid}{ext}" for ext in (".json", ".tmp", ".lat"))
        while True:
            with self._lock:
                record = {"count": self._count, "first": self._first, "last": self._last}
                latencies, self._latencies = self._latencies, []
            if latencies:
                with lat.open("a") as f:
                    f.write("".join(f"{x:.6f}\n" for x in latencies))
            tmp.write_text(json.dumps(record))
            tmp.replace(stats)
            time.sleep(FLUSH_EVERY_S)


def read_stats(stats_dir: Path) -> tuple[int, float, float]:
    """Total task starts across the worker processes, and the first and last start time."""
    count, first, last = 0, float("inf"), 0.0
    for path in stats_dir.glob("*.json"):
        try:
            rec = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # being replaced right now: the next read sees it
        count += int(rec["count"])
        if rec["count"]:
            first = min(first, float(rec["first"]))
            last = max(last, float(rec["last"]))
    return count, first, last


def read_latencies(stats_dir: Path) -> list[float]:
    out: list[float] = []
    for path in stats_dir.glob("*.lat"):
        out.extend(float(line) for line in path.read_text().split())
    return out
