"""What every HTTP front of ours shares (the anchor's server, a cluster's gateway): open access on a
loopback dev server, CORS, errors as JSON with precise statuses, bounded request bodies, the page."""

from __future__ import annotations

import asyncio
import logging
from importlib import resources
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from streams.auth import AuthError
from streams.settings import WebRtcSettings, is_loopback

log = logging.getLogger(__name__)


class RequestError(ValueError):
    def __init__(
        self, status: int, message: str, *, retry_after_s: int | None = None, close: bool = False
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after_s = retry_after_s
        self.close = close  # the rest of the stream is unread: answer, then close the connection


def open_to(settings: WebRtcSettings, request: web.Request) -> bool:
    """Open (token-free) access for this request: a loopback dev server, asked for by a page that is
    itself on a loopback name (or one the operator listed). A page on any other name that resolves to
    127.0.0.1 (DNS rebinding) gets no open access: it would need a token."""
    if not settings.open_access:
        return False
    names = [request.host]
    if (origin := request.headers.get("Origin")) is not None:
        names.append(urlsplit(origin).netloc)
    return all(_local_name(settings, name) for name in names)


def _local_name(settings: WebRtcSettings, netloc: str) -> bool:
    host = urlsplit(f"//{netloc}").hostname or ""
    return is_loopback(host) or host in settings.open_hosts


def cors(settings: WebRtcSettings) -> Middleware:
    """Only the page's own origin and ``cors_origins`` may call; their answers say so."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if (
            origin is not None
            and origin != f"{request.scheme}://{request.host}"
            and origin not in settings.cors_origins
        ):
            return web.json_response({"error": f"origin {origin!r} is not allowed"}, status=403)
        response = await handler(request)
        if origin is not None:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Vary"] = "Origin"
            response.headers["Access-Control-Expose-Headers"] = "Location"
        return response

    return middleware


def errors(settings: WebRtcSettings) -> Middleware:
    """Refusals as JSON ``{"error": ...}`` with their status (and ``Retry-After``); anything unexpected
    is logged and answered 500 without details."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except RequestError as exc:
            headers = None if exc.retry_after_s is None else {"Retry-After": str(exc.retry_after_s)}
            response = web.json_response({"error": str(exc)}, status=exc.status, headers=headers)
            if exc.close:  # aiohttp would otherwise linger to read the rest of the body
                await response.prepare(request)
                await response.write_eof()
                if request.transport is not None:
                    request.transport.close()
            return response
        except AuthError as exc:
            headers = {"WWW-Authenticate": 'Bearer realm="anchor"'} if exc.status == 401 else None
            return web.json_response({"error": str(exc)}, status=exc.status, headers=headers)
        except web.HTTPRequestEntityTooLarge:
            limit = settings.max_body_bytes
            return web.json_response({"error": f"request body exceeds {limit} bytes"}, status=413)
        except web.HTTPException:
            raise
        except Exception:
            log.exception("%s %s failed", request.method, request.path)
            return web.json_response({"error": "internal error"}, status=500)

    return middleware


async def read_body(request: web.Request, settings: WebRtcSettings, *, draining: bool) -> bytes:
    """The body of a POST, after the shutdown and size checks, within ``body_timeout_s``."""
    if draining:
        raise RequestError(503, "the server is shutting down", retry_after_s=5)
    if request.content_length is not None and request.content_length > settings.max_body_bytes:
        raise RequestError(413, f"request body exceeds {settings.max_body_bytes} bytes")
    try:
        async with asyncio.timeout(settings.body_timeout_s):
            return await request.read()
    except TimeoutError:
        limit = settings.body_timeout_s
        raise RequestError(408, f"request body not received within {limit:g} s", close=True) from None


async def preflight(request: web.Request) -> web.StreamResponse:
    return web.Response(
        status=204,
        headers={
            "Access-Control-Allow-Methods": "POST, DELETE, OPTIONS",
            "Access-Control-Allow-Headers": "Authorization, Content-Type",
            "Access-Control-Max-Age": "600",
        },
    )


async def viewer_page(request: web.Request) -> web.StreamResponse:
    html = resources.files("streams").joinpath("viewer/index.html").read_text(encoding="utf-8")
    return web.Response(text=html, content_type="text/html")
