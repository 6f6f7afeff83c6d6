"""The profile's CPU and memory for a local server: its processes in a cgroup of their own.

A mixin of KqiLocalSpawner (before LocalProcessSpawner in its bases): ``start`` makes the
cgroup, the Popen preexec moves the server's first process into it (all it starts follows),
``poll`` reports the kernel's out-of-memory kills as they happen, and the end of the server
(``poll`` seeing it gone, or ``stop``) kills what is left in the cgroup and removes it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from tornado import web
from traitlets import HasTraits

from ..cgroups import CgroupSet, KqiCgroups, oom_message

WORKSPACE_NOTE = "The workspace size is not enforced on this machine (it is on Kubernetes)."


class CgroupLimitsMixin(HasTraits):
    #: the server's cgroup: CgroupSet.to_dict() plus "memory" (the limit) and "oom_seen"
    kqi_cgroup: dict[str, Any] | None = None
    _kqi_cgroups: KqiCgroups | None = None

    @property
    def cgroups(self) -> KqiCgroups:
        if self._kqi_cgroups is None:
            self._kqi_cgroups = KqiCgroups(parent=self)
        return self._kqi_cgroups

    @property
    def limits_note(self) -> str:  # shown in the spawn form, logged at each start
        return f"{self.cgroups.note()} {WORKSPACE_NOTE}"

    @property
    def _cgroup_leaf(self) -> str:
        # not the bare server name: a server named "job-3" must not share job 3's cgroup
        return f"server-{self.name or 'default'}"

    async def start(self) -> Any:
        data_root, user = self.data_root, self.user.name
        self.log.info("%s: %s", self._log_name, self.limits_note)
        await asyncio.to_thread(self.cgroups.sweep, data_root, user, "server-")
        memory, cpu = self.mem_limit or 0, self.cpu_limit or 0
        try:
            cgroup = await asyncio.to_thread(
                self.cgroups.make, data_root, user, self._cgroup_leaf, cpu, memory
            )
        except OSError as e:
            raise web.HTTPError(500, f"cannot make the server's cgroup: {e}") from e
        self.kqi_cgroup = (
            None if cgroup is None else {**cgroup.to_dict(), "memory": memory, "oom_seen": 0}
        )
        try:
            return await super().start()
        except BaseException:
            await self._end_cgroup()
            raise

    def make_preexec_fn(self, name: str) -> Callable[[], None]:
        """JupyterHub's preexec (chdir to the home), after joining the server's cgroup."""
        base = super().make_preexec_fn(name)
        if not self.kqi_cgroup:
            return base
        join = CgroupSet.from_dict(self.kqi_cgroup).join_preexec()

        def preexec() -> None:
            join()
            base()

        return preexec

    async def poll(self) -> int | None:
        status = await super().poll()
        if status is None:
            self._report_oom()
        else:
            await self._end_cgroup()
        return status

    async def stop(self, now: bool = False) -> None:
        await super().stop(now=now)
        await self._end_cgroup()

    def _report_oom(self) -> None:
        """Log the kernel's new out-of-memory kills in the server's cgroup."""
        spec = self.kqi_cgroup
        if not spec:
            return
        kills = CgroupSet.from_dict(spec).oom_kills()
        if kills > spec.get("oom_seen", 0):
            new = kills - spec.get("oom_seen", 0)
            spec["oom_seen"] = kills
            self.log.warning("%s: %s", self._log_name, oom_message(new, spec.get("memory", 0)))

    async def _end_cgroup(self) -> None:
        """The server has ended: what is still in its cgroup goes, then the cgroup."""
        if not self.kqi_cgroup:
            return
        self._report_oom()
        cgroup = CgroupSet.from_dict(self.kqi_cgroup)
        if await asyncio.to_thread(cgroup.remove, True):
            self.kqi_cgroup = None
        else:
            self.log.warning("%s: processes left in %s", self._log_name, cgroup.paths)

    def get_state(self) -> dict:
        state = super().get_state()
        if self.kqi_cgroup:
            state["kqi_cgroup"] = self.kqi_cgroup
        return state

    def load_state(self, state: dict) -> None:
        super().load_state(state)
        self.kqi_cgroup = state.get("kqi_cgroup") or None
