"""A request's JSON body, read within limits: its size (413), the time it takes to arrive (408: a client that
declares more than it sends is dropped, and holds no worker meanwhile: the read is asynchronous), and its nesting
(400). Nothing about Python objects leaks into the messages."""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

import anyio
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request

from .api import ApiError

MAX_BODY = 48 * 1024 * 1024  # bytes of one request (base64 files inflate by 4/3)
BODY_TIMEOUT = 30.0  # s for a whole request body to arrive
MAX_DEPTH = 32  # nesting of JSON arrays and objects (a layout needs 5)
_TOO_DEEP = object()  # what the parser could not even nest


class Disconnected(Exception):
    """The client went away before its body arrived: nothing to answer."""


async def read_json(request: Request, limit: int = MAX_BODY, timeout: float = BODY_TIMEOUT) -> dict[str, Any]:
    """The body as a JSON object, or an ApiError saying what is wrong with it."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise ApiError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "request", f"expected a request of at most "
                       f"{limit // 2**20} MiB", close=True)
    chunks, size = [], 0
    try:
        with anyio.fail_after(timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise ApiError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "request", f"expected a request of at most "
                                   f"{limit // 2**20} MiB", close=True)
                chunks.append(chunk)
    except TimeoutError:
        raise ApiError(HTTPStatus.REQUEST_TIMEOUT, "request", f"expected the whole request within {timeout:g} s; "
                       f"{size} bytes of {declared or 'an unknown length'} arrived", close=True) from None
    except ClientDisconnect:
        raise Disconnected from None
    return await run_in_threadpool(parse_json, b"".join(chunks))


def parse_json(raw: bytes) -> dict[str, Any]:
    """`raw` as a JSON object nested at most MAX_DEPTH levels deep."""
    try:
        data = json.loads(raw or b"{}")
    except RecursionError:
        data = _TOO_DEEP
    except (ValueError, UnicodeDecodeError) as exc:
        where = f" (line {exc.lineno}, column {exc.colno})" if isinstance(exc, json.JSONDecodeError) else ""
        raise ApiError(HTTPStatus.BAD_REQUEST, "request", f"expected a JSON body{where}") from None
    if data is _TOO_DEEP or _depth(data) > MAX_DEPTH:
        raise ApiError(HTTPStatus.BAD_REQUEST, "request", f"expected JSON nested at most {MAX_DEPTH} levels deep")
    if not isinstance(data, dict):
        raise ApiError(HTTPStatus.BAD_REQUEST, "request", f"expected a JSON object, got {_json_kind(data)}")
    return data


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    return "a number"


def _depth(data: Any) -> int:
    """How deeply arrays and objects nest in `data` (a scalar: 0), without recursion."""
    deepest, stack = 0, [(data, 1)]
    while stack:
        value, depth = stack.pop()
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else None
        if children is None:
            continue
        deepest = max(deepest, depth)
        if depth > MAX_DEPTH:
            return depth
        stack.extend((child, depth + 1) for child in children)
    return deepest
