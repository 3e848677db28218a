"""Admission control for any ASGI app: bounded concurrency, a bounded wait queue, shedding.

``AdmissionControl`` wraps an ASGI app (Starlette, FastAPI, Django, offload's own server) and
lets at most a limited number of HTTP requests run inside it; the rest wait in FIFO order in a
bounded queue, and those that cannot be served in time are answered ``503`` with
``Retry-After`` instead of making every request slow. See ``docs/admission.md``; the code lives
in :mod:`offload.admission`, and this module is its public import.
"""

# The ASGI types and the constants stay importable from here, as before, outside __all__.
from offload.admission.control import SHED_REASONS as SHED_REASONS
from offload.admission.control import WAIT_BUCKETS_S as WAIT_BUCKETS_S
from offload.admission.control import AdmissionControl
from offload.admission.control import Overflow as Overflow
from offload.admission.limit import AdaptiveLimit
from offload.admission.metrics import AdmissionStats
from offload.admission.rules import PriorityRule
from offload.admission.types import ASGIApp as ASGIApp
from offload.admission.types import Message as Message
from offload.admission.types import Receive as Receive
from offload.admission.types import Scope as Scope
from offload.admission.types import Send as Send

__all__ = ["AdaptiveLimit", "AdmissionControl", "AdmissionStats", "PriorityRule"]
