"""Job runners: LocalRunner (processes on this machine); the runner is chosen by a trait."""

from .base import JobLaunch, JobRunner, RunState
from .local import LocalRunner

__all__ = ["JobLaunch", "JobRunner", "LocalRunner", "RunState"]
