"""The mutation check: plant each bug that a review once found the suite blind to (issue 25) in a
temporary copy of the tree, run the tests that must catch it, and print whether they did.

``make mutate`` (or ``python tests/mutations.py [name ...]``; ``--list``; ``--baseline`` first
runs each selection on the unchanged copy, which must pass). Exit status 1 when a planted bug
was not caught. The tests run with ``OFFLOAD_REQUIRE_SERVICES=1``, so a missing service fails
the run instead of passing it by a skip.

A mutation is one function's worth of data: the file, the exact text to replace (it must occur
once, so a mutation that no longer applies says so instead of passing), the text planted, and
the pytest arguments that select the tests expected to fail.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COPIED = ("src", "tests", "reliability", "docs", "examples", "README.md", "pyproject.toml")
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", ".mypy_cache", "*.db", "*.db-*")


@dataclass(frozen=True)
class Mutation:
    name: str
    bug: str  # what the planted code does wrong
    file: str
    edits: tuple[tuple[str, str], ...]  # (exact text, what replaces it), each found once
    tests: tuple[str, ...]  # pytest arguments selecting the tests that must now fail


_DROP_FINAL = (
    "                drop.append(d)  # cancelled, deleted, finished (or a duplicate of one)\n"
)

MUTATIONS = (
    Mutation(
        "sqlite-recovery-cancels",
        "SQLite's lease recovery cancels a job instead of putting it back",
        "src/offload/backends/sqlite/recovery.py",
        (
            (
                '"state": job.fate.state.value,',
                '"state": "cancelled" if job.fate.state.value == "queued"'
                " else job.fate.state.value,",
            ),
        ),
        ("tests/test_reliability.py", "-k", "sqlite and storm"),
    ),
    Mutation(
        "worker-drops-some-outcomes",
        "the worker drops about one outcome in 32: those jobs run again, though no worker died",
        "src/offload/worker/completer.py",
        (
            (
                "        self._pending.append((lease, outcome))\n",
                "        if not lease.job_id.endswith('0'):\n"
                "            self._pending.append((lease, outcome))\n",
            ),
        ),
        ("tests/test_reliability.py", "-k", "sqlite and storm"),
    ),
    Mutation(
        "recovery-twenty-times-slower",
        "a worker looks for expired leases 20 times less often than configured",
        "src/offload/worker/maintenance.py",
        (
            (
                "cfg.recover_s * random.uniform(0.8, 1.2)",
                "20 * cfg.recover_s * random.uniform(0.8, 1.2)",
            ),
        ),
        ("tests/test_reliability.py", "-k", "sqlite and stale"),
    ),
    Mutation(
        "memory-wait-returns-at-once",
        "the memory backend's wait_for_work returns at once instead of waiting",
        "src/offload/backends/memory/backend.py",
        (
            (
                "timeout_s: float) -> None:\n        st = self.store\n",
                "timeout_s: float) -> None:\n        return\n        st = self.store\n",
            ),
        ),
        ("tests/test_memory_backend.py", "-k", "wait"),
    ),
    Mutation(
        "rabbitmq-direct-acks-at-claim",
        "store-less RabbitMQ acks a message when it is claimed, not when its job completes",
        "src/offload/backends/rabbitmq/direct.py",
        (
            (
                "        await self._broker.settle(settled, [])\n        return out\n",
                "        acked = [self._held[r.lease].delivery for r in out if r.lease]\n"
                "        await self._broker.settle(settled + acked, [])\n        return out\n",
            ),
            ("        await self._broker.settle([h.delivery for _, h in taken], [])\n", ""),
        ),
        ("tests/test_rabbitmq_direct.py", "-k", "kill9"),
    ),
    Mutation(
        "rabbitmq-parks-cancelled-messages",
        "RabbitMQ (with a store) parks the message of a cancelled job instead of acking it",
        "src/offload/backends/rabbitmq/claim.py",
        ((_DROP_FINAL, _DROP_FINAL.replace("drop.append", "park.append")),),
        ("tests/test_rabbitmq_backend.py", "-k", "cancelled_job_message"),
    ),
    Mutation(
        "rabbitmq-hands-back-finished-redeliveries",
        "RabbitMQ (with a store) hands a redelivered message of a finished job back, forever",
        "src/offload/backends/rabbitmq/claim.py",
        ((_DROP_FINAL, _DROP_FINAL.replace("drop.append", "back.append")),),
        ("tests/test_rabbitmq_backend.py", "-k", "lost_connection"),
    ),
    Mutation(
        "cli-purge-renamed",
        "the CLI's `jobs purge` is renamed, so docs/postgres.md's command no longer exists",
        "src/offload/cli/jobs.py",
        (('@jobs.command("purge")', '@jobs.command("delete-finished")'),),
        ("tests/test_docs_shell.py", "-k", "postgres"),
    ),
    Mutation(
        "skip-policy-lets-every-skip-through",
        "the CI skip policy lets an environmental skip pass",
        "tests/skip_policy.py",
        (("    if not_applicable(reason) is None:\n", "    if False:\n"),),
        ("tests/test_skip_policy.py",),
    ),
)


def plant(tree: Path, m: Mutation) -> None:
    path = tree / m.file
    text = path.read_text()
    for old, new in m.edits:
        if text.count(old) != 1:
            raise SystemExit(f"{m.name}: the text to replace occurs {text.count(old)} times")
        text = text.replace(old, new)
    path.write_text(text)


def copy_tree(dest: Path) -> Path:
    for name in COPIED:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=IGNORED)
        elif src.exists():
            shutil.copy2(src, dest / name)
    return dest


def run_tests(tree: Path, tests: tuple[str, ...]) -> tuple[int, str]:
    """Run the selection in ``tree`` (its own src first on the path); exit status and summary."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OFFLOAD_")}
    env["OFFLOAD_REQUIRE_SERVICES"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(tree / "src"), str(tree)])
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests]
    done = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=1800)
    lines = [ln for ln in done.stdout.splitlines() if ln.strip()]
    return done.returncode, lines[-1] if lines else done.stderr.strip()[-200:]


def check(m: Mutation, baseline: bool) -> bool:
    """True when the selection passes unchanged (if asked) and fails with the bug planted."""
    with tempfile.TemporaryDirectory(prefix="offload-mutate-") as tmp:
        tree = copy_tree(Path(tmp))
        if baseline:
            code, summary = run_tests(tree, m.tests)
            print(f"  baseline: exit {code}: {summary}", flush=True)
            if code != 0:
                return False
        plant(tree, m)
        t0 = time.monotonic()
        code, summary = run_tests(tree, m.tests)
    # 1 is "tests failed"; anything else (no tests collected, usage error) proves nothing.
    caught = code == 1
    verdict = "caught" if caught else "NOT CAUGHT"
    print(f"  planted: exit {code} in {time.monotonic() - t0:.0f}s: {summary} -> {verdict}")
    return caught


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="mutations to run (default: all)")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument("--baseline", action="store_true", help="run each selection unchanged too")
    args = parser.parse_args(argv)
    known = {m.name: m for m in MUTATIONS}
    if args.list:
        for m in MUTATIONS:
            print(f"{m.name}: {m.bug} ({m.file}; {' '.join(m.tests)})")
        return 0
    unknown = [n for n in args.names if n not in known]
    if unknown:
        parser.error(f"unknown mutations {unknown}; known: {', '.join(known)}")
    chosen = [known[n] for n in args.names] or list(MUTATIONS)
    results = []
    for m in chosen:
        print(f"{m.name}: {m.bug}", flush=True)
        results.append((m, check(m, args.baseline)))
    print("\n| mutation | planted in | tests | result |\n| --- | --- | --- | --- |")
    for m, caught in results:
        verdict = "caught" if caught else "**NOT CAUGHT**"
        print(f"| {m.name} | {m.file} | `{' '.join(m.tests)}` | {verdict} |")
    return 0 if all(caught for _, caught in results) else 1


if __name__ == "__main__":
    sys.exit(main())
