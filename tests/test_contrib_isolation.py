"""The core imports no web framework, and each framework's extra brings only its own."""

from __future__ import annotations

import subprocess
import sys
import tomllib

from tests.procs import ROOT, child_env

CORE = [
    "offload",
    "offload.app",
    "offload.worker",
    "offload.server",
    "offload.cli.main",
    "offload.testing",
    "offload.testing.plugin",
    "offload.backends.sqlite",
    "offload.contrib.otel",
]
FRAMEWORKS = ("django", "django_tasks", "fastapi", "flask")


def test_the_core_imports_no_framework() -> None:
    code = (
        "import importlib, sys\n"
        f"for name in {CORE!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {FRAMEWORKS!r}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=child_env(), capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_each_extra_brings_its_own_framework_only() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]

    def frameworks(extra: str) -> set[str]:
        names = {req.split(";")[0].split("[")[0].split(">")[0].strip() for req in extras[extra]}
        return names & {"django", "django-tasks", "fastapi", "flask"}

    assert frameworks("django") == {"django", "django-tasks"}
    assert frameworks("fastapi") == {"fastapi"}
    assert frameworks("flask") == {"flask"}
    assert not any(frameworks(e) for e in ("all", "server", "postgres", "redis"))
