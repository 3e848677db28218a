"""App, Task and Job handle: registration, validation, options, the sync bridge."""

from __future__ import annotations

import asyncio
import inspect
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest

import offload
from offload.job import JobState


def make_app() -> offload.App:
    return offload.App("memory://")


def test_default_url_is_sqlite() -> None:
    assert offload.App().url == "sqlite:///offload.db"


def test_url_and_backend_are_exclusive() -> None:
    from offload.backends.memory import MemoryBackend

    with pytest.raises(offload.ConfigurationError):
        offload.App("memory://", backend=MemoryBackend())


def test_unknown_scheme_is_a_clear_error() -> None:
    with pytest.raises(offload.ConfigurationError, match="unknown backend URL scheme 'mongo'"):
        offload.App("mongo://x")


def test_sync_enqueue_validates_and_stores() -> None:
    app = make_app()

    @app.task
    def add(x: int, y: int = 2) -> int:
        return x + y

    job = add.enqueue(1, y=5)
    assert job.refresh().state is JobState.QUEUED
    assert job.record.args == b'{"x":1,"y":5}'
    assert job.task.endswith("add")
    assert add(1, 1) == 2  # calling the task runs the function
    app.close_sync()


@pytest.mark.parametrize(
    ("args", "kwargs", "argument"),
    [(("a",), {}, "x"), ((1,), {"y": "b"}, "y"), ((), {}, None), ((1, 2, 3), {}, None)],
)
def test_wrong_arguments_raise_validation_error_and_store_nothing(
    args: tuple[object, ...], kwargs: dict[str, object], argument: str | None
) -> None:
    app = make_app()

    @app.task
    def add(x: int, y: int = 2) -> int:
        return x + y

    with pytest.raises(offload.ValidationError) as info:
        add.enqueue(*args, **kwargs)  # type: ignore[arg-type]
    assert info.value.argument == argument
    if argument:
        assert repr(argument) in str(info.value)
    assert app.run_sync(lambda b: b.counts()) == {}
    app.close_sync()


def _by_bind(task: Any, args: tuple[object, ...]) -> bytes | str:
    """What encode_args gives for a positional call when it always goes through bind():
    the JSON, or the ValidationError's text."""
    try:
        given = dict(inspect.signature(task.fn).bind(*args).arguments)
    except TypeError as exc:
        return f"task {task.name}: {exc}"
    try:
        return msgspec.json.encode(msgspec.convert(given, task.args_type, strict=True))
    except msgspec.ValidationError as exc:
        return str(exc)


def test_a_positional_call_encodes_as_binding_it_would() -> None:
    """encode_args skips Signature.bind for a call with only positional arguments; each
    signature kind, called with 0 to 4 of them, gives bind()'s result or error."""
    app = make_app()

    @app.task
    def plain(x: int, y: int = 2) -> None: ...

    @app.task
    def pos_only(x: int, /, y: str = "s") -> None: ...

    @app.task
    def kw_default(x: int, *, z: int = 3) -> None: ...

    @app.task
    def kw_required(x: int, *, z: int) -> None: ...

    @app.task
    def nothing() -> None: ...

    for task in (plain, pos_only, kw_default, kw_required, nothing):
        for n in range(5):
            args = (1, 2, 3, 4)[:n]
            want = _by_bind(task, args)
            try:
                got: bytes | str = task.encode_args(*args)
            except offload.ValidationError as exc:
                got = str(exc)
                assert isinstance(want, str), (task.name, n, got)
                assert want in got, (task.name, n, got)
            else:
                assert got == want, (task.name, n)
    app.close_sync()


def test_typed_arguments_convert_structures() -> None:
    app = make_app()

    @app.task
    def greet(names: list[str], when: datetime) -> str:
        return ",".join(names)

    when = datetime(2026, 1, 1, tzinfo=UTC)
    job = greet.enqueue(["a", "b"], when)
    assert b'"names":["a","b"]' in job.record.args
    decoded = greet.decode_args(job.record.args)
    assert greet.call_with(decoded) == "a,b"
    app.close_sync()


def test_var_args_are_refused_at_registration() -> None:
    app = make_app()
    with pytest.raises(offload.ConfigurationError, match=r"\*args"):

        @app.task
        def bad(*items: int) -> None: ...


def test_duplicate_task_names_are_refused() -> None:
    app = make_app()

    @app.task(name="same")
    def one() -> None: ...

    with pytest.raises(offload.ConfigurationError, match="already registered"):

        @app.task(name="same")
        def two() -> None: ...


def test_bad_task_options_are_refused() -> None:
    app = make_app()
    with pytest.raises(offload.ConfigurationError, match="priority"):
        app.task(priority=42)(lambda: None)
    with pytest.raises(offload.ConfigurationError, match="queue"):
        app.task(queue="has space")(lambda: None)
    with pytest.raises(offload.ConfigurationError):
        app.task(timeout=0)(lambda: None)


def test_options_are_validated_and_applied() -> None:
    app = make_app()

    @app.task(queue="q1")
    def t(x: int) -> None: ...

    with pytest.raises(offload.ValidationError, match="delay"):
        t.options(delay=-1)
    with pytest.raises(offload.ValidationError, match="priority"):
        t.options(priority=10)
    with pytest.raises(offload.ValidationError, match="unexpected keyword"):
        t.options(nope=1)
    with pytest.raises(offload.ValidationError, match="timezone"):
        t.options(run_at=datetime(2030, 1, 1)).enqueue(1)
    job = t.options(delay=60, priority=7, queue="q2", key="k1").enqueue(1)
    rec = job.record
    assert (rec.state, rec.priority, rec.queue, rec.key) == (JobState.SCHEDULED, 7, "q2", "k1")
    later = datetime.now(UTC) + timedelta(hours=1)
    assert t.options(run_at=later).enqueue(2).record.run_at == pytest.approx(later.timestamp())
    # the same key returns the same active job
    assert t.options(key="k1", queue="q2").enqueue(9).id == job.id
    assert t.options(key="k1").enqueue(9).id != job.id  # keys are scoped by queue
    app.close_sync()


def test_enqueue_many_is_one_atomic_batch() -> None:
    app = offload.App("memory://", queue_limits={"small": 3})

    @app.task(queue="small")
    def t(x: int) -> None: ...

    jobs = app.enqueue_many([t.prepare(i) for i in range(3)])
    assert [j.record.args for j in jobs] == [b'{"x":0}', b'{"x":1}', b'{"x":2}']
    with pytest.raises(offload.QueueFull):
        app.enqueue_many([t.prepare(9)])
    with pytest.raises(offload.UsageError):
        app.enqueue_many(["not a job"])  # type: ignore[list-item]
    counts = app.run_sync(lambda b: b.counts())
    assert counts["small"][JobState.QUEUED] == 3
    app.close_sync()


def test_queue_limits_must_be_positive() -> None:
    with pytest.raises(offload.ConfigurationError):
        offload.App("memory://", queue_limits={"q": 0})


async def test_async_enqueue_result_and_cancel(mem_app: offload.App) -> None:
    @mem_app.task
    async def double(x: int) -> int:
        return 2 * x

    job = await double.aenqueue(21)
    with pytest.raises(TimeoutError):
        await job.aresult(timeout=0.05)
    from offload.worker import Worker, WorkerConfig

    worker = Worker(mem_app, WorkerConfig(concurrency=2))
    run = asyncio.create_task(worker.run())
    assert await job.aresult(timeout=5) == 42
    await worker.stop()
    await run
    other = await double.options(delay=100).aenqueue(1)
    await other.acancel()
    assert other.state is JobState.CANCELLED
    with pytest.raises(offload.JobFailed) as info:
        await other.aresult(timeout=1)
    assert info.value.state == "cancelled"
    with pytest.raises(offload.JobNotFound):
        await mem_app.aget_job("nope")


async def test_sync_call_on_the_apps_own_loop_is_refused(mem_app: offload.App) -> None:
    @mem_app.task
    def t() -> None: ...

    with pytest.raises(offload.UsageError, match="async"):
        t.enqueue()


def test_sync_calls_from_other_threads_reach_the_apps_loop() -> None:
    app = make_app()

    @app.task
    def t(i: int) -> None: ...

    ids: list[str] = []

    def produce() -> None:
        for i in range(20):
            ids.append(t.enqueue(i).id)

    threads = [threading.Thread(target=produce) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(set(ids)) == 80
    assert app.run_sync(lambda b: b.counts())["default"][JobState.QUEUED] == 80
    bridge_threads = {t for t in threading.enumerate() if t.name == "offload-bridge"}
    assert bridge_threads
    app.close_sync()
    assert not bridge_threads & set(threading.enumerate())


def test_use_url_only_before_first_use() -> None:
    app = make_app()
    app.use_url("memory://other")
    app.run_sync(lambda b: b.counts())
    with pytest.raises(offload.UsageError):
        app.use_url("memory://again")
    app.close_sync()


def test_args_schema_comes_from_the_signature() -> None:
    app = make_app()

    @app.task(name="s")
    def s(user_id: int, note: str = "") -> None: ...

    schema = s.args_schema()
    body = schema["$defs"]["s.args"]
    assert body["properties"]["user_id"] == {"type": "integer"}
    assert body["required"] == ["user_id"]
    assert body["additionalProperties"] is False
