"""Where a process spends its CPU, from py-spy's samples, grouped by component and function.

``record`` starts py-spy (``pip install py-spy``) sampling a running process in the background::

    py-spy record --pid PID --duration S --rate 200 --format raw --output F --nonblocking

and ``shares`` reads its raw output (a line per distinct stack: frames joined by ``;``, then a
sample count). Each sample is counted once, where it was taken (the innermost frame), so the
shares add up to 100%: "self" time. Idle samples (a thread waiting in ``epoll``) are not
recorded. Also runnable on a saved file::

    python benchmarks/pyspy.py F [--top 25]
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
from pathlib import Path

# The first pattern a frame's file matches names its component. py-spy names a file by its
# path below sys.path (``offload/server/api.py``, ``asyncio/locks.py``) when it can.
COMPONENTS = (
    ("offload.server", re.compile(r"(^|/)offload/server/")),
    ("offload", re.compile(r"(^|/)offload/")),
    ("uvicorn", re.compile(r"(^|/)uvicorn/")),
    ("starlette", re.compile(r"(^|/)starlette/")),
    ("redis-py", re.compile(r"(^|/)redis/")),
    ("psycopg", re.compile(r"(^|/)psycopg(_pool)?/")),
    ("prometheus_client", re.compile(r"(^|/)prometheus_client/")),
    ("asyncio", re.compile(r"(^|/)asyncio/")),
    ("the standard library", re.compile(r"^<frozen |^[a-z_]+\.py$|/lib/python3\.\d+/")),
)
_FRAME = re.compile(r"^(?P<fn>.*) \((?P<path>.*?)(?::\d+)?\)$")


def record(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes]:
    """py-spy sampling ``pid`` for ``seconds`` into ``out``, started in the background."""
    exe = shutil.which("py-spy")
    if exe is None:
        raise SystemExit("profiling needs py-spy: pip install py-spy")
    cmd = [exe, "record", "--pid", str(pid), "--duration", str(max(1, int(seconds)))]
    cmd += ["--rate", "200", "--format", "raw", "--output", str(out), "--nonblocking"]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def component(path: str) -> str:
    for name, pattern in COMPONENTS:
        if pattern.search(path):
            return name
    return "other"


def _leaf(stack: str) -> tuple[str, str]:
    """(function, file) of a stack's innermost frame."""
    frame = stack.rsplit(";", 1)[-1]
    m = _FRAME.match(frame)
    return (m.group("fn"), m.group("path")) if m else (frame, "")


def shares(path: Path) -> tuple[int, dict[str, float], dict[str, float]]:
    """The sample count, each component's share and each function's share (self time, %)."""
    by_component: collections.Counter[str] = collections.Counter()
    by_function: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        fn, file = _leaf(stack)
        by_component[component(file)] += n
        short = re.sub(r".*/(site-packages|src|lib/python3\.\d+)/", "", file)
        by_function[f"{fn} ({short})"] += n
    if not total:
        return 0, {}, {}

    def pct(c: collections.Counter[str]) -> dict[str, float]:
        return {k: 100 * v / total for k, v in c.most_common()}

    return total, pct(by_component), pct(by_function)


def report(path: Path, top: int = 20) -> str:
    """Markdown tables: the components, then the ``top`` functions."""
    total, comps, funcs = shares(path)
    lines = [f"{total} samples, self time\n", "| component | share |", "|---|---:|"]
    lines += [f"| {name} | {share:.1f}% |" for name, share in comps.items()]
    lines += ["", "| function (innermost frame) | share |", "|---|---:|"]
    lines += [f"| {name} | {share:.1f}% |" for name, share in list(funcs.items())[:top]]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("raw", type=Path, help="py-spy's --format raw output")
    p.add_argument("--top", type=int, default=25)
    args = p.parse_args()
    print(report(args.raw, args.top))


if __name__ == "__main__":
    main()
