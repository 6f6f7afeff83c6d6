"""Cull history: the kqi-culler records each server it stopped, so users and admins can see
which rule stopped it, on what measured values, and when.

``GET api/cull-events``: users their own, admins all (``?user=`` to filter).
``POST api/cull-events``: only the kqi-culler hub service.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Integer, String, Text, select
from sqlalchemy.orm import Mapped, mapped_column
from tornado import web

from culler.rules import RULES, isoformat, parse_time

from .db import Base, utcnow
from .handlers import UserHandler

#: The hub service allowed to record culls (its name in c.JupyterHub.services).
CULLER_SERVICE = "kqi-culler"


class CullEvent(Base):
    """One stopped server. Written once, never changed."""

    __tablename__ = "cull_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user: Mapped[str] = mapped_column(String(255), index=True)
    server: Mapped[str] = mapped_column(String(255), default="")
    rule: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str] = mapped_column(Text, default="")
    measured: Mapped[dict] = mapped_column(JSON, default=dict)
    server_started: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    culled_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "user": self.user,
            "server": self.server,
            "rule": self.rule,
            "reason": self.reason,
            "measured": self.measured,
            "server_started": isoformat(self.server_started),
            "culled_at": isoformat(self.culled_at),
        }


class CullEventsHandler(UserHandler):
    async def get(self) -> None:
        user = await self.caller()
        wanted = self.get_argument("user", None)
        if not user.admin and wanted not in (None, user.name):
            raise web.HTTPError(403, "only admins see other users' cull events")
        if not user.admin:
            wanted = user.name
        try:
            limit = min(max(int(self.get_argument("limit", "100")), 1), 1000)
        except ValueError as e:
            raise web.HTTPError(400, "limit must be a number") from e
        query = select(CullEvent).order_by(CullEvent.id.desc()).limit(limit)
        if wanted is not None:
            query = query.where(CullEvent.user == wanted)
        with self.kqi.session() as s:
            self.write_json([e.to_dict() for e in s.scalars(query)])

    async def post(self) -> None:
        model = self.current_user
        if not model or model.get("kind") != "service" or model.get("name") != CULLER_SERVICE:
            raise web.HTTPError(403, "only the %s service records cull events", CULLER_SERVICE)
        body = self.json_body()
        if not isinstance(body, dict):
            raise web.HTTPError(400, "body must be a JSON object")
        user, rule = body.get("user"), body.get("rule")
        if not isinstance(user, str) or not user or rule not in RULES:
            raise web.HTTPError(400, "user (text) and rule (one of %s) are required", RULES)
        try:
            started = parse_time(body.get("server_started"))
            culled_at = parse_time(body.get("culled_at")) or utcnow()
        except (TypeError, ValueError) as e:
            raise web.HTTPError(400, "bad time: %s", e) from e
        measured = body.get("measured")
        event = CullEvent(
            user=user,
            server=str(body.get("server") or ""),
            rule=rule,
            reason=str(body.get("reason") or ""),
            measured=measured if isinstance(measured, dict) else {},
            server_started=started,
            culled_at=culled_at,
        )
        with self.kqi.session() as s:
            s.add(event)
            s.commit()
            self.kqi.log.info("cull of %s/%s recorded: %s", user, event.server, rule)
            self.write_json(event.to_dict(), status=201)
