"""Who is who: the service asks the hub (with its own token) for a user's groups and admin flag.

The user model that comes with an OAuth token depends on that token's scopes; asking the hub
directly makes the service's view of groups the same for browser, token and internal calls.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from urllib.parse import quote

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UserInfo:
    name: str
    admin: bool
    groups: tuple[str, ...]


class HubClient:
    """The hub's users API, with a short cache: every API call needs the caller's groups, and
    the hub is the shared bottleneck.

    An answer is used for at most ``ttl`` seconds. A user who keeps calling never waits for the
    hub: in the last part of that time (``refresh_after``) the answer is still used while one
    request in the background renews it; and concurrent calls for one user share one request.
    """

    def __init__(self, api_url: str, token: str, ttl: float = 5.0, refresh_after: float = 0.7):
        self.api_url = api_url.rstrip("/")
        self.token = token
        self.ttl = ttl
        self.refresh_after = refresh_after * ttl
        self._cache: dict[str, tuple[float, UserInfo | None]] = {}
        self._pending: dict[str, asyncio.Future[UserInfo | None]] = {}

    async def request(self, method: str, path: str, body: object = None) -> dict | None:
        req = HTTPRequest(
            f"{self.api_url}/{path.lstrip('/')}",
            method=method,
            headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"},
            body=None if body is None else json.dumps(body),
            allow_nonstandard_methods=True,
            request_timeout=30,
        )
        try:
            resp = await AsyncHTTPClient().fetch(req)
        except HTTPClientError as e:
            if e.code == 404:
                return None
            raise
        return json.loads(resp.body) if resp.body else {}

    async def user(self, name: str) -> UserInfo | None:
        hit = self._cache.get(name)
        if hit is not None:
            age = time.monotonic() - hit[0]
            if age < self.ttl:
                if age >= self.refresh_after:
                    self._fetch(name)
                return hit[1]
        # shielded: a caller that goes away does not cancel the others' request
        return await asyncio.shield(self._fetch(name))

    def _fetch(self, name: str) -> asyncio.Future[UserInfo | None]:
        """The one request for ``name`` in flight (started if there is none)."""
        fut = self._pending.get(name)
        if fut is None:
            fut = self._pending[name] = asyncio.ensure_future(self._load(name))
            fut.add_done_callback(lambda f: self._done(name, f))
        return fut

    def _done(self, name: str, fut: asyncio.Future) -> None:
        self._pending.pop(name, None)
        if not fut.cancelled() and fut.exception() is not None:  # also marks it retrieved
            log.warning("asking the hub about %s failed: %s", name, fut.exception())

    async def _load(self, name: str) -> UserInfo | None:
        asked = time.monotonic()  # the answer's age counts from the question
        model = await self.request("GET", f"users/{quote(name, safe='')}")
        info = None
        if model is not None:
            info = UserInfo(
                model["name"], bool(model.get("admin")), tuple(model.get("groups") or ())
            )
        self._cache[name] = (asked, info)
        return info
