"""What every benchmark shares: results, medians, percentiles, the anchors' environment.

A benchmark module ``bench_<name>.py`` defines ``TITLE`` and ``run(ctx) -> list[Result]``;
``python -m tests.bench`` runs them one after the other and prints our figure, the anchor's
figure from the same run, the ratio and the goal beside it. Goals are printed, never asserted.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[2]
#: the anchors that must not share our environment (jupyter-scheduler registers a server
#: extension in every server of the environment it is installed in)
ANCHOR_VENV = REPO / ".venv-anchors"
ANCHOR_PYTHON = ANCHOR_VENV / "bin" / "python"
BIN = Path(sys.executable).parent


@dataclass
class Result:
    """One line of the table. ``ratio`` is ours / anchor (lower is better)."""

    bench: str
    metric: str
    unit: str
    ours: float
    anchor: float | None = None
    anchor_name: str = ""
    goal: str = ""
    met: bool | None = None
    detail: str = ""
    samples: dict[str, list[float]] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if self.anchor in (None, 0):
            return None
        return self.ours / self.anchor

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio}


@dataclass
class Context:
    runs: int  # repetitions per measurement (medians are reported)
    workdir: Path  # a fresh folder for this benchmark's platforms and files
    quick: bool = False  # smaller sizes, for trying a benchmark out

    def log(self, msg: str) -> None:
        print(f"  . {msg}", file=sys.stderr, flush=True)


def median(xs: Iterable[float]) -> float:
    return statistics.median(list(xs))


def percentile(xs: Iterable[float], q: float) -> float:
    """The q-th percentile (0..100), nearest rank: p99 of 1,000 samples is the 990th."""
    data = sorted(xs)
    if not data:
        raise ValueError("no samples")
    k = max(0, min(len(data) - 1, int(-(-q * len(data) // 100)) - 1))
    return data[k]


def timed(fn: Callable[[], Any]) -> float:
    """Seconds one call of ``fn`` takes (monotonic clock)."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def repeat(fn: Callable[[], Any], runs: int, warmup: int = 1) -> list[float]:
    """``runs`` timings of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    return [timed(fn) for _ in range(runs)]


def rss_mb(pid: int) -> float:
    """Resident set size of one process in MB (10^6 bytes)."""
    return psutil.Process(pid).memory_info().rss / 1e6


def anchor_run(args: list[str], **kw: Any) -> subprocess.CompletedProcess:
    """Run a command with the anchors' Python (``.venv-anchors``, made by run-benchmarks.sh)."""
    if not ANCHOR_PYTHON.exists():
        raise RuntimeError(f"{ANCHOR_VENV} is missing: run ./run-benchmarks.sh (it makes it)")
    return subprocess.run([str(ANCHOR_PYTHON), *args], check=True, **kw)


def env_without_hub(**extra: str) -> dict[str, str]:
    """os.environ without JupyterHub variables (a benchmark may run inside a server)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JUPYTERHUB_")}
    env.update(extra)
    return env
