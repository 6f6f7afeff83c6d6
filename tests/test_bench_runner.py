"""The benchmark command itself (the benchmarks run by ./run-benchmarks.sh, never in CI)."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from tests.bench.__main__ import available, table
from tests.bench.common import Result, median, percentile

BENCH = Path(__file__).parent / "bench"


def test_help_lists_every_benchmark_and_each_has_a_title_and_run() -> None:
    files = sorted(p.stem[len("bench_") :] for p in BENCH.glob("bench_*.py"))
    assert set(files) >= {"scan", "culler", "jobs_run"}
    assert sorted(available()) == files
    out = subprocess.run(
        [sys.executable, "-m", "tests.bench", "--help"],
        capture_output=True,
        text=True,
        cwd=BENCH.parents[1],
    )
    assert out.returncode == 0
    for name in files:
        assert name in out.stdout
        mod = importlib.import_module(f"tests.bench.bench_{name}")
        assert mod.TITLE and callable(mod.run)


def test_unknown_benchmark_is_refused_by_name() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "tests.bench", "nosuch"],
        capture_output=True,
        text=True,
        cwd=BENCH.parents[1],
    )
    assert out.returncode == 2 and "unknown benchmark nosuch" in out.stderr


def test_medians_percentiles_and_the_table() -> None:
    assert median([3, 1, 2]) == 2
    xs = list(range(1, 1001))
    assert percentile(xs, 99) == 990 and percentile(xs, 50) == 500 and percentile(xs, 100) == 1000
    with pytest.raises(ValueError):
        percentile([], 99)
    r = Result("b", "wall", "s", 0.5, 2.0, "anchor", "≤ 0.5×", True)
    assert r.ratio == 0.25
    line = table([r]).splitlines()[-1]
    assert "500.0 ms" in line and "2 s (anchor)" in line and "0.25×" in line and "yes" in line
    assert Result("b", "rss", "MB", 40, None).ratio is None
