"""The request guard: body-size limits and authentication before any request body byte is read.

Why an ASGI middleware rather than route dependencies: FastAPI reads and parses a route's body before it
resolves the route's dependencies, so an anonymous client could make every worker buffer and parse
megabytes of JSON just to be told 401. Here, a request that carries a body to an authenticated endpoint
(every write under the API prefix except the `/auth/*` credential exchanges) must first prove its
credentials; a declared `Content-Length` above the endpoint's limit is refused with 413 at once, and a body
without one (chunked) is counted as it streams and cut off at the limit. Uploads have their own, larger
limit (`OPTIBID_UPLOAD_MAX_BYTES`, enforced again by the upload route as it spools to disk).
"""

from __future__ import annotations

import json

from fastapi.security.utils import get_authorization_scheme_param
from pydantic import BaseModel
from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving_api.deps import cached_principal, principal_from_credentials
from serving_api.errors import ApiError, error_body
from serving_api.state import ApiState

_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Multipart framing (boundaries, part headers) on top of an uploaded file.
_MULTIPART_OVERHEAD = 64 * 1024


class BodyTooLarge(HTTPException):
    """Raised from `receive` when a streamed body passes its limit (FastAPI re-raises HTTPExceptions)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"body: the request body exceeds the limit of {limit} bytes")
        self.limit = limit


class RequestGuard:
    """ASGI middleware; `state` is the app's ApiState, `prefix` the API's path prefix."""

    def __init__(self, app: ASGIApp, state: ApiState, prefix: str) -> None:
        self.app = app
        self.state = state
        self.prefix = prefix
        self.upload_path = f"{prefix}/uploads"
        self.auth_prefix = f"{prefix}/auth/"
        self.saml_prefix = f"{prefix}/auth/saml/"

    def limit_for(self, method: str, path: str) -> int:
        if method == "POST" and path == self.upload_path:
            return self.state.settings.upload_max_bytes + _MULTIPART_OVERHEAD
        if method == "POST" and path.startswith(self.saml_prefix) and path.endswith("/acs"):
            return self.state.options.max_saml_response_bytes
        if path.startswith(self.auth_prefix):
            return self.state.options.max_auth_body_bytes
        return self.state.options.max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in _BODY_METHODS:
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        limit = self.limit_for(scope["method"], path)
        token = api_key = None
        declared: int | None = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await _reject(send, 400, "bad_request", "content-length: not an integer", None)
                    return
            elif name == b"x-api-key" and api_key is None:
                api_key = value.decode("latin-1")
            elif name == b"authorization" and token is None:
                scheme, credentials = get_authorization_scheme_param(value.decode("latin-1"))
                if scheme.lower() == "bearer" and credentials:
                    token = credentials
        authenticated = path.startswith(self.prefix) and not path.startswith(self.auth_prefix)
        if authenticated and cached_principal(self.state, token, api_key) is None:
            try:
                await principal_from_credentials(self.state, token, api_key)
            except ApiError as exc:
                await _reject(send, exc.status, exc.code, exc.message, exc.details, exc.headers)
                return
        if declared is not None and declared > limit:
            await _reject(
                send,
                413,
                "payload_too_large",
                f"body: the request body exceeds the limit of {limit} bytes",
                {"field": "body", "limit_bytes": limit, "content_length": declared},
            )
            return
        received = 0

        async def capped_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, capped_receive, tracking_send)
        except BodyTooLarge as exc:
            # Read outside a route (no exception handler saw it): answer here if nothing was sent yet.
            if started:
                raise
            await _reject(
                send, 413, "payload_too_large", exc.detail, {"field": "body", "limit_bytes": exc.limit}
            )


async def _reject(
    send: Send,
    status: int,
    code: str,
    message: str,
    details: object,
    headers: dict[str, str] | None = None,
) -> None:
    body = json.dumps(error_body(code, message, details)).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    # The unread body is left to the server, which discards it (and may close the connection).
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


_declared_params: dict[int, frozenset[str]] = {}


def _route_query_params(route: object) -> frozenset[str]:
    """Names of every query parameter a route declares, its dependencies' and query-parameter models' included."""
    key = id(route)
    names = _declared_params.get(key)
    if names is None:
        found: set[str] = set()
        pending = [getattr(route, "dependant", None)]
        while pending:
            dependant = pending.pop()
            if dependant is None:
                continue
            for param in dependant.query_params:
                model = getattr(param.field_info, "annotation", None)
                if isinstance(model, type) and issubclass(model, BaseModel):
                    found.update(f.alias or n for n, f in model.model_fields.items())
                else:
                    found.add(param.alias)
            pending.extend(dependant.dependencies)
        names = _declared_params[key] = frozenset(found)
    return names


async def known_query_params(connection: HTTPConnection) -> None:
    """Router dependency: 400 for a query parameter the route does not declare, or too many of them.

    Why: cached responses are keyed by the request target, so junk parameters (`?x=1`, `?x=2`, ...) would each
    make a new cache entry and evict real ones; refusing them also tells a client about a misspelt name.
    """
    if connection.scope["type"] != "http":
        return
    params = connection.query_params
    if not params:
        return
    state: ApiState = connection.app.state.api
    items = params.multi_items()
    if len(items) > state.options.max_query_params:
        raise ApiError(
            400,
            "too_many_parameters",
            f"query: {len(items)} parameters; at most {state.options.max_query_params}",
            {"field": "query", "limit": state.options.max_query_params},
        )
    declared = _route_query_params(connection.scope.get("route"))
    unknown = sorted({name for name, _ in items if name not in declared})
    if unknown:
        raise ApiError(
            400,
            "unknown_parameter",
            f"{unknown[0]}: not a parameter of this endpoint",
            {"field": unknown[0], "unknown": unknown[:10], "allowed": sorted(declared)},
        )
