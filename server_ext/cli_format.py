"""Text output of the ``kqi`` command: aligned tables, local times, sizes, durations."""

from __future__ import annotations

from datetime import datetime, timezone


def parse_time(value: str | None) -> datetime | None:
    """An ISO 8601 time from the service (UTC; a missing zone is taken as UTC)."""
    if not value:
        return None
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def local_time(value: str | None) -> str:
    """In the terminal's time zone, to the minute: what a person reads in a table."""
    t = parse_time(value)
    return t.astimezone().strftime("%Y-%m-%d %H:%M") if t else ""


def duration(start: str | None, end: str | None) -> str:
    """How long a job ran (or has been running)."""
    t0 = parse_time(start)
    if t0 is None:
        return ""
    t1 = parse_time(end) or datetime.now(timezone.utc)
    s = max(0, int((t1 - t0).total_seconds()))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def human_size(n: int | None) -> str:
    if n is None:
        return ""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def table(head: list[str], rows: list[list[str]]) -> str:
    """Columns padded to their widest cell; the last column is not padded."""
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = []
    for r in [head, *rows]:
        cells = [c.ljust(w) for c, w in zip(r[:-1], widths[:-1], strict=True)] + [r[-1]]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)
