"""The studio's HTTP server: Starlette on uvicorn, serving the JSON API (api.py) and the static page (plain
JavaScript, no build step).

Every request passes the Guard (its host, origin, content type and authentication) before a route runs; a POST's
body is read within body.py's limits; job progress streams as server-sent events. Layout problems come back as the
CLI's message with the field it names; any other failure is a 500 whose message names no Python object (the console
gets the traceback).
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from http import HTTPStatus
from importlib import resources
from typing import Any
from urllib.parse import quote

import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from eligen.agent.errors import AgentError
from eligen.pipeline.layout import LayoutError

from . import inputs
from .api import ApiError, Studio, job_json, layout_error_body, plain
from .body import BODY_TIMEOUT, Disconnected, read_json
from .guard import Guard

STATIC = {"/": ("index.html", "text/html; charset=utf-8"), "/studio.js": ("studio.js", "text/javascript"),
          "/studio.css": ("studio.css", "text/css")}
EVENT_INTERVAL = 0.1  # s between looks at a job whose progress streams
ID = "{id:str}"


def _error(status: HTTPStatus, body: dict[str, Any], close: bool = False) -> JSONResponse:
    return JSONResponse(body, int(status), headers={"Connection": "close"} if close else None)


async def _answer(work: Callable[[], Awaitable[Any]]) -> Response:
    """The JSON answer of `work`, or the refusal it raised."""
    try:
        return JSONResponse(await work())
    except ApiError as exc:
        return _error(exc.status, exc.body, exc.close)
    except LayoutError as exc:
        return _error(HTTPStatus.BAD_REQUEST, layout_error_body(exc))
    except AgentError as exc:
        return _error(HTTPStatus.BAD_GATEWAY, {"error": "chat", "message": plain(str(exc))})
    except Disconnected:
        return Response(status_code=400)  # nobody reads it
    except Exception:  # a bug: keep serving, say so without leaking object reprs, tell the console
        traceback.print_exc(file=sys.stderr)
        return _error(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "internal", "message": "the studio failed on "
                                                         "this request; its console says why"})


def _missing(what: str) -> ApiError:
    return ApiError(HTTPStatus.NOT_FOUND, "missing", what)


def _hex_id(request: Request) -> str:
    value = request.path_params["id"]
    if len(value) != 16 or any(c not in "0123456789abcdef" for c in value):
        raise _missing(f"nothing at {request.url.path[:200]}")
    return value


def make_app(studio: Studio, hosts: frozenset[str], auth: str | None = None, body_timeout: float = BODY_TIMEOUT
             ) -> Guard:
    """The studio's ASGI application, refusing requests not addressed to one of `hosts` (and with `auth`, those
    without it); a request body must arrive within `body_timeout` seconds."""
    engine = studio.engine

    def posted(handler: Callable[..., dict[str, Any]], with_client: bool = False
               ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            async def work() -> dict[str, Any]:
                body = await read_json(request, timeout=body_timeout)
                client = request.client.host if request.client else "-"
                return await run_in_threadpool(handler, body, client) if with_client \
                    else await run_in_threadpool(handler, body)
            return await _answer(work)
        return endpoint

    async def static(request: Request) -> Response:
        name, content_type = STATIC[request.url.path]
        return Response(resources.files(__package__).joinpath("static", name).read_bytes(), media_type=content_type)

    async def favicon(_: Request) -> Response:
        return Response(status_code=204)

    async def info(_: Request) -> Response:
        return JSONResponse(studio.info)

    async def job(request: Request) -> Response:
        async def work() -> dict[str, Any]:
            return job_json(engine, studio.job(_hex_id(request)))
        return await _answer(work)

    async def events(request: Request) -> Response:
        """The job's state as server-sent events, one each time it changes, until it has finished."""
        try:
            watched = studio.job(_hex_id(request))
        except ApiError as exc:
            return _error(exc.status, exc.body)

        async def stream() -> AsyncIterator[str]:
            last = None
            while True:
                state = job_json(engine, watched)
                text = json.dumps(state)
                if text != last:
                    yield f"data: {text}\n\n"
                    last = text
                if state["state"] not in ("queued", "running"):
                    return
                await asyncio.sleep(EVENT_INTERVAL)

        return StreamingResponse(stream(), media_type="text/event-stream")

    async def cancel(request: Request) -> Response:
        async def work() -> dict[str, Any]:
            job_id = _hex_id(request)
            await read_json(request, timeout=body_timeout)
            return studio.cancel(job_id)
        return await _answer(work)

    async def image(request: Request) -> Response:
        try:
            source = engine.image(_hex_id(request))
        except (ApiError, LayoutError):
            return _error(HTTPStatus.NOT_FOUND, {"error": "missing", "message": "that image is no longer kept"})
        return Response(await run_in_threadpool(inputs.png_of, source.image), media_type="image/png")

    async def result(request: Request) -> Response:
        suffix = request.path_params["suffix"]
        try:
            found = engine.result(_hex_id(request))
        except ApiError:
            found = None
        if found is None or suffix not in ("png", "yaml", "json") or (suffix == "yaml" and not found.yaml) \
                or (suffix == "json" and not found.data):
            return _error(HTTPStatus.NOT_FOUND, {"error": "missing", "message": "that result is no longer kept"})
        name = f"{found.file_name}.{suffix}"
        headers = {"Content-Disposition": f"attachment; filename*=UTF-8''{quote(name)}"} \
            if "download" in request.query_params else None
        if suffix == "png":
            return Response(found.png, media_type="image/png", headers=headers)
        if suffix == "yaml":
            return Response(found.yaml.encode("utf-8"), media_type="application/yaml; charset=utf-8", headers=headers)
        return JSONResponse(found.data)

    async def not_found(request: Request, _: Exception) -> Response:
        return _error(HTTPStatus.NOT_FOUND, {"error": "missing", "message": f"nothing at {request.url.path[:200]}"})

    async def not_allowed(request: Request, _: Exception) -> Response:
        return _error(HTTPStatus.METHOD_NOT_ALLOWED, {"error": "request", "message": f"{request.method[:20]} is not "
                                                      f"served at {request.url.path[:200]}"})

    routes = [Route(path, static) for path in STATIC] + [
        Route("/favicon.ico", favicon),
        Route("/api/info", info),
        Route(f"/api/jobs/{ID}", job),
        Route(f"/api/jobs/{ID}/events", events),
        Route(f"/api/jobs/{ID}/cancel", cancel, methods=["POST"]),
        Route(f"/api/images/{ID}.png", image),
        Route(f"/api/results/{ID}.{{suffix:str}}", result),
        Route("/api/check", posted(studio.check), methods=["POST"]),
        Route("/api/generate", posted(studio.submit, with_client=True), methods=["POST"]),
        Route("/api/attention", posted(studio.attention, with_client=True), methods=["POST"]),
        Route("/api/image", posted(studio.upload_image), methods=["POST"]),
        Route("/api/restore", posted(studio.restore), methods=["POST"]),
        Route("/api/colours", posted(studio.colours), methods=["POST"]),
        Route("/api/chat", posted(studio.chat_message), methods=["POST"]),
        Route("/api/yaml", posted(studio.yaml), methods=["POST"]),
    ]
    app = Starlette(routes=routes, exception_handlers={404: not_found, 405: not_allowed})
    return Guard(app, hosts, auth)


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to `host:port` (port 0: any free port; an IPv6 address too) and listening."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


def serve(app: Guard, sock: socket.socket) -> None:
    """Serve `app` on the listening `sock` until Ctrl+C (uvicorn: keep-alive connections time out after 5 s; open
    progress streams get 2 s to end on shutdown)."""
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", server_header=False,
                            timeout_keep_alive=5, timeout_graceful_shutdown=2)
    uvicorn.Server(config).run(sockets=[sock])
