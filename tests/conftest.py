"""Fixtures: the real platform, started once per test session per isolation mode."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from .platform import Platform


def _base(name: str) -> Path:
    # A short path outside pytest's tmp: it shows up in every bwrap command line of the log.
    base = Path(tempfile.mkdtemp(prefix=f"kqi-{name}-"))
    os.chmod(base, 0o755)
    return base


def _platform(name: str, isolation: str) -> Iterator[Platform]:
    base = _base(name)
    p = Platform(base, isolation=isolation)
    try:
        p.start()
        yield p
    finally:
        p.stop()
        keep = os.environ.get("KQI_TEST_KEEP")
        if keep:
            print(f"\nplatform files kept in {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def platform() -> Iterator[Platform]:
    """The embedded platform with bubblewrap isolation (as the set-up installs it)."""
    if not shutil.which("bwrap"):
        pytest.fail("bubblewrap (bwrap) is not installed; ./setup-and-test.sh installs it")
    yield from _platform("bwrap", "bubblewrap")


@pytest.fixture(scope="session")
def plain_platform() -> Iterator[Platform]:
    """The embedded platform without bubblewrap: per-server folder of links + KQI_ROOT."""
    yield from _platform("plain", "none")


from .pw import chromium, page  # noqa: E402,F401  (browser fixtures for the browser suites)
