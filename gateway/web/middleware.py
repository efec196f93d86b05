"""Middlewares: errors to responses, the web session, and security headers."""

from __future__ import annotations

import errno
import functools
import logging
import secrets
from urllib.parse import urlsplit

from aiohttp import web, web_response
from aiohttp.typedefs import Handler

from ..auth.sessions import COOKIE_NAME, PRE_COOKIE_NAME
from ..config import Settings
from ..errors import WS_INTERNAL, BadRequest, GatewayError, Unauthorized
from ..keys import SETTINGS, SIGNIN
from .common import PRE_TOKEN, USER, WEB_SESSION, load_user, render

log = logging.getLogger("deskgate.web")

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
       "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action {form_action}; "
       "object-src 'none'")


@functools.cache
def csp_for(settings: Settings) -> str:
    """The page policy. Forms post only to us, but browsers apply form-action to redirects too:
    signing out redirects to the identity provider's end-session endpoint, so its origin is let
    through as well."""
    return _csp(tuple(p.issuer for p in settings.oidc))


@functools.lru_cache(maxsize=16)
def _csp(issuers: tuple[str, ...]) -> str:
    """One string shared by every response (each live websocket keeps its response headers)."""
    origins = sorted({f"{u.scheme}://{u.netloc}" for u in map(urlsplit, issuers)})
    return CSP.format(form_action=" ".join(["'self'", *origins]))


# What the Server header says: the product, never a version of it, of Python or of aiohttp.
SERVER = "Deskgate"


def hide_server_version() -> None:
    """Make ``SERVER`` the default Server header of every response in this process.

    Pages get it from ``security_headers`` too, but aiohttp answers some requests before any
    application sees them (a malformed request line, a header too large, a bad method); those
    responses would carry aiohttp's default, ``Python/3.x aiohttp/3.y``. aiohttp has no setting
    for it (aio-libs/aiohttp#3607) and reads the module's default at every response.
    """
    setattr(web_response, "SERVER_SOFTWARE", SERVER)  # noqa: B010 (not exported for mypy)


def wants_json(request: web.Request) -> bool:
    return ("application/json" in request.headers.get("Accept", "")
            or request.path.startswith("/api/"))


# The response a handler has already started (a websocket, an event stream). An error after that
# point must not become an error page: its bytes would land inside the open stream.
PREPARED: web.RequestKey[web.StreamResponse] = web.RequestKey("prepared", web.StreamResponse)


async def remember_prepared(request: web.Request, response: web.StreamResponse) -> None:
    request[PREPARED] = response


@web.middleware
async def started_responses(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outermost: once a handler has started its response, whatever the handler or the error
    middleware below make of a later failure, the started response is what is returned (a
    websocket closed with 1011 and a reason); nothing else is written on its connection."""
    response: web.StreamResponse | None = None
    try:
        response = await handler(request)
    except Exception as exc:
        if PREPARED not in request:
            raise
        log.error("error after %s %s started its response", request.method, request.path,
                  exc_info=exc)
    started = request.get(PREPARED)
    if started is None or response is started:
        assert response is not None
        return response
    if isinstance(started, web.WebSocketResponse) and not started.closed:
        await started.close(code=WS_INTERNAL, message=b"internal error in the gateway")
    return started


# What escapes a handler when the request itself was bad and no input reader caught it (they all
# should: gateway/web/inputs.py): a 400, and a warning with the traceback to find the reader
# that let it through. Numbers too large for the store, nesting too deep, text that cannot be
# decoded or encoded.
_BAD_INPUT = (OverflowError, RecursionError, UnicodeError)


def _error_response(request: web.Request, exc: GatewayError) -> web.StreamResponse:
    if wants_json(request):
        body: dict[str, str | bool] = {"error": exc.reason}
        if exc.asks_for_credentials:
            body["credentials"] = "required"
        if exc.session_id is not None:
            body["session_id"] = exc.session_id
        if exc.final and (exc.http_status >= 500 or exc.http_status in (408, 429)):
            body["reconnect"] = False  # a status the client would otherwise retry
        return web.json_response(body, status=exc.http_status)
    if isinstance(exc, Unauthorized):
        raise web.HTTPSeeOther("/login") from None
    return render(request, "error.html", http_status=exc.http_status, status=exc.http_status,
                  message=exc.reason)


def _not_found(request: web.Request) -> web.StreamResponse:
    if wants_json(request):
        return web.json_response({"error": "not found"}, status=404)
    return render(request, "error.html", http_status=404, status=404,
                  message="There is nothing at this address.")


def _client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


def _static(request: web.Request) -> bool:
    route = request.match_info.route
    return isinstance(route.resource, web.StaticResource)


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status == 404 and not wants_json(request):
            return _not_found(request)
        raise
    except GatewayError as exc:
        return _error_response(request, exc)
    except _BAD_INPUT as exc:
        log.warning("bad input on %s %s answered 400: %s", request.method, request.path,
                    type(exc).__name__, exc_info=True)
        return _error_response(request, BadRequest(
            "the request holds a value this gateway cannot take"))
    except ConnectionError as exc:
        if not _client_gone(request):
            return _unhandled(request)
        # The client went away in the middle of its request (its body, most often): nobody
        # is left to answer, and nothing went wrong here.
        log.info("%s %s: the client went away (%s)", request.method, request.path,
                 type(exc).__name__)
        return web.Response(status=400, text="the request was cut short")
    except OSError as exc:
        if _static(request) and exc.errno in (errno.ENAMETOOLONG, errno.ELOOP, errno.EINVAL):
            return _not_found(request)  # a file name no file can have
        return _unhandled(request)
    except Exception:
        return _unhandled(request)


def _unhandled(request: web.Request) -> web.StreamResponse:
    """A real bug: logged with its traceback (called inside the ``except``), a plain 500 page."""
    log.exception("unhandled error on %s %s", request.method, request.path)
    if wants_json(request):
        return web.json_response({"error": "internal error"}, status=500)
    return render(request, "error.html", http_status=500, status=500,
                  message="Something went wrong on our side. Try again in a moment.")


@web.middleware
async def web_session(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Load the server-side session behind the cookie; give anonymous visitors a CSRF token."""
    if request.path.startswith(("/static/", "/novnc/")) or request.path == "/healthz":
        return await handler(request)
    services = request.config_dict[SIGNIN]
    # A kiosk's heartbeat is the device's doing, not the person's: it does not keep them in.
    ws = await services.sessions.load(request.cookies.get(COOKIE_NAME),
                                      touch=request.path != "/kiosk/heartbeat")
    if ws is not None:
        user = await load_user(request, ws)
        if user is None:  # disabled or deleted since the session started
            await services.sessions.destroy(ws)
        else:
            request[WEB_SESSION] = ws
            request[USER] = user
    new_pre = None
    if WEB_SESSION not in request:
        pre = request.cookies.get(PRE_COOKIE_NAME)
        if not pre or len(pre) > 100:
            pre = new_pre = secrets.token_urlsafe(24)
        request[PRE_TOKEN] = pre
    response = await handler(request)
    if new_pre is not None:
        settings = request.config_dict[SETTINGS]
        response.set_cookie(PRE_COOKIE_NAME, new_pre, httponly=True, samesite="Lax",
                            secure=settings.cookie_secure, path="/")
    return response


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    headers = response.headers
    headers["Server"] = SERVER
    headers.setdefault("Content-Security-Policy", csp_for(request.config_dict[SETTINGS]))
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("Referrer-Policy", "same-origin")
    headers.setdefault("X-Frame-Options", "DENY")
    headers.setdefault("Cross-Origin-Opener-Policy", "same-origin")
    if request.config_dict[SETTINGS].cookie_secure:
        headers.setdefault("Strict-Transport-Security", "max-age=31536000")
    if not request.path.startswith(("/static/", "/novnc/")):
        headers.setdefault("Cache-Control", "no-store")
