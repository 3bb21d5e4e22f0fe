"""The studio's HTTP server: a JSON API over the engine and the static page (plain JavaScript, no build step).

Standard library only (`http.server`). Every request may carry at most MAX_BODY bytes; with `auth` every request
needs HTTP basic authentication. Layout problems come back as the CLI's message with the field it names.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
import socket
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import quote, urlsplit

from eligen import __version__
from eligen.agent.errors import AgentError
from eligen.agent.layout_yaml import dump_layout
from eligen.pipeline.layout import Edits, Layout, LayoutError

from . import inputs
from .engine import Engine, Job, Result

MAX_BODY = 48 * 1024 * 1024  # bytes of one request (base64 files inflate by 4/3)
MAX_CHAT_CHARS = 4000
STATIC = {"/": ("index.html", "text/html; charset=utf-8"), "/studio.js": ("studio.js", "text/javascript"),
          "/studio.css": ("studio.css", "text/css")}


class BadRequest(Exception):
    """A request the studio refuses, with the status and JSON body to send."""

    def __init__(self, status: HTTPStatus, body: dict[str, Any]) -> None:
        super().__init__(body.get("message", ""))
        self.status, self.body = status, body


def layout_error(exc: LayoutError) -> BadRequest:
    return BadRequest(HTTPStatus.BAD_REQUEST, {"error": "layout", "message": str(exc), "source": exc.source,
                                               "field": exc.field, "expected": exc.expected, "hint": exc.hint})


def _job_json(engine: Engine, job: Job) -> dict[str, Any]:
    return {"id": job.id, "kind": job.kind, "state": job.state, "step": job.step, "steps": job.total_steps,
            "image": job.image_index, "images": len(job.seeds), "seeds": job.seeds, "error": job.error,
            "waiting": engine.position(job) if job.state == "queued" else 0,
            "results": [_result_json(result) for r in job.results if (result := engine.result(r)) is not None]}


def _result_json(result: Result) -> dict[str, Any]:
    return {"id": result.id, "kind": result.kind, "seed": result.seed, "file": result.file_name,
            "attention": result.kind == "generate" and result.layout is not None and bool(result.layout.entities)}


@dataclass
class Studio:
    """What the handler serves: the engine, the server's settings and the optional chat."""

    engine: Engine
    info: dict[str, Any]  # sent to the page once: model, defaults, LoRAs, vocabulary, initial layout
    server_loras: list[str]
    auth: str | None = None  # "user:password"
    chat: Any = None  # a StudioChat when an MLLM was given

    def check(self, body: dict[str, Any]) -> dict[str, Any]:
        """Validate the page's layout or edits; token cells and warnings, or the CLI's error."""
        layout, image = self._layout(body)
        if isinstance(layout, Edits):
            assert image is not None
            _, _, check = self.engine.check_edits(layout, image)
        else:
            _, check = self.engine.check_layout(layout)
        return {"grid": check.grid, "cells": check.cells, "warnings": check.warnings}

    def _layout(self, body: dict[str, Any]) -> tuple[Layout, inputs.SourceImage | None]:
        model, transformer = self.engine.model, self.engine.transformer
        if body.get("mode") == "inpaint":
            image = self.engine.image(body.get("image"))
            return inputs.browser_edits(body.get("layout"), image.image.size, model, self.server_loras,
                                        transformer=transformer), image
        return inputs.browser_layout(body.get("layout"), model, self.server_loras, transformer=transformer), None

    def submit(self, body: dict[str, Any]) -> dict[str, Any]:
        layout, image = self._layout(body)
        if isinstance(layout, Edits):
            assert image is not None
            job = self.engine.submit_inpaint(layout, image)
        else:
            job = self.engine.submit_generate(layout)
        return _job_json(self.engine, job)

    def attention(self, body: dict[str, Any]) -> dict[str, Any]:
        result = self.engine.result(str(body.get("result")))
        if result is None:
            raise BadRequest(HTTPStatus.NOT_FOUND, {"error": "missing", "message": "that image is no longer kept"})
        steps = body.get("steps")
        if steps is not None and not (isinstance(steps, list) and all(type(s) is int for s in steps)):
            raise layout_error(LayoutError("attention maps", "steps", "expected a list of step numbers"))
        job = self.engine.submit_attention(result, steps, str(body.get("block") or "dual:-1"))
        return _job_json(self.engine, job)

    def upload_image(self, body: dict[str, Any]) -> dict[str, Any]:
        upload = inputs.uploads(body.get("files"))[0]
        image = inputs.source_image(upload)
        image_id = self.engine.add_image(image)
        return {"image": image_id, "name": image.name, "size": list(image.image.size)}

    def restore(self, body: dict[str, Any]) -> dict[str, Any]:
        files = inputs.uploads(body.get("files"))
        size = self.engine.image(body.get("image")).image.size if body.get("mode") == "inpaint" else None
        restored = inputs.restore(files, self.engine.model, self.server_loras, size)
        return {"kind": restored.kind, "layout": restored.data, "notes": restored.notes}

    def colours(self, body: dict[str, Any]) -> dict[str, Any]:
        return {"regions": inputs.colour_regions(inputs.uploads(body.get("files"))[0])}

    def chat_message(self, body: dict[str, Any]) -> dict[str, Any]:
        if self.chat is None:
            raise BadRequest(HTTPStatus.NOT_FOUND, {"error": "chat", "message": "start the studio with --mllm-url "
                                                    "to chat"})
        message = body.get("message")
        if not isinstance(message, str) or not message.strip():
            raise BadRequest(HTTPStatus.BAD_REQUEST, {"error": "chat", "message": "say what to draw or change"})
        image = self.engine.image(body.get("image")) if body.get("mode") == "inpaint" else None
        current = body.get("layout") if body.get("mode") != "inpaint" else None
        layout = None
        if isinstance(current, dict) and current.get("entities"):
            layout = inputs.browser_layout(current, self.engine.model, self.server_loras)
        size = inputs.browser_layout({"size": body.get("size"), "prompt": "-"}, self.engine.model, []).size
        return self.chat.reply(message.strip()[:MAX_CHAT_CHARS], layout, image, size)

    def yaml(self, body: dict[str, Any]) -> dict[str, Any]:
        """The page's layout (or edits) as the YAML file `eligen generate` (or `eligen inpaint`) reads."""
        layout, image = self._layout(body)
        if isinstance(layout, Edits):
            assert image is not None
            self.engine.check_edits(layout, image)
        else:
            self.engine.check_layout(layout)
        return {"yaml": dump_layout(layout)}


def make_handler(studio: Studio) -> type[BaseHTTPRequestHandler]:
    """The request handler class bound to one studio."""
    posts = {"/api/check": studio.check, "/api/generate": studio.submit, "/api/attention": studio.attention,
             "/api/image": studio.upload_image, "/api/restore": studio.restore, "/api/colours": studio.colours,
             "/api/chat": studio.chat_message, "/api/yaml": studio.yaml}

    class Handler(BaseHTTPRequestHandler):
        server_version = f"eligen-studio/{__version__}"
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: the studio reports on its own."""

        def _send(self, status: HTTPStatus, body: bytes, content_type: str, headers: dict[str, str] | None = None
                  ) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Content-Security-Policy", "default-src 'self'; img-src 'self' data: blob:")
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: HTTPStatus, data: Any) -> None:
            self._send(status, json.dumps(data).encode("utf-8"), "application/json")

        def _authorised(self) -> bool:
            if studio.auth is None:
                return True
            header = self.headers.get("Authorization", "")
            try:
                given = base64.b64decode(header.removeprefix("Basic "), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                given = ""
            if header.startswith("Basic ") and secrets.compare_digest(given.encode(), studio.auth.encode()):
                return True
            self._send(HTTPStatus.UNAUTHORIZED, b"authentication required", "text/plain",
                       {"WWW-Authenticate": 'Basic realm="eligen studio", charset="UTF-8"'})
            return False

        def _body(self) -> dict[str, Any]:
            try:
                length = int(self.headers.get("Content-Length", "0"))
            except ValueError:
                length = -1
            if length < 0 or length > MAX_BODY:
                self.close_connection = True
                raise BadRequest(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                                 {"error": "upload", "message": f"expected a request of at most "
                                  f"{MAX_BODY // 2**20} MiB"})
            try:
                data = json.loads(self.rfile.read(length) or b"{}")
            except (ValueError, UnicodeDecodeError):
                raise BadRequest(HTTPStatus.BAD_REQUEST, {"error": "request", "message": "expected JSON"}) from None
            if not isinstance(data, dict):
                raise BadRequest(HTTPStatus.BAD_REQUEST, {"error": "request", "message": "expected a JSON object"})
            return data

        def do_GET(self) -> None:
            if not self._authorised():
                return
            path = urlsplit(self.path).path
            try:
                self._get(path)
            except BadRequest as exc:
                self._json(exc.status, exc.body)

        def _get(self, path: str) -> None:
            if path in STATIC:
                name, content_type = STATIC[path]
                self._send(HTTPStatus.OK, resources.files(__package__).joinpath("static", name).read_bytes(),
                           content_type)
                return
            if path == "/favicon.ico":
                self._send(HTTPStatus.NO_CONTENT, b"", "image/x-icon")
                return
            if path == "/api/info":
                self._json(HTTPStatus.OK, studio.info)
                return
            if match := re.fullmatch(r"/api/jobs/([0-9a-f]{16})", path):
                job = studio.engine.job(match[1])
                if job is None:
                    raise BadRequest(HTTPStatus.NOT_FOUND, {"error": "missing", "message": "no such job"})
                self._json(HTTPStatus.OK, _job_json(studio.engine, job))
                return
            if match := re.fullmatch(r"/api/images/([0-9a-f]{16})\.png", path):
                self._send(HTTPStatus.OK, inputs.png_of(studio.engine.image(match[1]).image), "image/png")
                return
            if match := re.fullmatch(r"/api/results/([0-9a-f]{16})(\.png|\.yaml|\.json)", path):
                self._result(match[1], match[2], "download" in (urlsplit(self.path).query or ""))
                return
            raise BadRequest(HTTPStatus.NOT_FOUND, {"error": "missing", "message": f"nothing at {path}"})

        def _result(self, result_id: str, suffix: str, download: bool) -> None:
            result = studio.engine.result(result_id)
            if result is None or (suffix == ".yaml" and not result.yaml) or (suffix == ".json" and not result.data):
                raise BadRequest(HTTPStatus.NOT_FOUND, {"error": "missing", "message": "that result is no longer "
                                                        "kept"})
            name = result.file_name + suffix
            headers = {"Content-Disposition": f"attachment; filename*=UTF-8''{quote(name)}"} if download else {}
            if suffix == ".png":
                self._send(HTTPStatus.OK, result.png, "image/png", headers)
            elif suffix == ".yaml":
                self._send(HTTPStatus.OK, result.yaml.encode("utf-8"), "application/yaml; charset=utf-8", headers)
            else:
                self._json(HTTPStatus.OK, result.data)

        def do_POST(self) -> None:
            if not self._authorised():
                return
            path = urlsplit(self.path).path
            try:
                if match := re.fullmatch(r"/api/jobs/([0-9a-f]{16})/cancel", path):
                    self._body()
                    job = studio.engine.cancel(match[1])
                    if job is None:
                        raise BadRequest(HTTPStatus.NOT_FOUND, {"error": "missing", "message": "no such job"})
                    self._json(HTTPStatus.OK, _job_json(studio.engine, job))
                    return
                handler = posts.get(path)
                if handler is None:
                    raise BadRequest(HTTPStatus.NOT_FOUND, {"error": "missing", "message": f"nothing at {path}"})
                self._json(HTTPStatus.OK, handler(self._body()))
            except BadRequest as exc:
                self._json(exc.status, exc.body)
            except LayoutError as exc:
                error = layout_error(exc)
                self._json(error.status, error.body)
            except AgentError as exc:
                self._json(HTTPStatus.BAD_GATEWAY, {"error": "chat", "message": str(exc)})

    return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


def make_server(studio: Studio, host: str, port: int) -> ThreadingHTTPServer:
    """The server bound to `host:port` (port 0: any free port; an IPv6 address too), not yet serving."""
    return (_Server6 if ":" in host else _Server)((host, port), make_handler(studio))
