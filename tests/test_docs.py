"""Every ```python block in the README and docs/ runs, so the docs cannot drift from the code.

Each block runs in a fresh interpreter in an empty temporary directory. A block whose first
line is ``# requires: redis`` (or postgres, rabbitmq) needs that service: skipped locally
when it is down, failed in CI. Blocks in one file do not share state: each is whole.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.procs import child_env
from tests.services import (
    POSTGRES_HOST,
    POSTGRES_PORT,
    RABBITMQ_HOST,
    RABBITMQ_PORT,
    REDIS_HOST,
    REDIS_PORT,
    require_port,
)

ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
SERVICES = {
    "redis": ("Redis", REDIS_HOST, REDIS_PORT),
    "postgres": ("PostgreSQL", POSTGRES_HOST, POSTGRES_PORT),
    "rabbitmq": ("RabbitMQ", RABBITMQ_HOST, RABBITMQ_PORT),
}


def _blocks() -> list[tuple[str, str]]:
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    found = []
    for path in files:
        if not path.exists():
            continue
        for n, match in enumerate(BLOCK.finditer(path.read_text()), 1):
            found.append((f"{path.relative_to(ROOT)}#{n}", match.group(1)))
    return found


BLOCKS = _blocks()


def test_the_readme_has_examples() -> None:
    assert any(name.startswith("README.md") for name, _ in BLOCKS)


@pytest.mark.parametrize(("name", "code"), BLOCKS, ids=[name for name, _ in BLOCKS])
def test_doc_example_runs(name: str, code: str, tmp_path: Path) -> None:
    first = code.splitlines()[0] if code.strip() else ""
    if first.startswith("# requires:"):
        for service in first.split(":", 1)[1].replace(",", " ").split():
            label, host, port = SERVICES[service]
            require_port(label, host, port)
    script = tmp_path / "example.py"
    script.write_text(code)
    out = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, f"{name} failed:\n{out.stdout}\n{out.stderr}"
