"""The local spawner returns from start() once the server listens (so the hub sees it at its
first check): the check itself, against real sockets."""

from __future__ import annotations

import asyncio
import socket

from hub_ext.spawner.local import accepts


def test_accepts_a_listening_port_and_not_a_closed_one() -> None:
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        assert asyncio.run(accepts("127.0.0.1", port)) is True
    # the same port, closed now: refused, answered at once
    assert asyncio.run(accepts("127.0.0.1", port)) is False
