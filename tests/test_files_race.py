"""The job files route against a job that swaps its output file for a link to a secret while it
is downloaded (the check-then-open race of issue 13: the token came back 9 times in 4,044), and
a continue that copies links as links, never what they point at."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time

import requests

from .jobs import add_job
from .platform import Platform

#: swaps out/f between a fresh regular file and a link to the secret, atomically (rename), so
#: out/f always exists; prints "ready" once both states have been through once
SWAPPER = """
import os, sys
out, secret = sys.argv[1], sys.argv[2]
link, plain, f = (os.path.join(out, n) for n in (".link", ".plain", "f"))
n = 0
while True:
    os.symlink(secret, link)
    os.replace(link, f)
    with open(plain, "w") as fh:
        fh.write("plain")
    os.replace(plain, f)
    n += 1
    if n == 1:
        print("ready", flush=True)
"""

DOWNLOADS = 2000


def test_a_link_swapped_in_is_never_followed(platform: Platform) -> None:
    p = platform
    tok = p.add_user("racer")
    job_id = add_job(p, "racer", files={"f": "plain"})
    out = p.data_root / "users/racer/jobs" / str(job_id) / "output"
    secret_bytes = secrets.token_hex(16).encode()
    secret = p.data_root / f"race-secret-{job_id}"
    secret.write_bytes(secret_bytes)
    os.chmod(secret, 0o600)
    swapper = subprocess.Popen(
        [sys.executable, "-c", SWAPPER, str(out), str(secret)], stdout=subprocess.PIPE, text=True
    )
    statuses: dict[int, int] = {}
    try:
        assert swapper.stdout.readline().strip() == "ready"
        url = f"{p.url}/services/kqi/api/jobs/{job_id}/files/f"
        started = time.monotonic()
        with requests.Session() as s:
            s.headers["Authorization"] = f"token {tok}"
            for _ in range(DOWNLOADS):
                r = s.get(url, timeout=60)
                statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                assert secret_bytes not in r.content, f"the secret was served ({r.status_code})"
                if r.status_code == 200:
                    assert r.content == b"plain"
                else:
                    assert r.status_code == 404, r.text
                    assert r.json()["message"] == f"no output file f in job {job_id}"
        took = time.monotonic() - started
        assert swapper.poll() is None, "the swapper stopped before the downloads ended"
    finally:
        swapper.kill()
        swapper.wait()
    # both states were hit, so the downloads did race the swaps
    assert statuses.get(200, 0) > 0 and statuses.get(404, 0) > 0, statuses
    print(f"\n{DOWNLOADS} downloads in {took:.1f} s: {statuses}")
    listing = p.service(f"api/jobs/{job_id}/files", tok).json()
    assert all(e["size"] == len("plain") for e in listing if e["path"] == "f"), listing


def test_continue_copies_links_as_links(platform: Platform) -> None:
    """The code (and output) of a finished job is copied by root for its continuation: a link
    to a secret stays a link, the secret's bytes are nowhere in the copy, and it is not served."""
    p = platform
    tok = p.add_user("racer")
    job_id = add_job(p, "racer", files={"result.txt": "step 1"})
    old = p.data_root / "users/racer/jobs" / str(job_id)
    secret_bytes = secrets.token_hex(16).encode()
    secret = p.data_root / f"copy-secret-{job_id}"
    secret.write_bytes(secret_bytes)
    (old / "code").mkdir()
    (old / "code" / "run.py").write_text("print('hi')\n")
    for folder in ("code", "output"):
        (old / folder / "token").symlink_to(secret)
    r = p.service(
        f"api/jobs/{job_id}/continue",
        tok,
        method="POST",
        json={"copy_output": True, "command": "true"},
    )
    assert r.status_code == 201, r.text
    new = p.data_root / "users/racer/jobs" / str(r.json()["id"])
    for folder in ("code", "output"):
        assert os.readlink(new / folder / "token") == str(secret)
    assert (new / "code" / "run.py").read_text() == "print('hi')\n"
    assert (new / "output" / "result.txt").read_text() == "step 1"
    copied = [q.read_bytes() for q in new.rglob("*") if q.is_file() and not q.is_symlink()]
    assert copied and not any(secret_bytes in b for b in copied)
    assert p.service(f"api/jobs/{r.json()['id']}/files/token", tok).status_code == 404
