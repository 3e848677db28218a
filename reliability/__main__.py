"""``python -m reliability [--short] [--backend sqlite,postgres,redis,rabbitmq] [--test a,b]``

Runs every test against every backend named (all by default), prints the table, and exits 1
if any guarantee failed (lost jobs, too many duplicates, a poison job not dead on time, ...).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from reliability.isolation import KINDS
from reliability.suite import FORMS, TESTS, run_one, table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reliability", description=__doc__)
    parser.add_argument("--short", action="store_true", help="the short form (as in CI)")
    parser.add_argument("--backend", default=",".join(KINDS), help="comma-separated kinds")
    parser.add_argument(
        "--test",
        action="append",
        help=f"run only these (repeatable, or comma-separated): {', '.join(TESTS)}",
    )
    args = parser.parse_args(argv)
    tests = [t.strip() for arg in args.test or [] for t in arg.split(",") if t.strip()]
    unknown = [t for t in tests if t not in TESTS]
    if unknown:
        parser.error(f"unknown tests {unknown}; known: {', '.join(TESTS)}")
    # The harness's own pool reconnecting during a database restart is expected, not news.
    logging.getLogger("psycopg.pool").setLevel(logging.CRITICAL)
    form = FORMS["short" if args.short else "full"]
    kinds = [k.strip() for k in args.backend.split(",") if k.strip()]
    tests = tests or list(TESTS)
    results = []
    t0 = time.monotonic()
    for kind in kinds:
        for test in tests:
            t = time.monotonic()
            result = run_one(kind, test, form)
            verdict = "skipped" if result.skipped else "ok" if result.ok else "FAILED"
            print(f"{kind} / {test}: {verdict} ({time.monotonic() - t:.1f}s)", file=sys.stderr)
            results.append(result)
    print(f"\n## offload reliability, {form.name} form ({time.monotonic() - t0:.0f}s)\n")
    print(table(results))
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
