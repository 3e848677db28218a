"""The Supervisor's stop: the first request is SIGTERM, a second one sends ``again`` (uvicorn,
the server's children, stops at once only on a second SIGINT)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.procs import ROOT, child_env, wait_for

# A child that notes each signal it gets and exits at the second.
CHILD = """
import signal, sys, time
log = open(sys.argv[1], "a", buffering=1)
seen = []
def on(signum, frame):
    log.write(signal.Signals(signum).name + "\\n")
    seen.append(signum)
    if len(seen) == 2:
        sys.exit(0)
signal.signal(signal.SIGTERM, on)
signal.signal(signal.SIGINT, on)
log.write("ready\\n")
while True:
    time.sleep(0.05)
"""

PARENT = """
import signal, sys
from offload.worker.supervisor import Supervisor
child = [sys.executable, "-c", sys.argv[1], sys.argv[2]]
again = signal.Signals[sys.argv[3]]
sys.exit(Supervisor(child, 1, kind="server", again=again).run())
"""


@pytest.mark.parametrize("again", ["SIGINT", "SIGTERM"])
def test_a_second_stop_request_sends_again(tmp_path: Path, again: str) -> None:
    log = tmp_path / "signals"
    cmd = [sys.executable, "-c", PARENT, CHILD, str(log), again]
    sup = subprocess.Popen(cmd, cwd=ROOT, env=child_env())
    try:
        wait_for(lambda: log.exists() and "ready" in log.read_text(), 30, "the child")
        sup.send_signal(signal.SIGTERM)
        wait_for(lambda: "SIGTERM" in log.read_text(), 30, "the first signal to arrive")
        sup.send_signal(signal.SIGTERM)
        assert sup.wait(timeout=30) == 0
        assert log.read_text().split() == ["ready", "SIGTERM", again]
    finally:
        if sup.poll() is None:
            sup.kill()  # its child dies with it (SIGTERM, its second signal)
            sup.wait()


def test_children_that_keep_dying_at_start_end_it_when_told(tmp_path: Path) -> None:
    marks = tmp_path / "starts"
    dies = f"open({str(marks)!r}, 'a').write('x'); raise SystemExit(3)"
    code = f"""
import sys
from offload.worker.supervisor import Supervisor
sys.exit(Supervisor([sys.executable, "-c", {dies!r}], 2, give_up_after=3).run())
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=child_env(), timeout=60)
    assert done.returncode == 1
    assert len(marks.read_text()) == 4  # two at first, two replacements; the third death ends it
