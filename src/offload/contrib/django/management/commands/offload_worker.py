"""``manage.py offload_worker``: offload's worker with Django set up.

It runs the jobs of the offload App behind a ``TASKS`` backend (``--backend``, ``default``)
or of any ``offload.App`` (``--app module:attr``): Django tasks and offload's own tasks alike.
"""

from __future__ import annotations

import logging
from typing import Any

import click
from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, CommandParser

from offload.cli.context import load_app
from offload.contrib.django._compat import task_backends
from offload.contrib.django.backend import OffloadBackend
from offload.contrib.workers import run, worker_config
from offload.errors import OffloadError


class Command(BaseCommand):
    help = "Run offload's worker: claim at most the free slots, drain on SIGTERM."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--backend", default="default", help="The TASKS alias to serve.")
        parser.add_argument("--app", default=None, help="An offload.App (module:attr) instead.")
        parser.add_argument("--queues", "-q", default=None, help="Comma-separated queues.")
        parser.add_argument("--concurrency", "-c", type=int, default=10)
        parser.add_argument("--grace", type=float, default=25.0)
        parser.add_argument("--lease", type=float, default=30.0)
        parser.add_argument("--recover", type=float, default=5.0)
        parser.add_argument("--burst", action="store_true", help="Exit once idle.")

    def handle(self, *args: Any, **opts: Any) -> None:
        logging.basicConfig(level=logging.WARNING if opts["verbosity"] < 2 else logging.INFO)
        queues = opts["queues"]
        if opts["app"]:
            try:
                app = load_app(opts["app"], None)
            except click.ClickException as exc:
                raise CommandError(exc.format_message()) from None
        else:
            try:
                backend = task_backends()[opts["backend"]]
            except ImproperlyConfigured as exc:  # no such alias, or its OPTIONS are wrong
                raise CommandError(str(exc)) from None
            if not isinstance(backend, OffloadBackend):
                raise CommandError(f"TASKS[{opts['backend']!r}] is not an OffloadBackend")
            app = backend.app
            queues = queues or ",".join(sorted(backend.queues)) or "default"
        try:
            config = worker_config(
                queues or "default",
                concurrency=opts["concurrency"],
                grace=opts["grace"],
                lease=opts["lease"],
                recover=opts["recover"],
                burst=opts["burst"],
            )
            run(app, config)
        except OffloadError as exc:
            raise CommandError(str(exc)) from None
