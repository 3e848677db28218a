"""docs/grafana/offload.json queries only what offload exports: every metric (and every label it
selects or groups by) in its panels and variables is checked against a real scrape of an
``offload worker --metrics-port``, after jobs that succeed, retry and die."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.procs import ROOT, run_cli, start_worker, stop, wait_for
from tests.test_worker_metrics import free_port, scrape, value

DASHBOARD = ROOT / "docs" / "grafana" / "offload.json"
_METRIC = re.compile(r"\b(offload_[a-z_]+)(?:\{([^}]*)\})?")
_BY = re.compile(r"\bby \(([^)]*)\)")
_LABEL_VALUES = re.compile(r"label_values\((offload_[a-z_]+), *([a-z_]+)\)")


def queries(dashboard: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    return exprs


def labels_by_sample(text: str) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, set()).update(s.labels)
    return out


def test_the_dashboard_is_well_formed() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)) and dashboard["uid"] and dashboard["title"]
    for p in dashboard["panels"]:
        assert p["targets"] and p["datasource"]["uid"] == "${datasource}", p["title"]
        assert {"x", "y", "w", "h"} <= set(p["gridPos"]), p["title"]


def test_every_queried_metric_is_exported_by_a_worker(tmp_path: Path) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    port = free_port()
    worker = start_worker(url, "--concurrency", "2", "--metrics-port", str(port))
    try:
        assert run_cli(url, "enqueue", "add", "--args", "[1, 2]").returncode == 0
        assert run_cli(url, "enqueue", "fail", "--args", '["x"]').returncode == 0

        def finished() -> bool:
            try:
                samples = scrape(port)
            except OSError:
                return False  # not listening yet
            return value(samples, "offload_jobs_total", outcome="dead") == 1 and (
                value(samples, "offload_jobs_total", outcome="succeeded") == 1
            )

        wait_for(finished, 30, "the jobs in the worker's metrics")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            exported = labels_by_sample(r.read().decode())
    finally:
        assert stop(worker) == 0
    checked = set()
    for expr in queries(dashboard):
        names = []
        for name, selector in _METRIC.findall(expr):
            assert name in exported, f"{name} (in {expr!r}) is not exported"
            names.append(name)
            for matcher in filter(None, (m.strip() for m in selector.split(","))):
                label = re.split(r"=~|!~|!=|=", matcher)[0].strip()
                assert label in exported[name], f"{name} has no label {label!r} ({expr!r})"
        for group in _BY.findall(expr):
            for label in (g.strip() for g in group.split(",")):
                assert any(label in exported[n] for n in names), f"no {label!r} in {expr!r}"
        for name, label in _LABEL_VALUES.findall(expr):
            assert label in exported[name], f"{name} has no label {label!r}"
        checked.update(names)
    # The families the issue names are all on the dashboard.
    assert {
        "offload_jobs_total",
        "offload_job_duration_seconds_bucket",
        "offload_enqueue_to_start_seconds_bucket",
        "offload_queue_jobs",
        "offload_worker_slots",
    } <= checked
