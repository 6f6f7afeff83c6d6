"""Authenticator for a small team on one machine: NativeAuthenticator (sign up, admin
approves) plus an admin account whose first password is generated and printed once."""

from __future__ import annotations

import os
import secrets
import sys

from nativeauthenticator import NativeAuthenticator
from nativeauthenticator.handlers import LoginHandler as NativeLoginHandler
from traitlets import Unicode


class KqiAuthenticator(NativeAuthenticator):
    first_admin = Unicode(
        "admin",
        help="Admin account created on first start with a generated password, printed once.",
    ).tag(config=True)
    password_file = Unicode(
        "",
        help="If set, the generated first admin password is also written here (mode 0600); "
        "used by tests and automation.",
    ).tag(config=True)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        if self.first_admin and not self.user_exists(self.first_admin):
            self._create_first_admin()

    def get_handlers(self, app):
        return [
            (path, KqiLoginHandler if path == r"/login" else handler)
            for path, handler in super().get_handlers(app)
        ]

    def _create_first_admin(self) -> None:
        password = secrets.token_urlsafe(12)
        if self.create_user(self.first_admin, password) is None:
            self.log.error("could not create the first admin %r", self.first_admin)
            return
        info = self.get_user(self.first_admin)
        info.is_authorized = True
        self.db.commit()
        if self.password_file:
            fd = os.open(self.password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(password + "\n")
        bar = "=" * 64
        print(
            f"\n{bar}\n kqi-hub: first start. Admin account created:\n"
            f"   user:     {self.first_admin}\n   password: {password}\n"
            " It is shown only now; change it at /hub/change-password.\n"
            f" Others sign up at /hub/signup; approve them at /hub/authorize.\n{bar}\n",
            file=sys.stderr,
            flush=True,
        )


class KqiLoginHandler(NativeLoginHandler):
    """NativeAuthenticator 1.3's login POST uses ``self.statsd``, gone in JupyterHub 6;
    this is the same flow without it."""

    async def post(self):
        data = {arg: self.get_argument(arg, strip=False) for arg in self.request.arguments}
        user = await self.login_user(data)
        if user:
            self._jupyterhub_user = user
            self.redirect(self.get_next_url(user))
            return
        error = "Invalid username or password."
        info = self.authenticator.get_user(data.get("username", ""))
        if info is not None and info.is_valid_password(data.get("password", "")):
            if not info.is_authorized:
                error = f"User {data['username']} has not been approved by an administrator yet."
        self.finish(await self._render(login_error=error, username=data.get("username")))
