"""Workspace size against the profile's storage: the texts users read, as pure functions.

The kqi service measures each user's workspace (home and job folders) in the background; the
option and job validation refuse a profile whose storage is below the last measurement, and the
form, the ``kqi`` command and JupyterLab show the same numbers in the same words.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from culler.rules import utc

_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB")


@dataclass(frozen=True)
class Usage:
    """A user's workspace as last measured: bytes on disk and when."""

    bytes: int
    measured_at: datetime


def size_text(n: float) -> str:
    """'512 B', '60 MiB', '1.2 GiB', '100 GiB': binary units, one decimal at most."""
    if abs(n) < 1024:
        return f"{n:.0f} B"
    for unit in _UNITS:
        n /= 1024
        if abs(round(n, 1)) < 1024 or unit == _UNITS[-1]:
            text = f"{n:.1f}"
            return f"{text.removesuffix('.0')} {unit}"
    raise AssertionError("unreachable")


def ago_text(seconds: float) -> str:
    """'5 s', '3 min', '2 h', '4 d': how long ago, rounded down to a whole unit."""
    s = max(0, int(seconds))
    if s < 120:
        return f"{s} s"
    if s < 120 * 60:
        return f"{s // 60} min"
    if s < 48 * 3600:
        return f"{s // 3600} h"
    return f"{s // 86400} d"


def measured_text(measured_at: datetime, now: datetime | None = None) -> str:
    """'measured 3 min ago'."""
    now = now or datetime.now(timezone.utc)
    return f"measured {ago_text((utc(now) - utc(measured_at)).total_seconds())} ago"


def usage_line(usage: Usage, quota: int, now: datetime | None = None) -> str:
    """'1.2 GiB of 100 GiB (measured 3 min ago)'."""
    return (
        f"{size_text(usage.bytes)} of {size_text(quota)} ({measured_text(usage.measured_at, now)})"
    )


def over_quota(usage: Usage | None, quota: int, now: datetime | None = None) -> str | None:
    """Why a profile with ``quota`` bytes of storage is refused, or None when it fits (or the
    workspace has not been measured)."""
    if usage is None or usage.bytes <= quota:
        return None
    return (
        f"workspace {size_text(usage.bytes)} is over the profile's {size_text(quota)}"
        f" ({measured_text(usage.measured_at, now)}); free some space or choose a profile"
        " with more storage"
    )
