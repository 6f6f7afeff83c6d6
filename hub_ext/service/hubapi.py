"""Who is who: the service asks the hub (with its own token) for a user's groups and admin flag.

The user model that comes with an OAuth token depends on that token's scopes; asking the hub
directly makes the service's view of groups the same for browser, token and internal calls.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from urllib.parse import quote

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest


@dataclass(frozen=True)
class UserInfo:
    name: str
    admin: bool
    groups: tuple[str, ...]


class HubClient:
    """The hub's users API, with a short cache: every API call needs the caller's groups, and
    the hub is the shared bottleneck."""

    def __init__(self, api_url: str, token: str, ttl: float = 5.0):
        self.api_url = api_url.rstrip("/")
        self.token = token
        self.ttl = ttl
        self._cache: dict[str, tuple[float, UserInfo | None]] = {}

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
        now = time.monotonic()
        hit = self._cache.get(name)
        if hit is not None and now - hit[0] < self.ttl:
            return hit[1]
        model = await self.request("GET", f"users/{quote(name, safe='')}")
        info = None
        if model is not None:
            info = UserInfo(
                model["name"], bool(model.get("admin")), tuple(model.get("groups") or ())
            )
        self._cache[name] = (now, info)
        return info
