"""HTTP handlers of the kqi service. They gather inputs, call the pure planners, answer JSON."""

from __future__ import annotations

import hmac
import json
from typing import Any

from jupyterhub.services.auth import HubOAuthenticated, UserNotAllowed
from sqlalchemy import select
from tornado import web

from culler.rules import isoformat

from ..layout import JobRef, plan_notebook
from ..options import Context, OptionsError, requested_job_ids, validate_options
from ..quota import Usage
from .db import Job
from .hubapi import UserInfo


def may_read_job(job: Job, user: UserInfo) -> bool:
    """Users read their own jobs; admins read all."""
    return user.admin or job.owner == user.name


class BaseHandler(web.RequestHandler):
    @property
    def kqi(self):  # the KqiService application
        return self.settings["kqi"]

    def write_json(self, data: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(data, default=str))

    def write_json_text(self, body: str, status: int = 200) -> None:
        """Answer JSON that is already encoded (e.g. by the database)."""
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(body)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        message = self._reason
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, web.HTTPError) and exc.log_message:
            message = exc.log_message % exc.args if exc.args else exc.log_message
        body: dict[str, Any] = {"status": status_code, "message": message}
        if isinstance(exc, OptionsError):
            body["message"] = str(exc)
            body["errors"] = [{"field": f, "message": m} for f, m in exc.errors]
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(body))

    def json_body(self) -> Any:
        try:
            return json.loads(self.request.body or b"{}")
        except json.JSONDecodeError as e:
            raise web.HTTPError(400, "request body is not valid JSON: %s", e) from e

    async def user_info(self, name: str) -> UserInfo:
        info = await self.kqi.hub.user(name)
        if info is None:
            raise web.HTTPError(404, "no such user: %s", name)
        return info

    def context_for(
        self, user: UserInfo, job_ids: set[int], workspace: Usage | None = None
    ) -> Context:
        # names and groups only: walking big datasets' files must not delay each spawn
        datasets = self.kqi.catalog.scan(measure=False)
        readable_jobs = {}
        if job_ids:
            with self.kqi.session() as s:
                for job in s.scalars(select(Job).where(Job.id.in_(job_ids))):
                    if may_read_job(job, user):
                        readable_jobs[job.id] = JobRef(job.id, job.owner, job.purpose)
        return Context(
            profiles=self.kqi.profile_map,
            all_datasets=set(datasets),
            readable_datasets={
                n for n, d in datasets.items() if d.readable_by(user.groups, user.admin)
            },
            readable_jobs=readable_jobs,
            max_datasets=self.kqi.max_datasets,
            max_lifetime_hours=self.kqi.max_lifetime_hours,
            git_schemes=tuple(self.kqi.git_schemes),
            workspace=workspace,
        )


class UserHandler(HubOAuthenticated, BaseHandler):
    """Routes for users: browser cookie (OAuth) or API token."""

    async def prepare(self) -> None:
        """Identify the caller, awaited. HubOAuthenticated.get_current_user asks HubAuth in
        blocking mode, through a thread: a hop that cost a sixth of the service's time per
        request, and the whole service stood still while the hub checked a new token. The
        checks are the same (as in jupyterhub.singleuser's async identity provider)."""
        model = await self.hub_auth.get_user(self, sync=False)
        user = None
        if model:
            try:
                user = self.check_hub_user(model)  # the token's scopes must grant this service
            except UserNotAllowed:
                self.redirect = self._not_allowed  # logged in, but no access: 403, no loop
            else:
                self.hub_auth._persist_url_token_if_set(self)
        self.current_user = user

    def _not_allowed(self, *args: Any, **kwargs: Any) -> None:
        raise web.HTTPError(403, "no access to the kqi service")

    def caller_name(self) -> str:
        """Who calls (a user, not a service), from the token or cookie alone."""
        model = self.current_user
        if not model or model.get("kind", "user") != "user":
            raise web.HTTPError(403, "log in to JupyterHub first (or send a user API token)")
        return model["name"]

    async def caller(self) -> UserInfo:
        """Who calls, with their groups and admin flag as the hub has them now."""
        return await self.user_info(self.caller_name())


class InternalHandler(BaseHandler):
    """Routes for the spawners in the hub, authenticated with the service's own token."""

    def prepare(self) -> None:
        auth = self.request.headers.get("Authorization", "")
        token = auth[len("token ") :] if auth.startswith("token ") else ""
        if not token or not hmac.compare_digest(token, self.kqi.api_token):
            raise web.HTTPError(403, "internal route: service token required")


class DatasetsHandler(UserHandler):
    async def get(self) -> None:
        user = await self.caller()
        datasets = self.kqi.catalog.scan().values()
        if user.admin:  # everything, with groups and metadata errors to fix
            self.write_json([d.to_dict() for d in datasets])
            return
        visible = [d.to_dict() for d in datasets if d.readable_by(user.groups)]
        for d in visible:
            d.pop("groups")
        self.write_json(visible)


class ProfilesHandler(UserHandler):
    async def get(self) -> None:
        await self.caller()
        self.write_json([p.to_dict() for p in self.kqi.profile_map.values()])


class FormDataHandler(InternalHandler):
    """Everything the spawn form shows for one user (not the admin who opens it)."""

    async def get(self) -> None:
        user = await self.user_info(self.get_argument("user"))
        from .culls import CullEvent  # culls imports this module

        ctx = self.context_for(user, set())
        datasets = self.kqi.catalog.scan()
        workspace = await self.kqi.usage.usage(user.name)
        with self.kqi.session() as s:
            jobs = s.scalars(
                select(Job).where(Job.owner == user.name).order_by(Job.id.desc()).limit(200)
            ).all()
            # the spawn page says why the user's last server was stopped automatically
            last_cull = s.scalars(
                select(CullEvent)
                .where(CullEvent.user == user.name)
                .order_by(CullEvent.id.desc())
                .limit(1)
            ).first()
        self.write_json(
            {
                "profiles": [p.to_dict() for p in ctx.profiles.values()],
                "datasets": [datasets[n].to_dict() for n in sorted(ctx.readable_datasets)],
                "jobs": [
                    {"id": j.id, "name": j.name, "purpose": j.purpose, "status": j.status}
                    for j in jobs
                ],
                "max_datasets": ctx.max_datasets,
                "max_lifetime_hours": ctx.max_lifetime_hours,
                "git_schemes": list(ctx.git_schemes),
                "last_cull": last_cull.to_dict() if last_cull else None,
                "workspace": (
                    {"bytes": workspace.bytes, "measured_at": isoformat(workspace.measured_at)}
                    if workspace
                    else None
                ),
            }
        )


class PlanHandler(InternalHandler):
    """Turn a user's options into validated options + layout plan, or refuse with 400."""

    async def post(self) -> None:
        body = self.json_body()
        if not isinstance(body, dict) or not isinstance(body.get("user"), str):
            raise web.HTTPError(400, "body must be {user, options}")
        user = await self.user_info(body["user"])
        options = body.get("options") or {}
        ids = requested_job_ids(options) if isinstance(options, dict) else set()
        ctx = self.context_for(user, ids, await self.kqi.usage.usage(user.name))
        try:
            valid = validate_options(options, ctx)
        except OptionsError as e:
            self.kqi.log.info("refused options of %s: %s", user.name, e)
            self.set_status(400)
            self.write_error(400, exc_info=(type(e), e, None))
            return
        plan = plan_notebook(
            user.name, valid.datasets, valid.parents, valid.inferences, git=valid.git is not None
        )
        self.write_json(
            {
                "options": valid.to_dict(),
                "profile": ctx.profiles[valid.profile].to_dict(),
                "plan": plan.to_dict(),
            }
        )
