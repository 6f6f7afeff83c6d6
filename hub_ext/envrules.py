"""Which environment variables a user may set for a server or a job: an allow rule.

A user's variables reach processes the platform starts (bubblewrap, the job supervisor), some of
them outside the sandbox and as root. A deny list of dangerous names is never complete (glibc
alone reads dozens), so a name is accepted only when it has the shape of an ordinary setting
(upper case, digits, ``_``; or one of the lower-case proxy names) and is not one that a loader,
libc, a shell, an interpreter or the platform itself interprets.
"""

from __future__ import annotations

import re

#: the shape of an accepted name
ALLOWED_NAME = re.compile(r"[A-Z][A-Z0-9_]{0,127}")
#: lower-case names tools expect in that spelling
ALLOWED_LOWER = frozenset({"http_proxy", "https_proxy", "ftp_proxy", "no_proxy", "all_proxy"})

#: set by the platform: a user's value would lie about the layout or impersonate the hub
PLATFORM_PREFIXES = ("KQI_", "JUPYTERHUB_", "JPY_")
PLATFORM_NAMES = frozenset({"HOME", "USER", "LOGNAME", "SHELL", "PATH", "PWD", "MAIL"})

#: read by the dynamic loader, glibc (its "unsecure" list: ignored for setuid programs for the
#: same reason), shells and language runtimes, before any of the user's code would run
INTERPRETED_PREFIXES = ("LD_", "MALLOC_", "GLIBC_", "BASH_FUNC_", "GCONV_", "PYTHON", "PERL5")
INTERPRETED_NAMES = frozenset(
    {
        # glibc unsecvars
        "GETCONF_DIR",
        "HOSTALIASES",
        "LOCALDOMAIN",
        "LOCPATH",
        "NIS_PATH",
        "NLSPATH",
        "RESOLV_HOST_CONF",
        "RES_OPTIONS",
        "TMPDIR",
        "TZDIR",
        # shells
        "BASH_ENV",
        "ENV",
        "SHELLOPTS",
        "BASHOPTS",
        "PS4",
        "IFS",
        "CDPATH",
        "GLOBIGNORE",
        "PROMPT_COMMAND",
        # other runtimes and tools started on the way
        "PERLLIB",
        "RUBYOPT",
        "RUBYLIB",
        "NODE_OPTIONS",
        "NODE_PATH",
        "GIT_CONFIG_GLOBAL",
        "GIT_CONFIG_SYSTEM",
        "GIT_EXEC_PATH",
        "GIT_SSH",
        "GIT_SSH_COMMAND",
        "SSH_AUTH_SOCK",
    }
)
#: harmless settings of Python itself, let through the PYTHON* rule
PYTHON_SETTINGS = frozenset(
    {
        "PYTHONUNBUFFERED",
        "PYTHONHASHSEED",
        "PYTHONWARNINGS",
        "PYTHONFAULTHANDLER",
        "PYTHONDONTWRITEBYTECODE",
        "PYTHONIOENCODING",
        "PYTHONUTF8",
        "PYTHONOPTIMIZE",
    }
)

SHAPE = "names are upper-case letters, digits and _ (or " + ", ".join(sorted(ALLOWED_LOWER)) + ")"


def refusal(name: str) -> str | None:
    """Why ``name`` may not be set by a user, or None when it may."""
    if name not in ALLOWED_LOWER and not ALLOWED_NAME.fullmatch(name):
        return f"{name!r} is not accepted: {SHAPE}"
    if name in PLATFORM_NAMES or name.startswith(PLATFORM_PREFIXES):
        return f"{name} is set by the platform and cannot be overridden"
    if name in PYTHON_SETTINGS:
        return None
    if name in INTERPRETED_NAMES or name.startswith(INTERPRETED_PREFIXES):
        return f"{name} is read by the system before your code runs and cannot be set"
    return None
