"""The Django app of ``INSTALLED_APPS = [..., "offload.contrib.django"]``: it only brings
the ``offload_worker`` management command (offload keeps its jobs in its own store)."""

from django.apps import AppConfig


class OffloadConfig(AppConfig):
    name = "offload.contrib.django"
    label = "offload"
    verbose_name = "offload"
