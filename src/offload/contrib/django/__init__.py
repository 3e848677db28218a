"""offload for Django (``pip install 'offload[django]'``): a ``django.tasks`` backend
(Django >= 6, or the ``django-tasks`` backport on Django 4.2-5.2) and ``manage.py
offload_worker``. See docs/django.md."""

from offload.contrib.django.backend import OffloadBackend, offload_priority

__all__ = ["OffloadBackend", "offload_priority"]
