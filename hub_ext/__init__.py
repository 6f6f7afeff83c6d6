"""kqi-hub, hub side: layout plan, spawners, the kqi service and the embedded platform."""

__version__ = "0.1.0"
