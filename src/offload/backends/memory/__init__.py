"""``memory://`` — the reference backend: every contract of the protocol, in plain Python.

``store`` holds the shared state and the record transitions; ``backend`` the Backend methods.
"""

from offload.backends.memory.backend import MemoryBackend
from offload.backends.memory.store import MemoryStore

__all__ = ["MemoryBackend", "MemoryStore"]
