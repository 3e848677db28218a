"""The worker: claim loop bounded by free slots, executor, heartbeats, graceful shutdown."""

from offload.worker.worker import Worker, WorkerConfig, WorkerListener

__all__ = ["Worker", "WorkerConfig", "WorkerListener"]
