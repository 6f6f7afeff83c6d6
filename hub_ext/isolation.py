"""Whether users can be kept apart on this machine, decided once from plain facts.

Isolated means: each user's servers and jobs run as a Unix account of their own (needs root,
``setpriv`` and ``useradd``) inside a bubblewrap sandbox. Where that cannot be had, kqi-hub does
not quietly run everybody as one account: only admins may start servers and jobs, the log says
why at CRITICAL, until the operator says ``isolation = "none"`` on purpose (then every spawn
page and the log say that users are not isolated). An explicit ``"bubblewrap"`` that cannot be
had stops kqi-hub at start.
"""

from __future__ import annotations

import functools
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass

#: the programs isolation needs, by role
TOOLS = ("bwrap", "setpriv", "useradd", "groupadd")
SETTING = "c.KqiLocalSpawner.isolation"


@dataclass(frozen=True)
class Decision:
    mode: str  # how servers and jobs are made: "bubblewrap" (a sandbox) or "none"
    isolated: bool  # an account of their own per user, in a sandbox
    explicit: bool  # the operator chose this mode by name
    reason: str = ""  # why users are not isolated ("" when they are)

    @property
    def admins_only(self) -> bool:
        """Only admins may start servers and jobs: not isolated, and nobody said it is fine."""
        return not self.isolated and not (self.explicit and self.mode == "none")

    def note(self) -> str:
        """One sentence for the log and the spawn page ("" when users are isolated)."""
        if self.isolated:
            return ""
        if not self.admins_only:
            return (
                f"Users are NOT isolated on this machine ({SETTING} = 'none'): every server and "
                "job runs as the platform's own account and can read and change the others' work."
            )
        return (
            f"Users cannot be isolated on this machine ({self.reason}): only admins may start "
            f"servers and jobs. Set {SETTING} = 'none' to let everyone in without isolation."
        )

    def refusal(self, user: str) -> str:
        return f"{user} may not start servers or jobs here: {self.note()}"


class IsolationUnavailable(RuntimeError):
    """``isolation = "bubblewrap"`` was asked for and cannot be had."""


def decide(configured: str, euid: int, have: Mapping[str, bool]) -> Decision:
    """The decision for ``configured`` ("auto", "bubblewrap", "none") on a machine where the
    process runs as ``euid`` and ``have`` says which of TOOLS are installed."""
    configured = configured.lower()
    if configured == "none":
        return Decision("none", False, True, f"{SETTING} = 'none'")
    missing = [t for t in TOOLS if not have.get(t)]
    why = []
    if euid != 0:
        why.append("kqi-hub does not run as root, so it cannot run users as accounts of their own")
    if missing:
        why.append(f"{', '.join(missing)} not installed")
    if not why:
        return Decision("bubblewrap", True, configured == "bubblewrap")
    reason = "; ".join(why)
    if configured == "bubblewrap":
        raise IsolationUnavailable(f"{SETTING} = 'bubblewrap' but {reason}")
    # auto: a sandbox where bubblewrap runs (read-only machine, hidden data), no accounts
    return Decision("bubblewrap" if have.get("bwrap") else "none", False, False, reason)


def machine(bwrap: str = "bwrap", setpriv: str = "setpriv") -> dict[str, bool]:
    """Which of TOOLS this machine has (``bwrap`` and ``setpriv`` as configured)."""
    names = {"bwrap": bwrap, "setpriv": setpriv, "useradd": "useradd", "groupadd": "groupadd"}
    return {tool: shutil.which(path) is not None for tool, path in names.items()}


@functools.cache
def decide_here(configured: str, bwrap: str = "bwrap", setpriv: str = "setpriv") -> Decision:
    """The decision for this process on this machine, made once per setting (the hub, each
    spawner and the job runner ask it often; the machine does not change under them)."""
    return decide(configured, os.geteuid(), machine(bwrap, setpriv))
