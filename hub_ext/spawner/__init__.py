"""kqi spawners: the shared form/validation mixin and the local-process spawner."""

from .common import KqiSpawnerMixin
from .local import KqiLocalSpawner

__all__ = ["KqiLocalSpawner", "KqiSpawnerMixin"]
