"""Who may talk to the studio: an ASGI middleware in front of every route.

A local web app is reachable by every page the browser opens, so each request must name the studio itself: its
Host must be one of the studio's own names (a DNS-rebinding page sends its own name), a browser's Origin must be that
same host (another site, or another local port, is refused), a browser's `Sec-Fetch-Site` must not be `cross-site`,
and a POST to the API must say its body is JSON (a plain cross-site form cannot). With `auth` every request needs
HTTP basic authentication. Every answer carries the page's Content-Security-Policy and no-store.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
from collections.abc import Iterable
from http import HTTPStatus
from typing import Any
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
SECURITY_HEADERS = [(b"cache-control", b"no-store"), (b"x-content-type-options", b"nosniff"),
                    (b"content-security-policy", b"default-src 'self'; img-src 'self' data: blob:; "
                     b"frame-ancestors 'none'"),
                    (b"referrer-policy", b"no-referrer")]


def _host_name(netloc: str) -> str | None:
    """The host name of a Host header `host[:port]` (an IPv6 address without its brackets), lower case; None when it
    is malformed."""
    try:
        parts = urlsplit(f"//{netloc}")
        _ = parts.port  # a malformed port raises
    except ValueError:
        return None
    return parts.hostname


def allowed_hosts(bind: str, extra: Iterable[str] = ()) -> frozenset[str]:
    """The host names a request may use: the loopback names, the bound address unless it is a wildcard, and
    `extra` (names given with --allow-host)."""
    names = set(LOOPBACK_NAMES)
    if bind not in ("0.0.0.0", "::", ""):
        names.add(bind.strip("[]").lower())
    names.update(name.strip("[]").lower() for name in extra)
    return frozenset(names)


def error_response(status: HTTPStatus, error: str, message: str, headers: list[tuple[bytes, bytes]] | None = None
                   ) -> tuple[dict[str, Any], bytes]:
    body = json.dumps({"error": error, "message": message}).encode()
    start = {"type": "http.response.start", "status": int(status),
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                         *(headers or [])]}
    return start, body


class Guard:
    """Refuses requests that do not come from the studio's own page (or a local client), before any route runs."""

    def __init__(self, app: ASGIApp, hosts: frozenset[str], auth: str | None = None) -> None:
        self.app, self.hosts, self.auth = app, hosts, auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *SECURITY_HEADERS]}
            await send(message)

        refusal = self.refusal(scope)
        if refusal is not None:
            start, body = refusal
            await send_secured(start)
            await send_secured({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send_secured)

    def refusal(self, scope: Scope) -> tuple[dict[str, Any], bytes] | None:
        """The answer refusing this request, or None to serve it."""
        headers: dict[str, str] = {}
        for key, value in scope["headers"]:
            headers.setdefault(key.decode("latin-1").lower(), value.decode("latin-1"))
        host = headers.get("host", "")
        name = _host_name(host)
        if name is None or name not in self.hosts:
            return error_response(HTTPStatus.FORBIDDEN, "host", f"expected a request to the studio's own address "
                                  f"({', '.join(sorted(self.hosts))}), got the host {host[:100]!r}; start the "
                                  f"studio with --allow-host NAME to reach it by another name")
        origin = headers.get("origin")
        if origin is not None:
            parts = urlsplit(origin)
            if parts.scheme not in ("http", "https") or parts.netloc.lower() != host.lower():
                return error_response(HTTPStatus.FORBIDDEN, "origin", f"expected a request from the studio's own "
                                      f"page, this one comes from {origin[:100]!r}")
        if headers.get("sec-fetch-site") == "cross-site":
            return error_response(HTTPStatus.FORBIDDEN, "origin", "expected a request from the studio's own page, "
                                  "this one comes from another site")
        if self.auth is not None and not self._authorised(headers.get("authorization", "")):
            return error_response(HTTPStatus.UNAUTHORIZED, "auth", "authentication required",
                                  [(b"www-authenticate", b'Basic realm="eligen studio", charset="UTF-8"')])
        if scope["method"] == "POST" and scope["path"].startswith("/api/"):
            kind = headers.get("content-type", "").split(";")[0].strip().lower()
            if kind != "application/json":
                return error_response(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "request", "expected a JSON body with "
                                      f"Content-Type: application/json, got {kind[:60] or 'none'!r}")
        elif scope["method"] not in ("GET", "HEAD", "POST"):
            return error_response(HTTPStatus.METHOD_NOT_ALLOWED, "request", f"expected GET or POST, got "
                                  f"{scope['method'][:20]}", [(b"allow", b"GET, HEAD, POST")])
        return None

    def _authorised(self, header: str) -> bool:
        assert self.auth is not None
        if not header.startswith("Basic "):
            return False
        try:
            given = base64.b64decode(header.removeprefix("Basic "), validate=True)
        except (binascii.Error, ValueError):
            return False
        return secrets.compare_digest(given, self.auth.encode())
