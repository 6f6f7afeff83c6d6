"""What every kqi spawner shares: the form, option parsing, and asking the kqi service (the one
authority on who may bind what) for a validated layout plan before anything is created."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from traitlets import HasTraits, Unicode, default

from ..layout import LayoutPlan
from ..options import Profile, ValidOptions, options_from_form
from .form import render_form


class KqiSpawnerMixin(HasTraits):
    kqi_service_url = Unicode(
        "http://127.0.0.1:10101/services/kqi/",
        help="Base URL of the kqi service as the hub reaches it (not through the proxy).",
    ).tag(config=True)
    kqi_api_token = Unicode(
        help="The kqi service's API token; authenticates the spawner to its internal routes.",
    ).tag(config=True)

    #: Set by apply_user_options for the spawn in progress.
    kqi_options: ValidOptions | None = None
    kqi_profile: Profile | None = None
    kqi_plan: LayoutPlan | None = None

    #: Said in the form and the log when the spawner cannot enforce the profile's limits.
    limits_note = ""

    #: KQI_SERVER_ID of the running server (kept in the hub's state across hub restarts)
    kqi_server_id = ""

    def get_state(self) -> dict:
        state = super().get_state()
        if self.kqi_server_id:
            state["kqi_server_id"] = self.kqi_server_id
        return state

    def load_state(self, state: dict) -> None:
        super().load_state(state)
        self.kqi_server_id = state.get("kqi_server_id", "")

    def clear_state(self) -> None:
        super().clear_state()
        self.kqi_server_id = ""

    async def _kqi_call(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        req = HTTPRequest(
            self.kqi_service_url.rstrip("/") + "/" + path,
            method=method,
            headers={"Authorization": f"token {self.kqi_api_token}"},
            body=None if body is None else json.dumps(body),
            request_timeout=30,
        )
        try:
            resp = await AsyncHTTPClient().fetch(req)
        except HTTPClientError as e:
            reply: dict[str, Any] = {}
            if e.response is not None and e.response.body:
                try:
                    reply = json.loads(e.response.body)
                except ValueError:
                    pass
            if e.code == 400:
                raise web.HTTPError(400, reply.get("message") or "invalid options") from e
            raise web.HTTPError(
                502, f"kqi service error {e.code}: {reply.get('message', e.message)}"
            ) from e
        except OSError as e:
            raise web.HTTPError(503, f"kqi service unreachable: {e}") from e
        return json.loads(resp.body)

    @default("server_token_scopes")
    def _kqi_server_token_scopes(self) -> list[str]:
        # the hub's default ("server" role) plus the kqi service, so the server extension and
        # the `kqi` command reach it as the user
        return ["users:activity!user", "access:servers!server", "access:services!service=kqi"]

    @default("options_form")
    def _kqi_options_form(self):
        return KqiSpawnerMixin._render_options_form

    @staticmethod
    async def _render_options_form(spawner: KqiSpawnerMixin) -> str:
        # The form is for spawner.user, which is the target user when an admin spawns for
        # someone else: their datasets and jobs, not the admin's.
        data = await spawner._kqi_call(
            "GET", "api/internal/form?user=" + quote(spawner.user.name, safe="")
        )
        return render_form(
            data,
            previous=spawner.user_options or {},
            limits_note=spawner.limits_note,
            for_user=spawner.user.name,
        )

    @default("options_from_form")
    def _kqi_options_from_form(self):
        return KqiSpawnerMixin._parse_form

    @staticmethod
    def _parse_form(form_data: dict[str, list[str]]) -> dict[str, Any]:
        return options_from_form(form_data)

    @default("apply_user_options")
    def _kqi_apply_user_options(self):
        return KqiSpawnerMixin._apply_options

    @staticmethod
    async def _apply_options(spawner: KqiSpawnerMixin, user_options: dict[str, Any]) -> None:
        """Validate through the service; a refusal is a 400 naming the field, before any
        folder, clone or process is created."""
        spawner.kqi_options = spawner.kqi_plan = spawner.kqi_profile = None
        spawner.refuse_unisolated()
        reply = await spawner._kqi_call(
            "POST",
            "api/internal/plan",
            {"user": spawner.user.name, "server": spawner.name, "options": user_options or {}},
        )
        spawner.kqi_options = ValidOptions.from_dict(reply["options"])
        spawner.kqi_profile = Profile(**reply["profile"])
        spawner.kqi_plan = LayoutPlan.from_dict(reply["plan"])
        spawner.apply_profile(spawner.kqi_profile)

    def refuse_unisolated(self) -> None:
        """403 for a user who may not start a server on this platform (none here)."""

    def apply_profile(self, profile: Profile) -> None:
        """Set the spawner's resource traits from the profile (subclasses add more)."""
        self.cpu_limit = profile.cpu
        self.mem_limit = profile.memory

    def kqi_env(self, kqi_root: str) -> dict[str, str]:
        """KQI_* variables plus the user's own; never a hub or service token."""
        assert self.kqi_plan is not None and self.kqi_options is not None
        env = dict(self.kqi_options.env)
        env.update(self.kqi_plan.env)
        env["KQI_ROOT"] = kqi_root
        env["KQI_LAYOUT"] = json.dumps(self.kqi_plan.to_dict())
        env["KQI_PROFILE"] = self.kqi_options.profile
        env["KQI_SERVICE_URL"] = self.kqi_service_url
        if self.kqi_options.lifetime_hours is not None:
            env["KQI_LIFETIME_HOURS"] = f"{self.kqi_options.lifetime_hours:g}"
        return env
