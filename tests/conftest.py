"""Fixtures: the real platform, started once per test session per isolation mode."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from .platform import Platform, private_platform


@pytest.fixture(scope="session")
def platform() -> Iterator[Platform]:
    """The embedded platform with bubblewrap isolation (as the set-up installs it)."""
    if not shutil.which("bwrap"):
        pytest.fail("bubblewrap (bwrap) is not installed; ./setup-and-test.sh installs it")
    with private_platform("bwrap", isolation="bubblewrap") as p:
        yield p


@pytest.fixture(scope="session")
def plain_platform() -> Iterator[Platform]:
    """The embedded platform without bubblewrap: per-server folder of links + KQI_ROOT."""
    with private_platform("plain") as p:
        yield p


from .pw import chromium, page  # noqa: E402,F401  (browser fixtures for the browser suites)
