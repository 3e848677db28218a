"""offload: durable background jobs for Python web services."""

from offload.app import App
from offload.backoff import ExponentialBackoff, FixedBackoff
from offload.context import JobContext, JobInterrupted, current_job
from offload.control import Cancel, Retry, Snooze
from offload.errors import (
    BackendUnavailable,
    CapabilityUnavailable,
    ConfigurationError,
    InvalidState,
    JobFailed,
    JobNotFound,
    MissingDependency,
    OffloadError,
    QueueFull,
    StorageFull,
    UnknownTask,
    UsageError,
    ValidationError,
    WorkflowNotFound,
)
from offload.hooks import Hook
from offload.job import Job, JobRecord, JobState
from offload.limits import RateLimit
from offload.schedules import Cron, Every
from offload.task import Task
from offload.workflow import Workflow, chain, group

__version__ = "0.1.0"

__all__ = [
    "App",
    "BackendUnavailable",
    "Cancel",
    "CapabilityUnavailable",
    "ConfigurationError",
    "Cron",
    "Every",
    "ExponentialBackoff",
    "FixedBackoff",
    "Hook",
    "InvalidState",
    "Job",
    "JobContext",
    "JobFailed",
    "JobInterrupted",
    "JobNotFound",
    "JobRecord",
    "JobState",
    "MissingDependency",
    "OffloadError",
    "QueueFull",
    "RateLimit",
    "Retry",
    "Snooze",
    "StorageFull",
    "Task",
    "UnknownTask",
    "UsageError",
    "ValidationError",
    "Workflow",
    "WorkflowNotFound",
    "chain",
    "current_job",
    "group",
]
