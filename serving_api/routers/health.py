"""Liveness, readiness (Postgres), Prometheus metrics and the access-token JWKS; no authentication."""

from __future__ import annotations

import asyncio
import json

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from serving_api.deps import api_state
from serving_api.errors import ApiError, error_responses
from serving_api.models import Ok, Ready

router = APIRouter(tags=["health"])
well_known = APIRouter(tags=["auth"])


@well_known.get(
    "/.well-known/jwks.json",
    summary="Public keys verifying access tokens (RS256, by `kid`), for other services",
    response_class=Response,
    responses={
        200: {"content": {"application/jwk-set+json": {"schema": {"type": "object"}}}, "description": "JWK set"},
        **error_responses(500),
    },
)
async def jwks(request: Request) -> Response:
    body = json.dumps(api_state(request).token_keys.jwks())
    return Response(body, media_type="application/jwk-set+json", headers={"Cache-Control": "public, max-age=300"})


@router.get("/healthz", response_model=Ok, summary="Process is alive", responses=error_responses(500))
async def healthz() -> Ok:
    return Ok()


@router.get("/readyz", response_model=Ready, summary="Postgres answers", responses=error_responses(500, 503))
async def readyz(request: Request) -> Ready:
    state = api_state(request)
    try:
        assert state.pool is not None
        async with asyncio.timeout(3), state.pool.connection() as conn:
            await conn.execute("SELECT 1")
    except Exception as exc:
        raise ApiError(503, "database_unavailable", "Postgres is not reachable") from exc
    return Ready(listener=bool(state.hub and state.hub.connected))


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}, **error_responses(500)},
)
async def metrics(request: Request) -> Response:
    state = api_state(request)
    assert state.metrics is not None
    state.metrics.ws_clients.set(state.hub.client_count if state.hub else 0)
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
