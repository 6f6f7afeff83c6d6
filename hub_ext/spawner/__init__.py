"""kqi spawners: the shared form/validation mixin and the local-process spawner; with the
``kubernetes`` extra also hub_ext.spawner.kube.KqiKubeSpawner (not imported here, so the
embedded default needs no Kubernetes client)."""

from .common import KqiSpawnerMixin
from .local import KqiLocalSpawner

__all__ = ["KqiLocalSpawner", "KqiSpawnerMixin"]
