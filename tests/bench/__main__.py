"""``python -m tests.bench [NAME ...] [--runs N] [--quick]``: every benchmark, one table.

Run through ``./run-benchmarks.sh``, which sets up the anchors first. Results also land in
``test-artifacts/bench/results.json`` and ``results.md``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

import psutil

from .common import REPO, Context, Result

ORDER = ["scan", "culler", "jobs_api", "jobs_run", "spawn"]


def available() -> list[str]:
    names = [p.stem[len("bench_") :] for p in Path(__file__).parent.glob("bench_*.py")]
    return sorted(names, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))


def fmt(x: float | None, unit: str = "") -> str:
    if x is None:
        return "—"
    if unit == "s" and x < 1:
        return f"{x * 1000:.1f} ms"
    text = f"{x:.3g}" if abs(x) < 1000 else f"{x:,.0f}"
    return f"{text} {unit}".strip()


def table(results: list[Result]) -> str:
    head = "| benchmark | metric | ours | anchor | ratio | goal | met |"
    lines = [head, "|---|---|---|---|---|---|---|"]
    for r in results:
        anchor = f"{fmt(r.anchor, r.unit)} ({r.anchor_name})" if r.anchor is not None else "—"
        ratio = f"{r.ratio:.2f}×" if r.ratio is not None else "—"
        met = {True: "yes", False: "**no**", None: "—"}[r.met]
        lines.append(
            f"| {r.bench} | {r.metric} | {fmt(r.ours, r.unit)} | {anchor} | {ratio} | {r.goal} "
            f"| {met} |"
        )
    notes = [f"- {r.bench}, {r.metric}: {r.detail}" for r in results if r.detail]
    return "\n".join(lines + ([""] + notes if notes else []))


def main(argv: list[str] | None = None) -> int:
    names = available()
    ap = argparse.ArgumentParser(prog="run-benchmarks.sh", description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="*", metavar="NAME", help=f"benchmarks: {', '.join(names)}")
    ap.add_argument("--runs", type=int, default=5, help="repetitions per figure (default 5)")
    ap.add_argument("--quick", action="store_true", help="smaller sizes, to try a benchmark")
    ap.add_argument("--keep", action="store_true", help="keep each benchmark's folder (logs)")
    ap.add_argument(
        "--out", type=Path, default=REPO / "test-artifacts" / "bench", help="where results go"
    )
    args = ap.parse_args(argv)
    unknown = [n for n in args.names if n not in names]
    if unknown:
        ap.error(f"unknown benchmark {', '.join(unknown)}; there are: {', '.join(names)}")
    chosen = args.names or names
    results: list[Result] = []
    failed: list[str] = []
    began = time.monotonic()
    for name in chosen:
        mod = importlib.import_module(f"tests.bench.bench_{name}")
        print(f"== {name}: {mod.TITLE}", file=sys.stderr, flush=True)
        t0 = time.monotonic()
        tmp = tempfile.mkdtemp(prefix=f"kqi-bench-{name}-")
        try:
            got = mod.run(Context(runs=args.runs, workdir=Path(tmp), quick=args.quick))
        except Exception:
            traceback.print_exc()
            failed.append(name)
            continue
        finally:
            if args.keep:
                print(f"   kept {tmp}", file=sys.stderr)
            else:
                shutil.rmtree(tmp, ignore_errors=True)
        results.extend(got)
        print(table(got), file=sys.stderr)
        print(f"   ({time.monotonic() - t0:.0f} s)\n", file=sys.stderr, flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    cpu = platform.processor() or platform.machine()
    py = platform.python_version()
    machine = f"{platform.node()}: {cpu}, {psutil.cpu_count()} cores, Python {py}"
    (args.out / "results.json").write_text(
        json.dumps(
            {"machine": machine, "runs": args.runs, "results": [r.to_dict() for r in results]},
            indent=1,
        )
    )
    md = table(results)
    (args.out / "results.md").write_text(md + "\n")
    print(f"\n# kqi-hub benchmarks ({machine}; medians of {args.runs} runs)\n")
    print(md)
    print(f"\n{len(results)} figures in {time.monotonic() - began:.0f} s; {args.out}/results.md")
    if failed:
        print(f"benchmarks that failed to run: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
