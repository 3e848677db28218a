"""examples/django end to end: a view enqueues, a worker process runs the job, a view shows
the result; on PostgreSQL, the order and its job commit (or roll back) together."""

from __future__ import annotations

from django.test import Client

from tests.django_suite.conftest import UseTasks, run_worker


def test_a_view_enqueues_a_worker_runs_the_result_shows(store: str, use_tasks: UseTasks) -> None:
    use_tasks(store)
    client = Client()
    answer = client.get("/add", {"a": 2, "b": 3})
    assert answer.status_code == 202
    job_id = answer.json()["id"]
    assert client.get(f"/result/{job_id}").json() == {"status": "READY", "attempts": 0}
    run_worker(store, postgres=store.startswith("postgres"))
    shown = client.get(f"/result/{job_id}").json()
    assert shown == {"status": "SUCCESSFUL", "attempts": 1, "value": 5}


def test_an_order_and_its_job_commit_together(pg_store: str, use_tasks: UseTasks) -> None:
    use_tasks(pg_store, database="pg")
    client = Client()
    declined = client.get("/order", {"fail": 1})
    assert declined.status_code == 402
    assert client.get(f"/result/{declined.json()['id']}").status_code == 404  # rolled back
    placed = client.get("/order")
    assert placed.status_code == 202
    run_worker(pg_store, postgres=True)
    assert client.get(f"/result/{placed.json()['id']}").json()["value"] == 2


def test_offload_worker_runs_until_sigterm(sqlite_url: str, use_tasks: UseTasks) -> None:
    import signal
    import subprocess
    import sys

    from shop import tasks

    from tests.django_suite.conftest import EXAMPLE
    from tests.procs import child_env, stop

    backend = use_tasks(sqlite_url)
    env = {**child_env(), "EXAMPLE_OFFLOAD_URL": sqlite_url}
    cmd = [sys.executable, "manage.py", "offload_worker", "--concurrency", "2"]
    worker = subprocess.Popen(cmd, cwd=EXAMPLE, env=env, text=True)
    try:
        result = tasks.add.enqueue(20, 22)
        assert backend.app.get_job(result.id).result(timeout=30) == 42  # waits on the store
        assert tasks.add.get_result(result.id).return_value == 42
    finally:
        assert stop(worker, signal.SIGTERM) == 0  # drained and exited cleanly
