"""The postgresql:// backend's transactional enqueue: jobs written on the caller's own
connection, inside its transaction (async and sync psycopg connections)."""

from __future__ import annotations

import asyncio

import psycopg
import pytest
from psycopg.rows import dict_row

import offload
from offload.errors import QueueFull
from offload.testing import (
    claim_one,
)
from tests import postgres_support
from tests.postgres_support import Factory, claim, job
from tests.services import POSTGRES_URL

schema = postgres_support.schema  # fixtures: a schema of the test's own, backends on it
backends = postgres_support.backends


async def test_enqueue_in_is_visible_only_after_commit(backends: Factory) -> None:
    backend = await backends()
    async with await psycopg.AsyncConnection.connect(POSTGRES_URL) as conn:
        await conn.execute("SELECT 1")  # the caller's own work, in its open transaction
        (rec,) = await backend.enqueue_in(conn, [job()])
        assert await backend.get(rec.id) is None
        assert await backend.claim(claim()) == []
        await conn.commit()
    assert (await claim_one(backend, "q")).id == rec.id


async def test_enqueue_in_disappears_on_rollback(backends: Factory) -> None:
    backend = await backends()
    async with await psycopg.AsyncConnection.connect(POSTGRES_URL) as conn:
        (rec,) = await backend.enqueue_in(conn, [job()])  # first statement of the transaction
        await conn.rollback()
    assert await backend.get(rec.id) is None
    assert await backend.claim(claim()) == []


async def test_enqueue_in_queue_full_undoes_only_the_jobs(backends: Factory) -> None:
    backend = await backends()
    async with await psycopg.AsyncConnection.connect(POSTGRES_URL) as conn:
        await conn.execute("CREATE TEMP TABLE mine (x int)")
        await conn.execute("INSERT INTO mine VALUES (1)")
        with pytest.raises(QueueFull):
            await backend.enqueue_in(conn, [job(), job()], limits={"q": 1})
        cur = await conn.execute("SELECT count(*) FROM mine")  # the caller's work survives
        assert await cur.fetchone() == (1,)
        await conn.commit()
    assert await backend.counts() == {}


async def test_enqueue_in_a_sync_connection(backends: Factory) -> None:
    backend = await backends()
    with psycopg.connect(POSTGRES_URL) as conn:
        (rec,) = await backend.enqueue_in(conn, [job()])
        assert await backend.get(rec.id) is None
        conn.commit()
    assert (await backend.get(rec.id)) is not None


async def test_enqueue_in_on_a_client_side_binding_connection(backends: Factory) -> None:
    """Django's psycopg connections make client-side-binding cursors by default, and callers
    may set a row factory: offload's statements use cursors of their own either way."""
    backend = await backends()
    factories = {"cursor_factory": psycopg.ClientCursor, "row_factory": dict_row}
    with psycopg.connect(POSTGRES_URL, **factories) as conn:  # type: ignore[arg-type]
        first, dup = await backend.enqueue_in(conn, [job(key="k"), job(key="k")])
        (again,) = await backend.enqueue_in(conn, [job(key="k")])  # found by a lookup
        assert first.id == dup.id == again.id
        conn.commit()
    async_factories = {"cursor_factory": psycopg.AsyncClientCursor, "row_factory": dict_row}
    async with await psycopg.AsyncConnection.connect(POSTGRES_URL, **async_factories) as aconn:  # type: ignore[arg-type]
        (rec,) = await backend.enqueue_in(aconn, [job()])
        await aconn.commit()
    assert {r.id for r in await backend.claim(claim())} == {first.id, rec.id}


async def test_enqueue_in_wakes_workers_at_commit(backends: Factory) -> None:
    waiter, producer = await backends(), await backends()
    await waiter.wait_for_work(["q"], 0.01)  # start listening
    async with await psycopg.AsyncConnection.connect(POSTGRES_URL) as conn:
        await producer.enqueue_in(conn, [job()])
        waiting = asyncio.create_task(waiter.wait_for_work(["q"], 30.0))
        await asyncio.sleep(0.2)
        assert not waiting.done()  # uncommitted work wakes nobody
        await conn.commit()
    await asyncio.wait_for(waiting, 2.0)


async def test_task_options_connection_routes_to_the_callers_transaction(schema: str) -> None:
    app = offload.App(f"{POSTGRES_URL}?schema={schema}&auto_migrate=1")

    @app.task
    def send_receipt(order_id: int) -> None: ...

    try:  # no app.open(): the first enqueue opens the app, whose auto_migrate makes the tables
        async with await psycopg.AsyncConnection.connect(POSTGRES_URL) as conn:
            kept = await send_receipt.options(connection=conn).aenqueue(order_id=1)
            await conn.commit()
            dropped = await send_receipt.options(connection=conn).aenqueue(order_id=2)
            await conn.rollback()
        assert await app.call(lambda b: b.get(kept.id)) is not None
        assert await app.call(lambda b: b.get(dropped.id)) is None
    finally:
        await app.close()


def test_sync_enqueue_on_a_sync_connection(schema: str) -> None:
    app = offload.App(f"{POSTGRES_URL}?schema={schema}&auto_migrate=1")

    @app.task
    def send_receipt(order_id: int) -> None: ...

    try:
        with psycopg.connect(POSTGRES_URL) as conn:
            with conn.transaction():
                job = send_receipt.options(connection=conn).enqueue(order_id=1)
                assert app.run_sync(lambda b: b.get(job.id)) is None
        assert app.run_sync(lambda b: b.get(job.id)) is not None
    finally:
        app.close_sync()


# -- upkeep ------------------------------------------------------------------------------------
