"""A small Django project whose views enqueue Django tasks that offload runs.

``EXAMPLE_OFFLOAD_URL`` picks offload's store (an SQLite file beside this project by
default); ``EXAMPLE_POSTGRES`` (a libpq URL) adds a PostgreSQL database ``pg``, on whose
connection jobs are enqueued inside ``transaction.atomic()`` when offload's store is that
same PostgreSQL database.
"""

import os
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
SECRET_KEY = "example-only"
DEBUG = True
ALLOWED_HOSTS = ["*"]
USE_TZ = True
ROOT_URLCONF = "exampleproject.urls"
INSTALLED_APPS = ["offload.contrib.django", "shop"]
MIDDLEWARE: list[str] = []

DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": HERE / "django.db"}}
POSTGRES = os.environ.get("EXAMPLE_POSTGRES")
if POSTGRES:
    from urllib.parse import urlsplit

    pg = urlsplit(POSTGRES)
    DATABASES["pg"] = {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": pg.path.lstrip("/"),
        "USER": pg.username or "",
        "HOST": pg.hostname or "",
        "PORT": str(pg.port or ""),
    }

OFFLOAD_URL = os.environ.get("EXAMPLE_OFFLOAD_URL", f"sqlite:///{HERE / 'jobs.db'}")
TASKS = {
    "default": {
        "BACKEND": "offload.contrib.django.OffloadBackend",
        "QUEUES": ["default", "emails"],
        "OPTIONS": {
            "url": OFFLOAD_URL,
            **({"database": "pg"} if POSTGRES and OFFLOAD_URL.startswith("postgres") else {}),
        },
    }
}
