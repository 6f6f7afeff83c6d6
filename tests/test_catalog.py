"""The datasets catalog: what a spawn or a submission needs comes without walking the files."""

from __future__ import annotations

from pathlib import Path

from hub_ext.service.catalog import Catalog


def make(root: Path, name: str, files: int, groups: str | None = None) -> None:
    d = root / name
    d.mkdir(parents=True)
    for i in range(files):
        (d / f"f{i}.txt").write_text("x" * 10)
    if groups is not None:
        (root / f"{name}.toml").write_text(f'description = "d"\ngroups = {groups}\n')


def test_scan_without_measuring_lists_names_and_groups_at_once(tmp_path: Path) -> None:
    make(tmp_path, "mnist", 3, '["vision"]')
    cat = Catalog(tmp_path)
    quick = cat.scan(measure=False)["mnist"]
    assert (quick.groups, quick.size, quick.files) == (("vision",), 0, 0)  # never measured
    full = cat.scan()["mnist"]
    assert (full.size, full.files) == (30, 3)
    # more files: the quick scan keeps the last measure; a new dataset appears at once
    (tmp_path / "mnist" / "more.txt").write_text("y")
    make(tmp_path, "qm9", 1)
    quick = cat.scan(measure=False)
    assert (quick["mnist"].size, quick["mnist"].files) == (30, 3)
    assert quick["qm9"].groups is None and quick["qm9"].files == 0
    assert cat.scan()["qm9"].files == 1


def test_broken_metadata_hides_the_dataset_in_both_scans(tmp_path: Path) -> None:
    make(tmp_path, "secret", 1)
    (tmp_path / "secret.toml").write_text("groups = 'staff'\n")  # not a list
    for scan in (Catalog(tmp_path).scan(), Catalog(tmp_path).scan(measure=False)):
        assert scan["secret"].error and not scan["secret"].readable_by(["staff"])
