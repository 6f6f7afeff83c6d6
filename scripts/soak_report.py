"""The report of scripts/soak.sh: per test id, how many of the N pytest runs it passed.

Usage: soak_report.py DIR N, where DIR holds runK.xml (pytest --junitxml, junit_family=xunit1)
and runs.tsv (one line per run: number, pytest exit code, start and end times in seconds).
Exit code 0 only when every run exited 0 and every test passed (or was skipped) in every run.
"""

from __future__ import annotations

import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

RC_MEANING = {
    1: "tests failed",
    2: "interrupted",
    3: "internal error",
    4: "usage error",
    5: "no tests collected",
}
RANK = {"skip": 0, "pass": 1, "fail": 2}  # a test reported twice in a run keeps the worst


def test_id(case: ET.Element) -> str:
    """The pytest node id (file::Class::name) of an xunit1 <testcase>."""
    file, cls, name = (case.get(key, "") for key in ("file", "classname", "name"))
    if not cls:  # a collection error: the name is the module's
        return file or name
    module = re.sub(r"\.py$", "", file.replace("/", "."))
    if file and (cls == module or cls.startswith(module + ".")):
        return "::".join([file, *filter(None, cls[len(module) :].split(".")), name])
    return f"{cls}::{name}"


def outcome(case: ET.Element) -> str:
    tags = {child.tag for child in case}
    return "fail" if tags & {"failure", "error"} else "skip" if "skipped" in tags else "pass"


def main(folder: Path, n: int) -> int:
    results: dict[str, list[str]] = {}  # test id -> its outcome in each run it was in
    for run in range(1, n + 1):
        xml = folder / f"run{run}.xml"
        seen: dict[str, str] = {}
        if xml.exists():
            for case in ET.parse(xml).getroot().iter("testcase"):
                tid, result = test_id(case), outcome(case)
                seen[tid] = max(seen.get(tid, result), result, key=RANK.__getitem__)
        for tid, result in seen.items():
            results.setdefault(tid, []).append(result)

    width = max(len(f"{n}/{n}"), len("skipped"))
    lines = []  # (sort key: failing ones first, fewest passes first; text)
    n_bad = n_skipped = 0
    for tid, outcomes in results.items():
        passed, skipped, missing = outcomes.count("pass"), outcomes.count("skip"), n - len(outcomes)
        bad = passed + skipped < n  # a failure or an error, or missing from a run
        n_bad += bad
        n_skipped += skipped == n
        label = "skipped" if skipped == n else f"{passed}/{n}"
        notes = ", ".join(
            f"{k} {what}" for k, what in ((skipped, "skipped"), (missing, "missing")) if k
        )
        text = f"{label:>{width}}  {tid}" + (f"  ({notes})" if notes and skipped < n else "")
        lines.append(((not bad, passed if bad else 0, tid), text))
    for _, text in sorted(lines):
        print(text)
    print(
        f"total: {len(lines)} tests over {n} runs: {len(lines) - n_bad - n_skipped} passed every"
        f" run, {n_bad} failed at least once, {n_skipped} always skipped"
    )
    runs_ok = True
    for line in (folder / "runs.tsv").read_text().splitlines():
        run, rc, start, end = line.split("\t")
        seconds = float(end.replace(",", ".")) - float(start.replace(",", "."))
        note = f" ({RC_MEANING.get(int(rc), 'failed')})" if rc != "0" else ""
        print(f"run {run}: {seconds:.1f}s, pytest exit code {rc}{note}")
        runs_ok = runs_ok and rc == "0"
    ok = runs_ok and bool(lines) and not n_bad
    print(f"soak: {'PASSED' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), int(sys.argv[2])))
