"""The kqi service's user-facing routes: datasets and profiles, as each caller may see them."""

from __future__ import annotations

from .platform import Platform


def test_datasets_listed_per_group(platform: Platform) -> None:
    p = platform
    p.add_dataset("open-set", {"a.txt": "12345", "sub/b.txt": "678"})
    p.add_dataset("staff-only", {"x.txt": "x"}, groups=["staff"])
    alice = p.add_user("alice-api", groups=["students"])
    bob = p.add_user("bob-api", groups=["staff"])

    r = p.service("api/datasets", alice)
    assert r.status_code == 200, r.text
    names = {d["name"]: d for d in r.json()}
    assert "staff-only" not in names
    assert names["open-set"]["files"] == 2 and names["open-set"]["size"] == 8
    assert "groups" not in names["open-set"]  # who may read what is for admins

    names = {d["name"] for d in p.service("api/datasets", bob).json()}
    assert {"open-set", "staff-only"} <= names


def test_broken_metadata_hides_dataset(platform: Platform) -> None:
    p = platform
    p.add_dataset("broken-meta", {"a.txt": "a"})
    (p.data_root / "datasets" / "broken-meta.toml").write_text("groups = [unclosed\n")
    p.add_dataset("fine-meta", {"a.txt": "a"}, groups=[])
    user = p.add_user("carl-api")
    names = {d["name"] for d in p.service("api/datasets", user).json()}
    assert "broken-meta" not in names and "fine-meta" not in names  # groups=[]: nobody
    admin = p.add_user("root-like", admin=True)
    listed = {d["name"]: d for d in p.service("api/datasets", admin).json()}
    assert listed["fine-meta"]["groups"] == []  # admins see every dataset, with its groups
    assert "broken-meta.toml" in listed["broken-meta"]["error"]  # ... and what to fix
    r = p.spawn("root-like", {"datasets": ["broken-meta"]})
    assert r.status_code == 400 and "broken-meta" in r.json()["message"]


def test_profiles(platform: Platform) -> None:
    p = platform
    tok = p.add_user("dora-api")
    profiles = p.service("api/profiles", tok).json()
    std = next(x for x in profiles if x["name"] == "standard")
    assert (std["cpu"], std["memory"], std["storage"]) == (2, 8 * 2**30, 100 * 2**30)


def test_no_token_no_data(platform: Platform) -> None:
    p = platform
    import requests

    r = requests.get(f"{p.url}/services/kqi/api/datasets", timeout=10)
    assert r.status_code == 403
    r = requests.post(f"{p.url}/services/kqi/api/internal/plan", json={"user": "x"}, timeout=10)
    assert r.status_code == 403
    tok = p.add_user("eve-api")
    r = p.service("api/internal/form?user=eve-api", tok)
    assert r.status_code == 403  # a user token is not the spawner's
