"""benchmarks/pyspy.py: py-spy's raw samples read as self time by component and function."""

from __future__ import annotations

from pathlib import Path

from benchmarks import pyspy

RAW = """\
Server.run (uvicorn/server.py:86);Api.enqueue (offload/server/api.py:93) 6
Api.enqueue (offload/server/api.py:128);Backend.enqueue (offload/backends/redis/backend.py:90) 2
Router.app (starlette/routing.py:704);Event.wait (asyncio/locks.py:200) 1
Event.wait (asyncio/locks.py:200);__init__ (<string>:11) 1
"""


def test_each_sample_counts_once_where_it_was_taken(tmp_path: Path) -> None:
    raw = tmp_path / "raw.txt"
    raw.write_text(RAW + "a line that is no sample\n")
    total, components, functions = pyspy.shares(raw)
    assert total == 10
    assert components == {"offload.server": 60.0, "offload": 20.0, "asyncio": 10.0, "other": 10.0}
    assert list(functions)[:2] == [
        "Api.enqueue (offload/server/api.py)",
        "Backend.enqueue (offload/backends/redis/backend.py)",
    ]
    assert "| offload.server | 60.0% |" in pyspy.report(raw)


def test_files_are_named_by_their_package() -> None:
    assert pyspy.component("/usr/lib/python3.11/site-packages/uvicorn/main.py") == "uvicorn"
    assert pyspy.component("psycopg_pool/pool_async.py") == "psycopg"
    assert pyspy.component("<frozen _collections_abc>") == "the standard library"
    assert pyspy.component("threading.py") == "the standard library"
    assert pyspy.component("mylib/thing.py") == "other"
