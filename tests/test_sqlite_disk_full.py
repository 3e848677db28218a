"""A full disk under an SQLite database is reported as :class:`offload.StorageFull`, typed and
worded as such, never as a raw sqlite3 error. SQLite's own page limit (``max_page_count``)
raises the same SQLITE_FULL as a full filesystem; the reliability harness fills a real one
(reliability/diskfull.py)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

import offload
from offload.backends.sqlite.connection import translate


def _full_error(path: Path) -> sqlite3.Error:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("CREATE TABLE t (x BLOB)")
        conn.execute("PRAGMA max_page_count = 4")
        with pytest.raises(sqlite3.Error) as info:
            for _ in range(10):
                conn.execute("INSERT INTO t VALUES (zeroblob(4096))")
        return info.value
    finally:
        conn.close()


def test_sqlite_full_becomes_storage_full(tmp_path: Path) -> None:
    exc = _full_error(tmp_path / "full.db")
    assert exc.sqlite_errorcode == sqlite3.SQLITE_FULL
    err = translate(exc)
    assert isinstance(err, offload.StorageFull)
    assert isinstance(err, offload.BackendUnavailable)  # retried like any outage
    assert "disk" in str(err) and "full" in str(err)


def test_other_errors_stay_backend_unavailable(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "x.db")
    with pytest.raises(sqlite3.Error) as info:
        conn.execute("SELECT * FROM missing")
    conn.close()
    err = translate(info.value)
    assert type(err) is offload.BackendUnavailable
