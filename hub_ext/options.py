"""Spawner user_options: parsing and validation as pure functions.

The kqi service calls :func:`validate_options` with what it knows (readable datasets, readable
jobs, profiles, limits); every refusal names the field and the reason, and all problems are
reported at once so a user fixes them in one go.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Set
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

from . import envrules
from .layout import JobRef
from .quota import Usage, over_quota

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
GIT_REF_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,199}$")
KNOWN_KEYS = (
    "profile",
    "datasets",
    "parent",
    "inference",
    "git",
    "lifetime_hours",
    "startup_command",
    "env",
)
_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_bytes(text: str | int | float) -> int:
    """'8G', '8Gi', '100GiB' or a number of bytes → bytes (binary units, as JupyterHub)."""
    if isinstance(text, (int, float)):
        return int(text)
    m = re.fullmatch(r"\s*([0-9.]+)\s*([KMGT]?)(i?B?)\s*", str(text), re.IGNORECASE)
    if not m:
        raise ValueError(f"not a size: {text!r} (use e.g. 8G)")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


@dataclass(frozen=True)
class Profile:
    """A resource profile. Sizes in bytes; ``extra`` carries Kubernetes-only settings."""

    name: str
    display_name: str
    cpu: float
    memory: int
    storage: int
    gpu: int = 0
    description: str = ""
    default: bool = False
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_config(cls, data: Mapping[str, Any]) -> Profile:
        data = dict(data)
        unknown = set(data) - {f for f in cls.__dataclass_fields__}
        if unknown:
            raise ValueError(f"profile {data.get('name')!r}: unknown keys {sorted(unknown)}")
        if not NAME_RE.fullmatch(str(data.get("name", ""))):
            raise ValueError(f"profile name {data.get('name')!r} is not a valid name")
        return cls(
            name=data["name"],
            display_name=data.get("display_name") or data["name"],
            cpu=float(data.get("cpu", 2)),
            memory=parse_bytes(data.get("memory", "8G")),
            storage=parse_bytes(data.get("storage", "100G")),
            gpu=int(data.get("gpu", 0)),
            description=data.get("description", ""),
            default=bool(data.get("default", False)),
            extra=dict(data.get("extra", {})),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


DEFAULT_PROFILES: list[dict[str, Any]] = [
    {
        "name": "standard",
        "display_name": "Standard",
        "cpu": 2,
        "memory": "8G",
        "storage": "100G",
        "description": "2 CPU, 8 GiB memory, 100 GiB workspace",
        "default": True,
    }
]


@dataclass(frozen=True)
class GitSpec:
    url: str
    ref: str = ""


@dataclass(frozen=True)
class ValidOptions:
    """Options after validation: every name checked, every job resolved to a JobRef."""

    profile: str
    datasets: tuple[str, ...] = ()
    parents: tuple[JobRef, ...] = ()
    inferences: tuple[JobRef, ...] = ()
    git: GitSpec | None = None
    lifetime_hours: float | None = None
    startup_command: str = ""
    env: Mapping[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "profile": self.profile,
            "datasets": list(self.datasets),
            "parents": [asdict(j) for j in self.parents],
            "inferences": [asdict(j) for j in self.inferences],
            "git": asdict(self.git) if self.git else None,
            "lifetime_hours": self.lifetime_hours,
            "startup_command": self.startup_command,
            "env": dict(self.env),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ValidOptions:
        return cls(
            profile=d["profile"],
            datasets=tuple(d.get("datasets", ())),
            parents=tuple(JobRef(**j) for j in d.get("parents", ())),
            inferences=tuple(JobRef(**j) for j in d.get("inferences", ())),
            git=GitSpec(**d["git"]) if d.get("git") else None,
            lifetime_hours=d.get("lifetime_hours"),
            startup_command=d.get("startup_command", ""),
            env=dict(d.get("env", {})),
        )


@dataclass(frozen=True)
class Context:
    """What the authority knows about the caller when validating."""

    profiles: Mapping[str, Profile]
    all_datasets: Set[str]
    readable_datasets: Set[str]
    readable_jobs: Mapping[int, JobRef]
    max_datasets: int = 5
    max_lifetime_hours: float | None = None
    git_schemes: tuple[str, ...] = ("https", "http", "ssh", "git")
    #: the caller's workspace as last measured (None: not measured, no storage check)
    workspace: Usage | None = None


class OptionsError(ValueError):
    """Refusal with one (field, message) per problem."""

    def __init__(self, errors: list[tuple[str, str]]):
        self.errors = errors
        super().__init__("; ".join(f"{f}: {m}" for f, m in errors))


def default_profile(profiles: Mapping[str, Profile]) -> str:
    for p in profiles.values():
        if p.default:
            return p.name
    return next(iter(profiles))


def _as_list(value: Any) -> list[Any]:
    if value is None or value == "" or value == []:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _job_ids(fld: str, value: Any, errors: list[tuple[str, str]]) -> list[int]:
    ids: list[int] = []
    for v in _as_list(value):
        text = str(v).strip()
        if isinstance(v, bool) or not isinstance(v, (int, str)) or not text.isascii():
            text = ""
        if not text.isdecimal() or int(text) <= 0:
            errors.append((fld, f"{v!r} is not a job id (a positive integer)"))
        elif int(text) not in ids:
            ids.append(int(text))
    return ids


def _resolve_jobs(
    fld: str, ids: list[int], ctx: Context, errors: list[tuple[str, str]]
) -> tuple[JobRef, ...]:
    refs = []
    for i in ids:
        job = ctx.readable_jobs.get(i)
        if job is None:
            errors.append((fld, f"there is no job {i} that you may read"))
        elif fld == "inference" and job.purpose != "inference":
            errors.append((fld, f"job {i} has purpose {job.purpose!r}, not 'inference'"))
        else:
            refs.append(job)
    return tuple(refs)


def check_profile(value: Any, ctx: Context, errors: list[tuple[str, str]]) -> str:
    profile = value or default_profile(ctx.profiles)
    if not isinstance(profile, str) or profile not in ctx.profiles:
        errors.append(
            ("profile", f"unknown profile {profile!r} (known: {', '.join(ctx.profiles)})")
        )
    elif why := over_quota(ctx.workspace, ctx.profiles[profile].storage):
        errors.append(("profile", why))
    return profile


def check_datasets(value: Any, ctx: Context, errors: list[tuple[str, str]]) -> tuple[str, ...]:
    """Dataset names the caller may read, de-duplicated, at most ctx.max_datasets."""
    datasets: list[str] = []
    for name in _as_list(value):
        if not isinstance(name, str) or not NAME_RE.fullmatch(name) or ".." in name:
            errors.append(
                ("datasets", f"{name!r} is not a dataset name (letters, digits, '.', '_', '-')")
            )
        elif name not in ctx.all_datasets:
            errors.append(("datasets", f"unknown dataset {name!r}"))
        elif name not in ctx.readable_datasets:
            errors.append(("datasets", f"dataset {name!r} is not readable by your groups"))
        elif name not in datasets:
            datasets.append(name)
    if len(datasets) > ctx.max_datasets:
        errors.append(("datasets", f"{len(datasets)} datasets chosen, at most {ctx.max_datasets}"))
    return tuple(datasets)


def check_jobs(fld: str, value: Any, ctx: Context, errors: list[tuple[str, str]]) -> tuple:
    """Job ids in ``value`` resolved to JobRefs the caller may read."""
    return _resolve_jobs(fld, _job_ids(fld, value, errors), ctx, errors)


def requested_job_ids(raw: Mapping[str, Any]) -> set[int]:
    """Job ids named in raw options, so the caller can look up only those."""
    ids = _job_ids("parent", raw.get("parent"), []) + _job_ids(
        "inference", raw.get("inference"), []
    )
    return set(ids)


def validate_options(raw: Any, ctx: Context) -> ValidOptions:
    """Check raw user_options against the caller's context; raise OptionsError naming each
    bad field."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise OptionsError([("options", "must be a JSON object")])
    errors: list[tuple[str, str]] = []
    for key in raw:
        if key not in KNOWN_KEYS:
            errors.append((str(key), f"unknown option (known: {', '.join(KNOWN_KEYS)})"))

    profile = check_profile(raw.get("profile"), ctx, errors)
    datasets = check_datasets(raw.get("datasets"), ctx, errors)

    parents = check_jobs("parent", raw.get("parent"), ctx, errors)
    inferences = check_jobs("inference", raw.get("inference"), ctx, errors)

    git = _validate_git(raw.get("git"), ctx, errors)
    lifetime = _validate_lifetime(raw.get("lifetime_hours"), ctx, errors)

    startup = raw.get("startup_command") or ""
    if not isinstance(startup, str) or len(startup) > 4096 or "\0" in startup:
        errors.append(("startup_command", "must be text of at most 4096 characters"))
        startup = ""

    env = validate_env(raw.get("env"), errors)
    if errors:
        raise OptionsError(errors)
    return ValidOptions(
        profile=profile,
        datasets=datasets,
        parents=parents,
        inferences=inferences,
        git=git,
        lifetime_hours=lifetime,
        startup_command=startup,
        env=env,
    )


def _validate_git(value: Any, ctx: Context, errors: list[tuple[str, str]]) -> GitSpec | None:
    if value in (None, "", {}):
        return None
    if not isinstance(value, Mapping) or set(value) - {"url", "ref"}:
        errors.append(("git", "must be an object with 'url' and optional 'ref'"))
        return None
    url, ref = value.get("url") or "", value.get("ref") or ""
    if not url:
        return None
    if not isinstance(url, str) or not isinstance(ref, str):
        errors.append(("git", "url and ref must be text"))
        return None
    scheme = urlsplit(url).scheme
    if scheme not in ctx.git_schemes or url.startswith("-") or any(c.isspace() for c in url):
        errors.append(
            ("git.url", f"{url!r} is not an allowed repository URL ({', '.join(ctx.git_schemes)})")
        )
        return None
    if ref and (not GIT_REF_RE.fullmatch(ref) or ".." in ref):
        errors.append(("git.ref", f"{ref!r} is not a branch, tag or commit name"))
        return None
    return GitSpec(url, ref)


def _validate_lifetime(value: Any, ctx: Context, errors: list[tuple[str, str]]) -> float | None:
    if value in (None, ""):
        return None
    try:
        hours = float(value)
    except (TypeError, ValueError):
        errors.append(("lifetime_hours", f"{value!r} is not a number of hours"))
        return None
    if isinstance(value, bool) or not math.isfinite(hours) or hours <= 0:
        errors.append(("lifetime_hours", "must be a positive number of hours"))
        return None
    if ctx.max_lifetime_hours is not None and hours > ctx.max_lifetime_hours:
        errors.append(
            ("lifetime_hours", f"{hours:g} h is over the maximum of {ctx.max_lifetime_hours:g} h")
        )
        return None
    return hours


def validate_env(value: Any, errors: list[tuple[str, str]]) -> dict[str, str]:
    if value in (None, "", {}):
        return {}
    if not isinstance(value, Mapping):
        errors.append(("env", "must be an object of NAME: value"))
        return {}
    env: dict[str, str] = {}
    for k, v in value.items():
        why = envrules.refusal(k) if isinstance(k, str) else f"{k!r} is not a variable name"
        if why:
            errors.append(("env", why))
        elif (
            not isinstance(v, (str, int, float))
            or isinstance(v, bool)
            or len(str(v)) > 4096
            or "\0" in str(v)
        ):
            errors.append(("env", f"value of {k} must be text of at most 4096 characters"))
        else:
            env[k] = str(v)
    if len(env) > 100:
        errors.append(("env", "at most 100 variables"))
    return env


def options_from_form(form: Mapping[str, list[str]]) -> dict[str, Any]:
    """Turn the spawn form's fields (lists of strings) into user_options as the REST API takes."""

    def one(key: str) -> str:
        vals = form.get(key) or [""]
        return vals[0].strip()

    opts: dict[str, Any] = {}
    if one("profile"):
        opts["profile"] = one("profile")
    datasets = [d for d in form.get("datasets", []) if d]
    if datasets:
        opts["datasets"] = datasets
    for key in ("parent", "inference"):
        ids = [v for v in form.get(key, []) if v.strip()]
        if ids:
            opts[key] = [int(v) if v.strip().isdigit() else v for v in ids]
    if one("git_url"):
        opts["git"] = {"url": one("git_url"), "ref": one("git_ref")}
    if one("lifetime_hours"):
        opts["lifetime_hours"] = one("lifetime_hours")
    if one("startup_command"):
        opts["startup_command"] = one("startup_command")
    env: dict[str, str] = {}
    for n, line in enumerate((form.get("env") or [""])[0].splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if "=" not in line:
            raise ValueError(f"env line {n}: {line.strip()!r} is not NAME=value")
        k, v = line.split("=", 1)
        env[k.strip()] = v.strip()
    if env:
        opts["env"] = env
    return opts
