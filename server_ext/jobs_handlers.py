"""Job routes of the server extension: submit a file of this server, and a thin pass-through of
the kqi service API for the lab extension (which cannot hold the server's token itself).

Both sit behind jupyter-server's own auth (the owner's browser session with XSRF, or a token
allowed on this server) and reach the service with the server's token, i.e. as the user.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any
from urllib.parse import unquote, urlencode

from jupyter_server.base.handlers import APIHandler
from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPRequest, HTTPResponse
from tornado.iostream import StreamClosedError

from .client import ServiceError, error_message, service_base, service_token, submission_body
from .submission import SPEC_FIELDS, SubmissionError, build_submission, max_bytes_from_env

#: Response headers of the service worth passing on (downloads keep their name and type).
PASSED_HEADERS = ("Content-Disposition", "Cache-Control", "Last-Modified")
#: Enough for a log followed until the job ends.
FOLLOW_TIMEOUT = 7 * 24 * 3600.0


class _ClientGone(Exception):
    """The browser went away; raised in the streaming callback to drop the service stream."""


class KqiServiceHandler(APIHandler):
    """Shared: errors as JSON ``{"status", "message"}`` and the call to the service."""

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        message = self._reason
        if isinstance(exc, web.HTTPError) and exc.log_message:
            message = exc.log_message % exc.args if exc.args else exc.log_message
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"status": status_code, "message": message}))

    def service_request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        content_type: str | None = None,
        timeout: float = 600,
        **kw: Any,
    ) -> HTTPRequest:
        try:
            url, token = service_base() + path, service_token()
        except ServiceError as e:
            raise web.HTTPError(503, e.message) from e
        headers = {"Authorization": f"token {token}"}
        if content_type:
            headers["Content-Type"] = content_type
        return HTTPRequest(
            url,
            method=method,
            headers=headers,
            body=body if method == "POST" else None,
            allow_nonstandard_methods=True,
            follow_redirects=False,
            connect_timeout=20,
            request_timeout=timeout,
            **kw,
        )


class SubmitHandler(KqiServiceHandler):
    """POST api/kqi/submit: a file of this server (``path`` under the server's root) becomes a
    job; the answer is the service's (201 + job, or its refusal)."""

    @web.authenticated
    async def post(self) -> None:
        try:
            body = json.loads(self.request.body or b"{}")
        except ValueError as e:
            raise web.HTTPError(400, "request body is not valid JSON: %s", e) from e
        if not isinstance(body, dict) or not isinstance(body.get("path"), str):
            raise web.HTTPError(400, "body must be a JSON object with at least 'path'")
        known = {"path", "mode", "command", "include", "parameters", *SPEC_FIELDS}
        unknown = sorted(set(body) - known)
        if unknown:
            raise web.HTTPError(400, "unknown field(s): %s", ", ".join(unknown))
        root = self.settings.get("server_root_dir") or self.contents_manager.root_dir
        try:
            spec, archive = await asyncio.get_running_loop().run_in_executor(
                None,
                lambda: build_submission(
                    root,
                    body["path"],
                    body.get("mode"),
                    command=body.get("command"),
                    include=body.get("include"),
                    parameters=body.get("parameters"),
                    spec={k: body[k] for k in SPEC_FIELDS if k in body},
                    max_bytes=max_bytes_from_env(),
                ),
            )
        except SubmissionError as e:
            raise web.HTTPError(e.status, "%s", e) from e
        ctype, payload = submission_body(spec, archive)
        req = self.service_request("POST", "api/jobs", payload, ctype)
        resp = await self._fetch(req)
        if resp.code >= 400:
            raise web.HTTPError(resp.code, "%s", error_message(resp.code, resp.body, resp.reason))
        self.log.info("kqi: submitted %s as job %s", body["path"], _job_id(resp.body))
        self.set_status(resp.code)
        self.set_header("Content-Type", "application/json")
        self.finish(resp.body)

    async def _fetch(self, req: HTTPRequest) -> HTTPResponse:
        try:
            resp = await AsyncHTTPClient().fetch(req, raise_error=False)
        except OSError as e:
            raise web.HTTPError(502, "kqi service unreachable: %s", e) from e
        if resp.code == 599:
            raise web.HTTPError(502, "kqi service unreachable: %s", resp.error)
        return resp


def _job_id(body: bytes) -> Any:
    try:
        return json.loads(body).get("id")
    except (ValueError, AttributeError):
        return "?"


class PassThroughHandler(KqiServiceHandler):
    """GET/POST api/kqi/{jobs[/...], datasets, profiles, usage} → the service's api/...,
    streamed back as it comes (``logs?follow=1`` chunk by chunk, downloads without buffering);
    ``usage`` is told against this server's profile (KQI_PROFILE) unless ``profile`` is given."""

    @web.authenticated
    async def get(self, route: str) -> None:
        await self._pass("GET", route)

    @web.authenticated
    async def post(self, route: str) -> None:
        await self._pass("POST", route)

    async def _pass(self, method: str, route: str) -> None:
        # route is the raw (still %-encoded) path; no segment may climb out of api/
        if any(seg in ("", ".", "..") for seg in unquote(route).split("/")):
            raise web.HTTPError(400, "bad path: %s", route)
        query = self.request.query
        if route == "usage" and "profile" not in self.request.arguments:
            # against this server's profile unless another is asked for
            profile = os.environ.get("KQI_PROFILE", "")
            query = "&".join(q for q in (query, profile and urlencode({"profile": profile})) if q)
        path = "api/" + route + ("?" + query if query else "")
        follow = self.get_argument("follow", "") not in ("", "0", "false")
        started = False
        content_type = "application/json"

        def on_header(line: str) -> None:
            nonlocal started, content_type
            line = line.rstrip("\r\n")
            if line.startswith("HTTP/"):
                parts = line.split(" ", 2)
                self.set_status(int(parts[1]), parts[2] if len(parts) > 2 else "Unknown")
            elif ":" in line:
                name, value = line.split(":", 1)
                name, value = name.strip(), value.strip()
                if name.lower() == "content-type":
                    content_type = value
                elif name.lower() in {h.lower() for h in PASSED_HEADERS}:
                    self.set_header(name, value)
            elif not line:
                started = True

        def on_chunk(chunk: bytes) -> None:
            if self.request.connection.stream.closed():
                raise _ClientGone()
            self.set_header("Content-Type", content_type)
            self.write(chunk)
            self.flush()

        if method == "POST":
            body, ctype = self.request.body or b"", self.request.headers.get("Content-Type")
        else:
            body, ctype = None, None
        req = self.service_request(
            method,
            path,
            body,
            ctype,
            timeout=FOLLOW_TIMEOUT if follow else 600,
            header_callback=on_header,
            streaming_callback=on_chunk,
        )
        # a followed log holds its connection until the job ends: give it its own client, so
        # a few open log views never queue the other calls behind tornado's max_clients
        client = AsyncHTTPClient(force_instance=True) if follow else AsyncHTTPClient()
        try:
            resp = await client.fetch(req, raise_error=False)
        except (_ClientGone, StreamClosedError):
            return
        finally:
            if follow:
                client.close()
        if resp.code == 599 and not started:
            raise web.HTTPError(502, "kqi service unreachable: %s", resp.error)
        if not self._finished:
            self.finish(set_content_type=content_type)


def job_routes(base_url: str) -> list[tuple[str, type]]:
    """The routes to add under the server's base URL."""
    prefix = base_url.rstrip("/") + "/api/kqi/"
    return [
        (prefix + "submit", SubmitHandler),
        (prefix + r"((?:jobs|datasets|profiles)(?:/.*)?|usage)", PassThroughHandler),
    ]
