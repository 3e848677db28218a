"""Admission control for any ASGI app: bounded concurrency, a bounded wait queue, shedding.

The public import is :mod:`offload.asgi`. Inside: ``control`` (the middleware and its queue),
``listener`` (what a waiting request's ``receive`` does), ``rules`` (priority classes),
``limit`` (the adaptive limit), ``metrics`` (counters and their Prometheus export),
``types`` (the ASGI callable and messages).
"""

from offload.admission.control import AdmissionControl, Overflow
from offload.admission.limit import AdaptiveLimit
from offload.admission.metrics import AdmissionStats
from offload.admission.rules import PriorityRule

__all__ = ["AdaptiveLimit", "AdmissionControl", "AdmissionStats", "Overflow", "PriorityRule"]
