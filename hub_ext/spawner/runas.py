"""Who a local server runs as: the isolation setting, the user's Unix account, their folders.

A mixin of KqiLocalSpawner (first in its bases): the decision (hub_ext/isolation.py) says
whether users are kept apart; where they are, each start makes (or finds) the user's account
and hands them their home, and deleting the hub user locks it. Where they cannot be, only
admins may start servers and the spawn page says why.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from jupyterhub.utils import maybe_future
from tornado import web
from traitlets import CaselessStrEnum, HasTraits, Unicode
from traitlets.config import Config

from ..accounts import Account, AccountError, KqiAccounts, prepare_tree
from ..isolation import Decision, IsolationUnavailable, decide_here
from ..layout import user_dir


class RunAsMixin(HasTraits):
    isolation = CaselessStrEnum(
        ["auto", "bubblewrap", "none"],
        "auto",
        help="""How users are kept apart. 'bubblewrap': each user's servers and jobs run as a
        Unix account of their own (made on first use, see KqiAccounts) in a bubblewrap sandbox
        with /kqi mounted read-only where it should be; needs root, bwrap, setpriv and useradd,
        and kqi-hub refuses to start without them. 'none': every server runs as the hub's
        account with a per-server folder of links as KQI_ROOT (nothing isolated, read-only
        inputs not enforced; the log and every spawn page say so). 'auto': 'bubblewrap' where
        it can be had; elsewhere only admins may start servers and jobs until 'none' is set.""",
    ).tag(config=True)
    bwrap_path = Unicode("bwrap", help="The bubblewrap executable.").tag(config=True)
    setpriv_path = Unicode(
        "setpriv",
        help="util-linux setpriv: inside the sandbox it becomes the user's account for good.",
    ).tag(config=True)

    _kqi_accounts: KqiAccounts | None = None

    @classmethod
    def configured(cls, config: Config, name: str) -> str:
        """This spawner's setting ``name`` in a hub's config, or the trait's own default: for
        the hub and the kqi service, which read it without making a spawner."""
        for klass in cls.mro():
            section = config[klass.__name__] if klass.__name__ in config else {}
            if name in section:
                return str(section[name])
        return str(cls.class_traits()[name].default_value)

    @classmethod
    def isolation_for(cls, config: Config) -> Decision:
        """The isolation decision a hub with ``config`` makes (IsolationUnavailable if an
        explicit 'bubblewrap' cannot be had)."""
        names = ("isolation", "bwrap_path", "setpriv_path")
        return decide_here(*(cls.configured(config, n) for n in names))

    @property
    def isolation_decision(self) -> Decision:
        """Whether users are kept apart here (an account each, in a sandbox)."""
        try:
            return decide_here(self.isolation, self.bwrap_path, self.setpriv_path)
        except IsolationUnavailable as e:  # kqi-hub refuses to start in this case
            raise web.HTTPError(500, str(e)) from e

    def use_bubblewrap(self) -> bool:
        return self.isolation_decision.mode == "bubblewrap"

    @property
    def limits_note(self) -> str:  # the spawn page and the log at each start
        return f"{self.isolation_decision.note()} {super().limits_note}".strip()

    def refuse_unisolated(self) -> None:
        """Where users cannot be kept apart, only admins start servers (403 for the others)."""
        decision = self.isolation_decision
        if decision.admins_only and not self.user.admin:
            raise web.HTTPError(403, decision.refusal(self.user.name))

    @property
    def accounts(self) -> KqiAccounts:
        if self._kqi_accounts is None:
            self._kqi_accounts = KqiAccounts(parent=self, data_root=self.data_root)
        return self._kqi_accounts

    async def _account(self) -> Account:
        """The user's Unix account, made on their first start."""
        name = self.user.name
        try:
            return await asyncio.to_thread(self.accounts.ensure, name)
        except (AccountError, ValueError) as e:
            raise web.HTTPError(500, f"cannot set up the Unix account of {name}: {e}") from e

    def _prepare_folders(self, account: Account | None) -> None:
        """The user's folder is the platform's (root, 0700: jobs' logs are written there);
        the home is the account's, 0700 (an older home made as root is handed over)."""
        user = Path(self.data_root, user_dir(self.user.name))
        user.mkdir(parents=True, exist_ok=True, mode=0o700)
        (user / "jobs").mkdir(exist_ok=True, mode=0o755)
        self.server_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        home = Path(self.home_dir)
        if account is None:
            home.mkdir(parents=True, exist_ok=True)
        else:
            os.chmod(user, 0o700)
            prepare_tree(home, account)

    async def delete_forever(self) -> None:
        """The hub user is deleted (JupyterHub removes the default server only then): their
        account is locked, never removed, so its uid stays taken and their files owned."""
        await maybe_future(super().delete_forever())
        if self.name or not self.isolation_decision.isolated:
            return
        if await asyncio.to_thread(self.accounts.lock, self.user.name):
            self.log.info("%s: Unix account locked (hub user deleted)", self._log_name)
