"""The git clone at spawn: into the server's scratch folder, git's own words on failure.

In a sandbox the command prefix makes git the user's account inside the server's view; without
one git runs on the host as the hub's account. Either way none of the user's files may steer it
(their ~/.gitconfig could name hooks or an ssh command), nor may an account's own ssh keys open
repositories for them.
"""

from __future__ import annotations

import asyncio
import os

from tornado import web

#: ssh for a clone at spawn: no config, agent or key of the hub's account, never a prompt
GIT_SSH = (
    "ssh -F /dev/null -o BatchMode=yes -o IdentitiesOnly=yes -o IdentityFile=/dev/null"
    " -o IdentityAgent=none -o UserKnownHostsFile=/dev/null -o StrictHostKeyChecking=accept-new"
)


async def clone_repository(
    url: str, ref: str, dest: str, prefix: list[str], timeout: float
) -> None:
    """Clone ``url`` at ``ref`` into ``dest``, run through ``prefix`` (the sandbox, or
    nothing); a failure or a clone over ``timeout`` seconds is a 400 with git's words."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": "/nonexistent",
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_ALLOW_PROTOCOL": url.split(":", 1)[0],
        "GIT_SSH_COMMAND": GIT_SSH,
    }
    steps = [["git", "clone", "--quiet", "--", url, dest]]
    if ref:
        steps.append(["git", "-C", dest, "checkout", "--quiet", ref])
    for argv in steps:
        proc = await asyncio.create_subprocess_exec(
            *prefix,
            *argv,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), timeout)
        except asyncio.TimeoutError:
            proc.kill()  # bubblewrap: --die-with-parent ends git with it
            raise web.HTTPError(400, f"git clone of {url} took over {timeout:g} s") from None
        if proc.returncode:
            tail = out.decode(errors="replace").strip().splitlines()[-3:]
            what = f"checkout of {ref!r}" if argv[3] == "checkout" else "clone"
            raise web.HTTPError(400, f"git {what} of {url} failed: {' / '.join(tail)}")
