"""The jobs list as SQLite encodes and caches it is exactly the API's view of each job, follows
every commit (ours and other processes'), and who-is-who answers stay fresh and shared."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import pytest
from sqlalchemy import insert, select

from hub_ext.service.db import API_FIELDS, Job, jobs_page_json, make_session_factory, migrate
from hub_ext.service.scheduler import job_to_dict

from .platform import Platform


@pytest.fixture
def sessions(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'kqi.sqlite'}"
    migrate(url)
    engine, factory = make_session_factory(url)
    yield factory
    engine.dispose()


def orm_page(factory, owner: str | None, status: str | None, limit: int, offset: int) -> list:
    with factory() as s:
        q = select(Job).order_by(Job.id.desc()).limit(limit).offset(offset)
        if owner:
            q = q.where(Job.owner == owner)
        if status:
            q = q.where(Job.status == status)
        return [job_to_dict(j) for j in s.scalars(q)]


def sql_page(factory, owner: str | None, status: str | None, limit: int, offset: int) -> list:
    with factory() as s:
        return json.loads(jobs_page_json(s, owner, status, limit, offset))


def test_sqlite_page_is_the_api_view_of_each_job(sessions) -> None:
    whole_second = datetime(2025, 3, 4, 5, 6, 7, tzinfo=timezone.utc)
    with sessions() as s:
        s.add_all(
            [
                Job(owner="ann", name="fresh", status="queued"),  # defaults, no times yet
                Job(
                    owner="ann",
                    name='quotes " \\ and\nnewline, ünïcødé ✓',
                    status="succeeded",
                    command="python -c 'print(1)'",
                    datasets=["mnist", "qm9"],
                    parents=[1],
                    env={"A": "1", "B": 'x"y'},
                    exit_code=0,
                    started_at=whole_second,  # isoformat leaves out .000000
                    finished_at=datetime(2025, 3, 4, 5, 6, 8, 123456, tzinfo=timezone.utc),
                    timeout_seconds=3600,
                    notify_url="http://example.org/hook",
                    continued_from=1,
                ),
                Job(owner="ann", status="failed", datasets=None, parents=None, env=None),
                Job(owner="bob", status="failed", exit_code=-9, message="killed"),
            ]
        )
        s.commit()
        # a row as an older schema or another writer may leave it: SQL NULL in JSON columns
        s.execute(insert(Job.__table__).values(owner="ann", created_at=whole_second))
        s.commit()
    for owner, status, limit, offset in [
        ("ann", None, 200, 0),
        ("ann", "failed", 200, 0),
        ("ann", None, 2, 1),
        (None, None, 200, 0),
        ("nobody", None, 200, 0),
    ]:
        want = orm_page(sessions, owner, status, limit, offset)
        assert sql_page(sessions, owner, status, limit, offset) == want
    assert len(orm_page(sessions, "ann", None, 200, 0)) == 4


def test_every_field_of_the_api_is_encoded() -> None:
    job = Job(id=1, owner="ann", created_at=datetime.now(timezone.utc))
    assert list(API_FIELDS) == list(job_to_dict(job))


def test_cached_page_follows_commits_of_this_and_other_processes(sessions, tmp_path: Path) -> None:
    with sessions() as s:
        s.add(Job(owner="ann", name="one", status="succeeded"))
        s.commit()
    assert [j["name"] for j in sql_page(sessions, "ann", None, 200, 0)] == ["one"]
    assert [j["name"] for j in sql_page(sessions, "ann", None, 200, 0)] == ["one"]  # cached
    with sessions() as s:  # the service itself changes a job
        s.get(Job, 1).status = "lost"
        s.commit()
    assert [j["status"] for j in sql_page(sessions, "ann", None, 200, 0)] == ["lost"]
    code = (
        "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]);"
        "c.execute(\"update jobs set name = 'renamed' where id = 1\"); c.commit()"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "kqi.sqlite")], check=True)
    assert [j["name"] for j in sql_page(sessions, "ann", None, 200, 0)] == ["renamed"]


def test_group_change_seen_within_the_cache_time_and_lookups_shared(
    plain_platform: Platform,
) -> None:
    p = plain_platform
    p.add_dataset("fresh-set", {"a.txt": "a"}, groups=["fresh-group"])
    tok = p.add_user("fresh-user")

    def names() -> set[str]:
        r = p.service("api/datasets", tok)
        assert r.status_code == 200, r.text
        return {d["name"] for d in r.json()}

    with ThreadPoolExecutor(10) as pool:  # ten calls at once, one question to the hub
        listed = list(pool.map(lambda _: names(), range(10)))
    assert all("fresh-set" not in n for n in listed)
    lookups = p.log_tail(100_000).count("GET /hub/api/users/fresh-user (kqi@")
    assert 1 <= lookups <= 2  # 2: the cache may have been renewed meanwhile on a slow machine

    r = p.api("POST", "groups/fresh-group")
    assert r.status_code in (201, 409), r.text
    r = p.api("POST", "groups/fresh-group/users", json={"users": ["fresh-user"]})
    assert r.status_code == 200, r.text
    added = time.monotonic()
    while "fresh-set" not in names():  # polling keeps renewing the answer in the background
        assert time.monotonic() - added < 10, "group change not seen after the 5 s cache time"
        time.sleep(0.2)
