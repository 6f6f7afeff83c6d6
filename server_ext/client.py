"""Talking to the kqi service from inside a user server, as the user.

The server's own token (``JUPYTERHUB_API_TOKEN``) carries the user's identity and may reach the
service; ``KQI_SERVICE_URL`` (set by the spawner) says where it is. The CLI uses the blocking
``ServiceClient``; the server's handlers use the same URL, token and multipart encoding.
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode


class ServiceError(Exception):
    """The service refused (``status`` < 500) or could not be reached / failed (``status`` 0 or
    5xx); ``message`` is the service's own words."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def service_base() -> str:
    base = os.environ.get("KQI_SERVICE_URL", "")
    if not base:
        raise ServiceError(0, "not inside a kqi server: KQI_SERVICE_URL is not set")
    return base if base.endswith("/") else base + "/"


def service_token() -> str:
    token = os.environ.get("JUPYTERHUB_API_TOKEN", "")
    if not token:
        raise ServiceError(0, "not inside a kqi server: JUPYTERHUB_API_TOKEN is not set")
    return token


def encode_multipart(
    fields: dict[str, str], files: dict[str, tuple[str, bytes, str]]
) -> tuple[str, bytes]:
    """(content type, body) of a multipart/form-data request; files are name: (filename, data,
    content type)."""
    boundary = "kqi-" + secrets.token_hex(16)
    out: list[bytes] = []
    for name, value in fields.items():
        out.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n'
            f"Content-Type: application/json; charset=utf-8\r\n\r\n".encode()
            + value.encode()
            + b"\r\n"
        )
    for name, (filename, data, ctype) in files.items():
        out.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
            f'filename="{filename}"\r\nContent-Type: {ctype}\r\n\r\n'.encode()
            + data
            + b"\r\n"
        )
    out.append(f"--{boundary}--\r\n".encode())
    return f"multipart/form-data; boundary={boundary}", b"".join(out)


def submission_body(spec: dict[str, Any], archive: bytes) -> tuple[str, bytes]:
    """The body of ``POST api/jobs``: the spec as JSON and the code as a tar.gz."""
    return encode_multipart(
        {"spec": json.dumps(spec)}, {"code": ("code.tar.gz", archive, "application/gzip")}
    )


def error_message(status: int, body: bytes, reason: str = "") -> str:
    """The service's message from its JSON error body, else the body's text."""
    text = body.decode("utf-8", "replace").strip()
    try:
        data = json.loads(text)
        if isinstance(data, dict) and data.get("message"):
            return str(data["message"])
    except ValueError:
        pass
    return text[:500] or reason or f"HTTP {status}"


class ServiceClient:
    """Blocking client of the kqi service REST API (for the ``kqi`` command)."""

    def __init__(self, base: str | None = None, token: str | None = None, timeout: float = 60):
        self.base = base or service_base()
        self.token = token or service_token()
        self.timeout = timeout

    def _open(
        self,
        method: str,
        path: str,
        query: dict[str, Any] | None = None,
        body: bytes | None = None,
        content_type: str | None = None,
        timeout: float | None = None,
    ) -> Any:
        url = self.base + "api/" + path
        if query:
            url += "?" + urlencode(query)
        req = urllib.request.Request(url, data=body, method=method)
        req.add_header("Authorization", f"token {self.token}")
        if content_type:
            req.add_header("Content-Type", content_type)
        try:
            return urllib.request.urlopen(req, timeout=timeout or self.timeout)
        except urllib.error.HTTPError as e:
            raise ServiceError(e.code, error_message(e.code, e.read(), e.reason)) from e
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise ServiceError(0, f"cannot reach the kqi service at {self.base}: {reason}") from e

    def call(self, method: str, path: str, data: Any = None, **query: Any) -> Any:
        """JSON in, JSON out."""
        body = None if data is None else json.dumps(data).encode()
        ctype = None if data is None else "application/json"
        q = {k: v for k, v in query.items() if v is not None}
        with self._open(method, path, q, body, ctype) as resp:
            return json.loads(resp.read() or b"null")

    def submit(self, spec: dict[str, Any], archive: bytes) -> dict[str, Any]:
        ctype, body = submission_body(spec, archive)
        with self._open("POST", "jobs", body=body, content_type=ctype, timeout=600) as resp:
            return json.loads(resp.read())

    def stream_logs(self, job_id: int, follow: bool) -> Iterator[bytes]:
        """The job's log, chunk by chunk as the service sends it; with ``follow`` until the job
        ends."""
        query = {"follow": "1"} if follow else None
        timeout = 24 * 3600 if follow else self.timeout
        with self._open("GET", f"jobs/{job_id}/logs", query, timeout=timeout) as resp:
            while True:
                try:
                    chunk = resp.read1(65536)
                except (OSError, http.client.HTTPException) as e:
                    raise ServiceError(0, f"log stream broke: {e}") from e
                if not chunk:
                    return
                yield chunk
