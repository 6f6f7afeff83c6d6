"""The /kqi layout plan: which data-root folders appear where under the KQI root.

Pure functions of plain data. The plan names sources relative to the data root and targets
relative to the KQI root, so the same plan is materialised by bubblewrap binds, a per-server
folder of links, or Kubernetes subPath mounts, without this module knowing which.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

#: Home links a notebook gets, in order; each points at ``<KQI_ROOT>/<name>`` when present.
HOME_LINK_NAMES = ("input", "parent", "inference", "git", "jobs")


@dataclass(frozen=True)
class JobRef:
    """A job as the layout needs it: its id, owner and purpose."""

    id: int
    owner: str
    purpose: str = "training"


@dataclass(frozen=True)
class Binding:
    """One folder made visible under the KQI root.

    ``source`` is relative to the data root; ``None`` means a fresh, empty, writable folder
    private to this server or job (rebuilt on each start, e.g. the git clone).
    """

    target: str
    source: str | None
    read_only: bool
    role: str


@dataclass(frozen=True)
class LayoutPlan:
    bindings: tuple[Binding, ...]
    home_links: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "bindings": [asdict(b) for b in self.bindings],
            "home_links": list(self.home_links),
            "env": dict(self.env),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LayoutPlan:
        return cls(
            bindings=tuple(Binding(**b) for b in data.get("bindings", ())),
            home_links=tuple(data.get("home_links", ())),
            env=dict(data.get("env", {})),
        )

    def binding(self, target: str) -> Binding | None:
        for b in self.bindings:
            if b.target == target:
                return b
        return None


def user_dir(user: str) -> str:
    return f"users/{user}"


def home_source(user: str) -> str:
    return f"users/{user}/home"


def job_dir(owner: str, job_id: int) -> str:
    return f"users/{owner}/jobs/{job_id}"


def job_output_source(job: JobRef) -> str:
    return f"{job_dir(job.owner, job.id)}/output"


def _job_bindings(jobs: Iterable[JobRef], top: str) -> list[Binding]:
    """One job at ``top``; several at ``top/<id>`` (DESIGN: /kqi/parent/<id>/)."""
    jobs = list(jobs)
    if len(jobs) == 1:
        return [Binding(top, job_output_source(jobs[0]), True, top)]
    return [Binding(f"{top}/{j.id}", job_output_source(j), True, top) for j in jobs]


def _common(
    datasets: Iterable[str], parents: Iterable[JobRef], inferences: Iterable[JobRef]
) -> tuple[list[Binding], dict[str, str]]:
    datasets, parents, inferences = list(datasets), list(parents), list(inferences)
    bindings = [Binding(f"input/{name}", f"datasets/{name}", True, "dataset") for name in datasets]
    bindings += _job_bindings(parents, "parent")
    bindings += _job_bindings(inferences, "inference")
    env = {
        "KQI_DATASETS": ",".join(datasets),
        "KQI_PARENT_ID": ",".join(str(j.id) for j in parents),
        "KQI_INFERENCE_ID": ",".join(str(j.id) for j in inferences),
    }
    return bindings, env


def plan_notebook(
    user: str,
    datasets: Iterable[str] = (),
    parents: Iterable[JobRef] = (),
    inferences: Iterable[JobRef] = (),
    git: bool = False,
) -> LayoutPlan:
    """Layout of a notebook server: inputs, jobs read-only, optional git scratch folder."""
    bindings, env = _common(datasets, parents, inferences)
    if git:
        bindings.append(Binding("git", None, False, "git"))
    bindings.append(Binding("jobs", f"{user_dir(user)}/jobs", True, "jobs"))
    present = {b.target.split("/", 1)[0] for b in bindings}
    links = tuple(name for name in HOME_LINK_NAMES if name in present)
    return LayoutPlan(tuple(bindings), links, env)


def plan_job(
    owner: str,
    job_id: int,
    datasets: Iterable[str] = (),
    parents: Iterable[JobRef] = (),
    inferences: Iterable[JobRef] = (),
    continued_from: int | None = None,
) -> LayoutPlan:
    """Layout of a batch job: inputs plus its own writable code snapshot and output."""
    bindings, env = _common(datasets, parents, inferences)
    base = job_dir(owner, job_id)
    bindings.append(Binding("code", f"{base}/code", False, "code"))
    bindings.append(Binding("output", f"{base}/output", False, "output"))
    env["KQI_JOB_ID"] = str(job_id)
    env["KQI_CONTINUED_FROM"] = "" if continued_from is None else str(continued_from)
    env["PYTHONUNBUFFERED"] = "1"
    return LayoutPlan(tuple(bindings), (), env)


def parent_dirs(plan: LayoutPlan) -> list[str]:
    """Folders under the KQI root that must exist before the bindings are placed."""
    dirs: list[str] = []
    for b in plan.bindings:
        parts = b.target.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in dirs:
                dirs.append(d)
    return dirs
