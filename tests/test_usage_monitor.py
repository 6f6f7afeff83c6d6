"""The service's usage monitor on a real database and real folders (no platform): a first
measurement not waited for beyond its limit is still recorded, users without folders are not
recorded, concurrent questions share one walk."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from types import SimpleNamespace

from hub_ext.service.db import make_session_factory, migrate
from hub_ext.service.usage import UsageMonitor

MiB = 2**20


def monitor(tmp_path: Path) -> UsageMonitor:
    url = f"sqlite:///{tmp_path / 'kqi.sqlite'}"
    migrate(url)
    _engine, sessions = make_session_factory(url)
    kqi = SimpleNamespace(
        log=logging.getLogger("test"), data_root=str(tmp_path), usage_interval=600, session=sessions
    )
    return UsageMonitor(kqi)


def test_first_walk_not_waited_for_is_recorded(tmp_path: Path) -> None:
    home = tmp_path / "users" / "ann" / "home"
    for i in range(40):
        (home / f"d{i}").mkdir(parents=True)
        for j in range(100):
            (home / f"d{i}" / f"f{j}").write_bytes(b"x")
    (home / "big.bin").write_bytes(os.urandom(2 * MiB))
    m = monitor(tmp_path)

    async def run() -> None:
        assert await m.get("ann", wait=0) is None  # the walk of 4,000 files goes on
        assert await m.usage("nobody") is not None  # no folders: 0 at once, not recorded
        assert m.last("nobody") is None
        first, second = await asyncio.gather(m.measure("ann"), m.measure("ann"))
        assert first.measured_at == second.measured_at  # one walk for both
        row = await m.get("ann")
        assert row.files == 4001 and row.bytes >= 2 * MiB
        assert m.users() == ["ann"]

    try:
        asyncio.run(run())
    finally:
        m.close()
