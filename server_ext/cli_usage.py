"""``kqi usage`` and the workspace line of ``kqi status``: the workspace size the kqi service
measured last, against the storage of this server's profile (KQI_PROFILE)."""

from __future__ import annotations

import argparse
import json
import os
from datetime import datetime
from typing import Any

from culler.rules import parse_time
from hub_ext.quota import Usage, size_text, usage_line

from .client import ServiceClient, ServiceError

DESCRIPTION = (
    "The size of your workspace (your home and your job folders) as the platform measured it "
    "last (it measures in the background every few minutes), against the storage of this "
    "server's profile or of --profile. A new server or job whose profile has less storage "
    "than your workspace is refused."
)


def fetch(client: ServiceClient, user: str | None = None, profile: str | None = None) -> dict:
    return client.call(
        "GET", "usage", user=user, profile=profile or os.environ.get("KQI_PROFILE") or None
    )


def summary(data: dict[str, Any], now: datetime | None = None) -> str:
    """'60 MiB of 10 GiB (measured 4 s ago)', told against ``now``."""
    when = parse_time(data.get("measured_at"))
    if when is None:
        return data.get("text") or "unknown"
    return usage_line(Usage(int(data["bytes"]), when), int(data["quota"]), now)


def lines(data: dict[str, Any], now: datetime | None = None) -> list[str]:
    out = [
        f"workspace: {summary(data, now)}",
        f"user:      {data['user']}",
        f"profile:   {data['profile']} ({size_text(data['quota'])} of storage)",
        f"files:     {data.get('files', 0)} in the home and the job folders",
    ]
    if data.get("over_quota"):
        out.append(
            f"over the quota: new servers and jobs with profile {data['profile']} are refused;"
            " free some space or choose a profile with more storage"
        )
    return out


def cmd_usage(args: argparse.Namespace, client: ServiceClient) -> int:
    data = fetch(client, args.user, args.profile)
    if args.json:
        print(json.dumps(data, indent=1, sort_keys=True))
    else:
        print("\n".join(lines(data)))
    return 0


def status_line() -> str:
    """The line ``kqi status`` prints; the reason when the service cannot say."""
    try:
        return f"workspace: {summary(fetch(ServiceClient(timeout=20)))}"
    except ServiceError as e:
        return f"workspace: unknown ({e.message})"


def add_parser(add: Any) -> None:
    """``add`` is cli.build_parser's helper (name, help, description) → a sub-parser."""
    p = add("usage", "how big your workspace is, against the profile's storage", DESCRIPTION)
    p.add_argument("--profile", metavar="P", help="against this profile (default: this server's)")
    p.add_argument("--user", metavar="NAME", help="another user's workspace (admins)")
    p.set_defaults(func=cmd_usage)
