"""Job specs: validation as a pure function, with the same checks (datasets, jobs, profile,
env) and the same authority context as the spawn options."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

from .layout import JobRef
from .options import (
    Context,
    OptionsError,
    check_datasets,
    check_jobs,
    check_profile,
    validate_env,
)

JOB_KEYS = (
    "name",
    "command",
    "profile",
    "datasets",
    "parent",
    "purpose",
    "env",
    "timeout_seconds",
    "notify_url",
)
CONTINUE_KEYS = ("copy_output", "command", "name", "env", "timeout_seconds", "notify_url")
PURPOSES = ("training", "inference")


@dataclass(frozen=True)
class JobSpec:
    name: str
    command: str
    profile: str
    datasets: tuple[str, ...] = ()
    parents: tuple[JobRef, ...] = ()
    purpose: str = "training"
    env: Mapping[str, str] = field(default_factory=dict)
    timeout_seconds: int | None = None
    notify_url: str = ""


def _text(raw: Mapping[str, Any], key: str, limit: int, errors: list, default: str = "") -> str:
    value = raw.get(key, default)
    if value is None:
        return default
    if not isinstance(value, str) or len(value) > limit or "\0" in value:
        errors.append((key, f"must be text of at most {limit} characters"))
        return default
    return value


def _timeout(value: Any, max_timeout: int | None, errors: list) -> int | None:
    if value in (None, ""):
        return max_timeout
    try:
        seconds = float(value)
    except (TypeError, ValueError, OverflowError):
        seconds = math.nan
    if isinstance(value, bool) or not math.isfinite(seconds) or seconds < 1:
        errors.append(("timeout_seconds", f"{value!r} is not a whole number of seconds ≥ 1"))
        return None
    if max_timeout is not None and seconds > max_timeout:
        errors.append(("timeout_seconds", f"{seconds:g} s is over the maximum of {max_timeout} s"))
        return None
    return int(seconds)


def _notify_url(value: Any, errors: list) -> str:
    if value in (None, ""):
        return ""
    try:
        parts = urlsplit(value) if isinstance(value, str) else None
        host = parts.hostname if parts else None
    except ValueError:
        parts = host = None
    if parts is None or parts.scheme not in ("http", "https") or not host:
        errors.append(("notify_url", f"{value!r} is not an http(s) URL"))
        return ""
    return value


def validate_job_spec(raw: Any, ctx: Context, max_timeout: int | None = None) -> JobSpec:
    """Check a submitted spec; raise OptionsError naming every bad field."""
    if not isinstance(raw, Mapping):
        raise OptionsError([("spec", "must be a JSON object")])
    errors: list[tuple[str, str]] = []
    for key in raw:
        if key not in JOB_KEYS:
            errors.append((str(key), f"unknown field (known: {', '.join(JOB_KEYS)})"))
    command = _text(raw, "command", 16384, errors)
    if not command.strip():
        errors.append(("command", "is required: the shell command run in /kqi/code"))
    purpose = raw.get("purpose") or "training"
    if purpose not in PURPOSES:
        errors.append(("purpose", f"{purpose!r} is not one of {', '.join(PURPOSES)}"))
    spec = JobSpec(
        name=_text(raw, "name", 255, errors) or command.strip().split("\n")[0][:80],
        command=command,
        profile=check_profile(raw.get("profile"), ctx, errors),
        datasets=check_datasets(raw.get("datasets"), ctx, errors),
        parents=check_jobs("parent", raw.get("parent"), ctx, errors),
        purpose=purpose,
        env=validate_env(raw.get("env"), errors),
        timeout_seconds=_timeout(raw.get("timeout_seconds"), max_timeout, errors),
        notify_url=_notify_url(raw.get("notify_url"), errors),
    )
    if errors:
        raise OptionsError(errors)
    return spec


def continue_spec(
    raw: Any, previous: JobSpec, previous_ref: JobRef, ctx: Context, max_timeout: int | None
) -> JobSpec:
    """The spec of a continued job: the previous one's datasets, profile, purpose and command
    unless given, with the previous job as its only parent (mounted at /kqi/parent)."""
    if not isinstance(raw, Mapping):
        raise OptionsError([("body", "must be a JSON object")])
    errors = [(str(k), "unknown field") for k in raw if k not in CONTINUE_KEYS]
    if not isinstance(raw.get("copy_output", False), bool):
        errors.append(("copy_output", "must be true or false"))
    if errors:
        raise OptionsError(errors)
    merged = {
        "name": raw.get("name") or previous.name,
        "command": raw.get("command") or previous.command,
        "profile": previous.profile,
        "datasets": list(previous.datasets),
        "purpose": previous.purpose,
        "env": raw.get("env") if raw.get("env") is not None else dict(previous.env),
        "timeout_seconds": raw.get("timeout_seconds", previous.timeout_seconds),
        "notify_url": raw.get("notify_url", previous.notify_url),
    }
    return replace(validate_job_spec(merged, ctx, max_timeout), parents=(previous_ref,))
