"""The pieces every reliability test is built from: worker processes, the ledger, the backend
as the harness sees it, and the figures.

The ledger is a file outside the backend under test. The harness appends ``A <i>`` once an
enqueue of job ``i`` has returned (acknowledged); the task appends ``S``/``F`` lines when an
execution starts and finishes (see :mod:`reliability.app`). Lines are ``kind i pid time``.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import msgspec

import offload
from offload.backends.base import Backend
from offload.job import JobFilter, JobPage, JobRecord, JobState
from reliability.app import make_app, note

ROOT = Path(__file__).resolve().parent.parent
APP_SPEC = "reliability.app:app"
POLL_S = 0.05
HEARTBEAT_S = 0.5  # the workers' --heartbeat
RECOVER_EVERY_S = 0.5  # the workers' --recover: how often each live worker looks for expired leases
# The bounds on the measured times are generous on purpose (a loaded 2-core CI machine, four
# processes sharing it) and still fail a broken recovery, which takes forever or a full lease more.
# Headroom for a late recovery loop or a slow round trip, on top of what the design allows.
MARGIN_S = 4.0
# A new worker process (interpreter, imports, connections, first claim) starting a job, or work
# resuming after a fault or a SIGCONT: at most 2.4 s measured on the 2-core VM (reliability.md).
RESTART_BOUND_S = 15.0


class Failure(AssertionError):
    """A guarantee did not hold, or the run could not get where it needed to."""


@dataclass(frozen=True)
class Event:
    kind: str  # A (acknowledged), S (started), F (finished)
    i: int
    pid: int
    t: float


@dataclass
class Result:
    """The figures of one test on one backend. ``problems`` empty means it passed."""

    backend: str
    test: str
    acknowledged: int = 0
    completed: int = 0
    dead: int = 0
    lost: int = 0
    duplicated: int = 0
    duplicates_allowed: int = 0
    twice: set[int] = field(default_factory=set)  # job numbers started more than once
    worst_lease_recovery_s: float | None = None
    recover_s: float | None = None
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    skipped: str | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def expect(self, condition: bool, problem: str) -> None:
        if not condition:
            self.problems.append(problem)

    def expect_twice_within(self, allowed: Iterable[int], held_by: str) -> None:
        """Every job that ran twice must be in ``allowed``: the jobs that ``held_by`` (a killed,
        frozen or cut-off worker) held when the fault hit. A count is not enough: a re-run of a
        job nobody lost would hide under the allowance."""
        allowed = set(allowed)
        self.duplicates_allowed = len(allowed)
        extra = sorted(self.twice - allowed)
        self.expect(not extra, f"jobs {extra[:10]} ran twice, though {held_by} did not hold them")

    def expect_within(self, figure: str, value: float | None, bound_s: float) -> None:
        """A measured time (None: nothing was measured) must not exceed its bound."""
        if value is not None:
            self.expect(
                value <= bound_s, f"{figure} {value:.2f}s, more than the {bound_s:.1f}s bound"
            )


def _die_with_parent() -> None:
    """In a worker child before exec: SIGKILL it if the harness dies, so none is left behind."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def stop_worker(proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> int:
    """SIGTERM and wait; a process still alive after ``timeout_s`` is killed (-9 returned)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return -9


class Run:
    """One test on one backend: its URL, ledger, worker processes and the harness's own app."""

    def __init__(self, url: str, workdir: Path, *, lease_s: float = 2.0) -> None:
        self.url = url
        self.workdir = workdir
        self.ledger = workdir / "ledger.txt"
        self.lease_s = lease_s
        self.app = make_app(url)
        self.ids: dict[int, str] = {}  # i -> job id, for every acknowledged job
        self.workers: list[subprocess.Popen[bytes]] = []
        self.log_paths: dict[int, Path] = {}  # worker pid -> its stdout and stderr
        self._logs = 0

    # -- worker processes ------------------------------------------------------------------

    def start_worker(
        self,
        concurrency: int,
        *,
        grace_s: float = 5.0,
        extra: Sequence[str] = (),
        url: str | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``offload worker`` (short lease, 0.5 s heartbeat, recovery every 0.5 s), on
        the run's URL or on ``url`` (the same backend by another road: a proxy)."""
        cmd = [sys.executable, "-m", "offload", "--url", url or self.url, "worker", APP_SPEC]
        cmd += ["--log-level", "warning", "--concurrency", str(concurrency)]
        cmd += ["--lease", str(self.lease_s), "--heartbeat", str(HEARTBEAT_S)]
        cmd += ["--recover", str(RECOVER_EVERY_S)]
        cmd += ["--grace", str(grace_s), *extra]
        env = {k: v for k, v in os.environ.items() if not k.startswith("OFFLOAD_")} | (env or {})
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
        self._logs += 1
        path = self.workdir / f"worker{self._logs}.log"
        with open(path, "wb") as log:
            proc = subprocess.Popen(
                cmd, cwd=ROOT, env=env, stdout=log, stderr=log, preexec_fn=_die_with_parent
            )
        self.workers.append(proc)
        self.log_paths[proc.pid] = path
        return proc

    def wait_registered(self, procs: Sequence[subprocess.Popen[bytes]], timeout_s: float) -> None:
        """Until every worker of ``procs`` has reported itself to the backend: it is connected,
        so a fault injected next meets a running worker, not one still starting up (a worker
        that cannot reach its backend at start exits, by design)."""
        pids = {p.pid for p in procs}

        def registered() -> bool:
            return pids <= {w.pid for w in self.app.run_sync(lambda b: b.workers())}

        self.wait_until(registered, timeout_s, "every worker to report to the backend")

    def stop_cleanly(self, proc: subprocess.Popen[bytes], result: Result, name: str = "") -> None:
        """SIGTERM ``proc``; a non-zero exit is a problem reported with the end of its log.

        One exception: a worker that ends *by* the SIGTERM (exit -15) without having started a
        job was still starting up (a Python process dies of SIGTERM until the worker installs
        its handlers, which it does before its first claim): it held nothing, so nothing
        could be lost. Seen when the storm's last replacement worker is stopped at once."""
        code = stop_worker(proc)
        if code == -signal.SIGTERM and self.count("S", proc.pid) == 0:
            return
        if code != 0:
            who = name or f"worker {proc.pid}"
            result.problems.append(
                f"{who} did not exit cleanly after SIGTERM (exit {code}); its log ends: "
                + self.log_tail(proc.pid)
            )

    @property
    def lease_recovery_bound_s(self) -> float:
        """The worst a lost lease may stay with its dead worker: the lease runs out, the next
        recovery pass of a live worker (two passes, one may start just before the expiry) puts
        it back, plus the margin."""
        return self.lease_s + 2 * RECOVER_EVERY_S + MARGIN_S

    def log_tail(self, pid: int, lines: int = 12) -> str:
        path = self.log_paths.get(pid)
        if path is None or not path.exists():
            return "(no log)"
        text = path.read_text(errors="replace").strip().splitlines()[-lines:]
        return " | ".join(text) or "(empty)"

    def close(self) -> None:
        """Kill every worker process still alive and close the harness's app."""
        for proc in self.workers:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)  # a frozen process cannot die otherwise
                proc.kill()
            proc.wait()
        try:
            self.app.close_sync()
        except offload.OffloadError:
            pass

    # -- the backend, as the harness sees it -----------------------------------------------

    def enqueue(
        self,
        task: str,
        items: Iterable[int],
        *,
        priority: int = 0,
        delay_s: float = 0.0,
        **kwargs: Any,
    ) -> list[int]:
        """Enqueue one job per item in one batch; ledger and remember them once acknowledged.
        Raises what the enqueue raises (then nothing is noted)."""
        t = self.app.get_task(task).options(priority=priority, delay=delay_s)
        batch = list(items)
        jobs = self.app.enqueue_many([t.prepare(i, str(self.ledger), **kwargs) for i in batch])
        for i, job in zip(batch, jobs, strict=True):
            self.ids[i] = job.id
            note(str(self.ledger), "A", i)
        return batch

    def counts(self) -> Counter[JobState]:
        counts = self.app.run_sync(lambda b: b.counts())
        total: Counter[JobState] = Counter()
        for per_queue in counts.values():
            total.update(per_queue)
        return total

    def finished(self) -> int:
        counts = self.counts()
        return sum(n for state, n in counts.items() if state.final)

    def records(self) -> dict[str, JobRecord]:
        """Every job in the backend, by id."""
        out: dict[str, JobRecord] = {}
        cursor: str | None = None
        while True:
            page = self.app.run_sync(partial(_list, flt=JobFilter(limit=1000, cursor=cursor)))
            out.update((r.id, r) for r in page.jobs)
            if page.next_cursor is None:
                return out
            cursor = page.next_cursor

    def get(self, i: int) -> JobRecord:
        job_id = self.ids[i]
        record = self.app.run_sync(lambda b: b.get(job_id))
        if record is None:
            raise Failure(f"job {i} ({job_id}) is not in the backend")
        return record

    def held_by(self, pid: int) -> list[int]:
        """Jobs leased to worker process ``pid`` (running, its id in ``worker_id``)."""
        by_id = {v: k for k, v in self.ids.items()}
        running = self.app.run_sync(
            lambda b: b.list_jobs(JobFilter(state=JobState.RUNNING, limit=1000))
        ).jobs
        return [by_id[r.id] for r in running if r.id in by_id and _pid_of(r.worker_id) == pid]

    # -- the ledger ------------------------------------------------------------------------

    def events(self) -> list[Event]:
        if not self.ledger.exists():
            return []
        out = []
        for line in self.ledger.read_text().splitlines():
            parts = line.split()
            if len(parts) == 4:
                out.append(Event(parts[0], int(parts[1]), int(parts[2]), float(parts[3])))
        return out

    def count(self, kind: str, pid: int | None = None) -> int:
        return sum(1 for e in self.events() if e.kind == kind and pid in (None, e.pid))

    # -- waiting and the figures -----------------------------------------------------------

    def wait_until(
        self, predicate: Callable[[], bool], timeout_s: float, what: str, poll_s: float = POLL_S
    ) -> float:
        """Poll an observable condition (ledger lines, backend counts); seconds waited. A
        backend that is unreachable for the moment (a fault under way) counts as not yet."""
        t0 = time.monotonic()
        while not _holds(predicate):
            if time.monotonic() - t0 > timeout_s:
                raise Failure(f"timed out after {timeout_s:.0f}s waiting for {what}")
            time.sleep(poll_s)
        return time.monotonic() - t0

    def wait_all_final(self, timeout_s: float) -> None:
        """Wait until every acknowledged job is final: counts first (cheap), then each record
        (jobs whose enqueue failed may be stored too, so the counts alone are not proof)."""
        n = len(self.ids)
        t0 = time.monotonic()
        self.wait_until(lambda: self.finished() >= n, timeout_s, f"all {n} jobs to finish")

        def every_acknowledged_final() -> bool:
            records = self.records()
            return all(
                job_id in records and records[job_id].state.final for job_id in self.ids.values()
            )

        left = max(1.0, timeout_s - (time.monotonic() - t0))
        self.wait_until(every_acknowledged_final, left, "every acknowledged job to finish", 0.5)

    def tally(self, result: Result, *, may_die: Iterable[int] = ()) -> dict[int, JobRecord]:
        """Fill acknowledged / completed / dead / lost / duplicated from the backend's records
        and the ledger; return the records by job number.

        Lost: every acknowledged job that did not end ``succeeded`` with a finish line in the
        ledger, except a job of ``may_die`` (the poison job) that ended ``dead``: missing, not
        final, ``cancelled``, ``dead``, or succeeded without having run all count. Duplicated:
        jobs started more than once (``result.twice``; each scenario says which may be).
        """
        records = self.records()
        by_i = {i: records[job_id] for i, job_id in self.ids.items() if job_id in records}
        ledger = self.events()
        starts = Counter(e.i for e in ledger if e.kind == "S")
        finishes = {e.i for e in ledger if e.kind == "F"}
        dying = set(may_die)
        result.acknowledged = len(self.ids)
        result.completed = sum(1 for r in by_i.values() if r.state is JobState.SUCCEEDED)
        result.dead = sum(1 for r in by_i.values() if r.state is JobState.DEAD)
        lost = {
            i: by_i[i].state.value if i in by_i else "missing"
            for i in self.ids
            if not _ended_well(by_i.get(i), i in finishes, i in dying)
        }
        result.lost = len(lost)
        if lost:
            result.notes.append(f"lost jobs: {dict(sorted(lost.items())[:10])}")
        result.twice = {i for i in self.ids if starts[i] > 1}
        result.duplicated = len(result.twice)
        dead = [i for i, r in by_i.items() if r.state is JobState.DEAD and i not in dying]
        if dead:  # only the poison job may die: the others succeed on their first try
            errors = Counter((by_i[i].error or "")[:60] for i in dead)
            result.problems.append(f"{len(dead)} jobs dead that should have run: {dict(errors)}")
        return by_i


def _ended_well(record: JobRecord | None, finished: bool, may_die: bool) -> bool:
    if record is None:
        return False
    if record.state is JobState.SUCCEEDED:
        return finished
    return may_die and record.state is JobState.DEAD


class LeaseWatch:
    """Measures, on the backend's side, how long jobs stayed leased to a worker that was lost
    (killed, frozen): from the fault until each job's record no longer shows that worker
    running it (put back, or already re-claimed elsewhere). Call :meth:`poll` while waiting."""

    def __init__(self, run: Run) -> None:
        self._run = run
        self._pending: list[tuple[float, int, int]] = []  # fault time, pid, job number
        self.delays: list[float] = []

    def watch(self, fault_t: float, pid: int, jobs: Iterable[int]) -> None:
        self._pending.extend((fault_t, pid, i) for i in jobs)

    def poll(self) -> None:
        still = []
        for fault_t, pid, i in self._pending:
            try:
                rec = self._run.get(i)
            except offload.BackendUnavailable:
                still.append((fault_t, pid, i))
                continue
            if rec.state is JobState.RUNNING and _pid_of(rec.worker_id) == pid:
                still.append((fault_t, pid, i))
            else:
                self.delays.append(time.time() - fault_t)
        self._pending = still

    def sleep(self, seconds: float) -> None:
        """Pause ``seconds`` (a fault's rhythm), polling meanwhile."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.poll()
            time.sleep(min(0.1, max(0.0, end - time.monotonic())))

    def finish(self, timeout_s: float) -> float | None:
        """Poll until every watched job was recovered; the worst delay (None: none watched)."""
        deadline = time.monotonic() + timeout_s
        while self._pending:
            if time.monotonic() > deadline:
                raise Failure(f"{len(self._pending)} lost leases were never recovered")
            self.sleep(0.1)
        return max(self.delays, default=None)


async def _list(backend: Backend, flt: JobFilter) -> JobPage:
    return await backend.list_jobs(flt)


def _holds(predicate: Callable[[], bool]) -> bool:
    try:
        return predicate()
    except offload.BackendUnavailable:
        return False


def result_pid(record: JobRecord) -> int | None:
    """The process that produced a succeeded ``record`` job's result (see ``record``)."""
    if record.result is None:
        return None
    try:
        value = msgspec.json.decode(record.result)
    except msgspec.DecodeError:
        return None
    pid = value.get("pid") if isinstance(value, dict) else None
    return pid if isinstance(pid, int) else None


def _pid_of(worker_id: str | None) -> int | None:
    """The pid in a worker id ``host:pid:suffix``."""
    parts = (worker_id or "").split(":")
    return int(parts[1]) if len(parts) >= 3 and parts[1].isdigit() else None


def per_pid(events: Iterable[Event]) -> dict[int, list[Event]]:
    out: dict[int, list[Event]] = defaultdict(list)
    for e in events:
        out[e.pid].append(e)
    return out
