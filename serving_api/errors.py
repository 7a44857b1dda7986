"""The API's one error shape and the handlers that turn every failure into it.

Every non-2xx response body is `{"code": ..., "message": ..., "details": ...}`; unexpected exceptions are
logged server-side and answered with a generic 500 so no stack trace or SQL leaks to clients.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)


class ErrorResponse(BaseModel):
    """Body of every error response."""

    code: str = Field(description="Stable machine-readable error code, e.g. `not_found`, `rate_limited`.")
    message: str = Field(description="Human-readable explanation.")
    details: dict[str, Any] | list[Any] | None = Field(
        default=None, description="Structured context, if any."
    )


class ApiError(Exception):
    """An error with an HTTP status that the handlers render as `ErrorResponse`."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: dict[str, Any] | list[Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.headers = headers


_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limited",
    503: "unavailable",
}


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    """The JSON error body (also used for WebSocket close reasons and middleware rejections)."""
    return ErrorResponse(code=code, message=message, details=details).model_dump(mode="json")


def _json_safe_validation_errors(errors: Any) -> list[dict[str, Any]]:
    # Pydantic errors may hold the offending input and exception objects; keep location, message and type.
    return [
        {"loc": [str(p) for p in err.get("loc", ())], "msg": str(err.get("msg", "")), "type": err.get("type")}
        for err in errors
    ]


def install_error_handlers(app: FastAPI) -> None:
    """Render ApiError, HTTP errors, validation errors, database input errors and crashes as ErrorResponse."""

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(error_body(exc.code, exc.message, exc.details), exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _STATUS_CODES.get(exc.status_code, "http_error")
        message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
        return JSONResponse(error_body(code, message), exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        details = _json_safe_validation_errors(exc.errors())
        return JSONResponse(error_body("validation_error", "request parameters are invalid", details), 422)

    @app.exception_handler(psycopg.errors.DataError)
    async def _data_error(_: Request, exc: psycopg.errors.DataError) -> JSONResponse:
        # Values Postgres refuses (out-of-range timestamps, NUL bytes): the caller's input, not our bug.
        log.info("rejected input: %s", exc.__class__.__name__)
        return JSONResponse(
            error_body("invalid_input", "a parameter value is out of range or malformed"), 400
        )

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(error_body("internal_error", "internal server error"), 500)


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries documenting `ErrorResponse` for the given statuses."""
    descriptions = {
        400: "Malformed parameter, cursor or field selection",
        401: "Missing or invalid credentials",
        403: "The caller's role lacks the permission",
        404: "Not found in the caller's organization",
        409: "Conflict with existing data",
        422: "Request validation failed",
        429: "Rate limit exceeded or account locked; see Retry-After",
        500: "Internal error (no details are disclosed)",
        503: "Dependency unavailable (database, table not yet materialized)",
    }
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        entry: dict[str, Any] = {"model": ErrorResponse, "description": descriptions.get(status, "Error")}
        if status == 429:
            entry["headers"] = {
                "Retry-After": {"description": "Seconds to wait", "schema": {"type": "integer"}}
            }
        out[status] = entry
    return out


STANDARD_ERRORS = (400, 401, 403, 422, 429, 500, 503)
