"""Job runners: LocalRunner (processes on this machine) and, with the ``kubernetes`` extra,
hub_ext.runners.kubernetes.KubernetesRunner (batch/v1 Jobs); the runner is chosen by a trait."""

from .base import JobLaunch, JobRunner, RunState
from .local import LocalRunner

__all__ = ["JobLaunch", "JobRunner", "LocalRunner", "RunState"]
