"""Who is calling, may they, and the ONE place that scopes a request's database access to their organization.

`scoped(permission)` is the dependency every data endpoint uses: it authenticates (bearer JWT or
`X-API-Key`), applies the per-credential rate limit, checks the role's permission, and hands out an
`OrgSession` whose connection runs in a transaction that did `SET LOCAL ROLE optibid_api` and
`SET LOCAL optibid.org_id` (`serving_api.org_scope.set_org_scope`). Postgres row-level security therefore
filters every query, whatever filter the client sent. The transaction is opened lazily, so cached reads never
touch the pool.

What belongs here: authentication, rate limiting, permissions and the request's `OrgSession`. What does not:
the SQL that binds a connection to the role and organization (`serving_api/org_scope.py`, shared with the
listener and the exports) and the app's state (`serving_api/state.py`).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from psycopg import AsyncConnection
from psycopg.rows import dict_row

from infra.signals import AUTH_CHANNEL
from serving_api import security
from serving_api.errors import ApiError
from serving_api.org_scope import set_org_scope
from serving_api.security import Permission, Role
from serving_api.state import ApiState

MAX_REMEMBERED_TOKENS = 10_000  # verified access tokens kept per process (cleared when full)

_bearer = HTTPBearer(auto_error=False, description="Access token from POST /api/v1/auth/token")
_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="API key created by an admin")


@dataclass(frozen=True)
class Principal:
    kind: str  # "user" or "api_key"
    subject_id: str
    org_id: str
    role: Role
    rate_limit_per_minute: int
    family_id: str | None = None

    @property
    def actor(self) -> str:
        return f"{self.kind}:{self.subject_id}"

    def can(self, permission: Permission) -> bool:
        return permission in security.ROLE_PERMISSIONS[self.role]


def api_state(request: Request) -> ApiState:
    return request.app.state.api


async def _family_revoked(state: ApiState, family_id: str) -> bool:
    if family_id in state.revoked_families:
        return True
    if state.hub is not None and state.hub.connected:
        return False  # the listener keeps revoked_families current
    assert state.pool is not None
    async with state.pool.connection() as conn:
        row = await (await conn.execute("SELECT api_auth.family_revoked(%s)", (family_id,))).fetchone()
    return bool(row and row[0])


def _cached_api_key_row(
    state: ApiState, prefix: str, now: float
) -> tuple[float, dict[str, Any] | None] | None:
    cached = state.api_keys.get(prefix)
    if cached is None or now - cached[0] > state.options.api_key_cache_seconds:
        return None
    return cached


async def _api_key_row(state: ApiState, key: str) -> dict[str, Any] | None:
    prefix = security.api_key_prefix_of(key)
    if prefix is None:
        return None
    now = time.monotonic()
    cached = _cached_api_key_row(state, prefix, now)
    if cached is None:
        assert state.pool is not None
        async with state.pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            # The organization is what this lookup finds out, so it runs through a SECURITY DEFINER function
            # that reads only this. A read, so a flood of made-up prefixes costs an index probe each.
            await cur.execute(
                "SELECT key_id, org_id, role, key_hash, rate_limit_per_minute FROM api_auth.api_key_by_prefix(%s)",
                (prefix,),
            )
            row = await cur.fetchone()
            if row is not None and _matching_key_row(row, key) is not None:
                # Once per cache period per key (hits are served from memory in between).
                await conn.execute("SELECT api_auth.touch_api_key(%s, %s)", (row["key_id"], row["key_hash"]))
        _remember_api_key_row(state, prefix, (now, row))
        cached = (now, row)
    return _matching_key_row(cached[1], key)


def _remember_api_key_row(state: ApiState, prefix: str, entry: tuple[float, dict[str, Any] | None]) -> None:
    """Known and unknown prefixes share one LRU, so made-up keys can neither grow memory nor evict for long."""
    keys = state.api_keys
    keys[prefix] = entry
    keys.move_to_end(prefix)
    while len(keys) > state.options.api_key_cache_max_entries:
        keys.popitem(last=False)


def _matching_key_row(row: dict[str, Any] | None, key: str) -> dict[str, Any] | None:
    if row is None or not security.digests_match(row["key_hash"], security.token_digest(key)):
        return None
    return row


def _key_principal(row: dict[str, Any]) -> Principal:
    return Principal("api_key", row["key_id"], row["org_id"], Role(row["role"]), row["rate_limit_per_minute"])


def _user_principal(state: ApiState, claims: security.AccessClaims) -> Principal:
    return Principal(
        "user",
        claims.user_id,
        claims.org_id,
        claims.role,
        state.options.user_rate_limit_per_minute,
        claims.family_id,
    )


def access_claims(state: ApiState, token: str) -> security.AccessClaims | None:
    """The claims of a valid access token; verified signatures are remembered until the token expires."""
    claims = state.access_claims.get(token)
    if claims is None:
        claims = state.token_keys.claims_of(token)
        if claims is None:
            return None
        if len(state.access_claims) >= MAX_REMEMBERED_TOKENS:
            state.access_claims.clear()
        state.access_claims[token] = claims
    # PyJWT rejects a token once now >= exp; a remembered one must expire at the same moment.
    if time.time() >= claims.expires_at:
        state.access_claims.pop(token, None)
        return None
    return claims


def session_touch_due(state: ApiState, family_id: str) -> bool:
    last = state.session_touched.get(family_id)
    return last is None or time.monotonic() - last >= state.options.session_touch_seconds


async def touch_session(state: ApiState, family_id: str) -> None:
    """Record the session's use; a session past its absolute lifetime or idle timeout is revoked (401).

    Runs at most every `session_touch_seconds` per session and process, so the idle timeout is enforced to
    within that interval, and a session's "last use" is at most that old.
    """
    assert state.pool is not None
    async with state.pool.connection() as conn:
        row = await (await conn.execute("SELECT api_auth.touch_session(%s, NULL)", (family_id,))).fetchone()
        status = row[0] if row else "unknown"
        if status in ("expired", "idle"):
            await conn.execute("SELECT api_auth.revoke_family(%s)", (family_id,))
            await conn.execute("SELECT api_auth.audit_session(%s, %s, '{}'::jsonb)", (family_id, f"session.{status}"))
            await conn.execute("SELECT pg_notify(%s, %s)", (AUTH_CHANNEL, json.dumps({"family_id": family_id})))
            await conn.commit()
    if status in ("expired", "idle", "revoked"):
        state.revoked_families.add(family_id)
        state.session_touched.pop(family_id, None)
        raise ApiError(
            401,
            "session_expired" if status != "revoked" else "token_revoked",
            {
                "expired": "the session reached its absolute lifetime; log in again",
                "idle": "the session was idle for longer than the organization allows; log in again",
                "revoked": "the session of this token was revoked",
            }[status],
            headers={"WWW-Authenticate": "Bearer"},
        )
    if len(state.session_touched) >= MAX_REMEMBERED_TOKENS:
        state.session_touched.clear()
    state.session_touched[family_id] = time.monotonic()


def cached_principal(state: ApiState, token: str | None, api_key: str | None) -> Principal | None:
    """The caller when memory alone proves the credentials valid (the fast path), else None.

    None means "ask `principal_from_credentials`": invalid credentials, an API key not looked up in the
    last `api_key_cache_seconds`, or a token whose revocation status needs the database. A caller that
    serves a user without `principal_from_credentials` checks `session_touch_due` / `touch_session` itself.
    """
    if api_key:
        prefix = security.api_key_prefix_of(api_key)
        cached = _cached_api_key_row(state, prefix, time.monotonic()) if prefix else None
        row = _matching_key_row(cached[1], api_key) if cached else None
        return _key_principal(row) if row else None
    if token:
        claims = access_claims(state, token)
        if claims is None or claims.family_id in state.revoked_families:
            return None
        if state.hub is None or not state.hub.connected:
            return None  # revocations may have been missed: `_family_revoked` asks the database
        return _user_principal(state, claims)
    return None


async def authenticate(
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    api_key: Annotated[str | None, Depends(_api_key)],
) -> Principal:
    """The caller, from a bearer access token or an API key; 401 otherwise, 429 over the rate limit."""
    state = api_state(request)
    principal = await principal_from_credentials(state, bearer.credentials if bearer else None, api_key)
    request.state.principal = principal
    wait = state.limiter.retry_after(principal.actor, principal.rate_limit_per_minute)
    if wait is not None:
        raise ApiError(
            429,
            "rate_limited",
            "rate limit exceeded",
            {"retry_after": wait},
            headers={"Retry-After": str(wait)},
        )
    return principal


async def principal_from_credentials(state: ApiState, token: str | None, api_key: str | None) -> Principal:
    """Resolve a bearer token or API key (also used by the WebSocket endpoint); ApiError 401 if invalid."""
    if api_key:
        row = await _api_key_row(state, api_key)
        if row is None:
            raise ApiError(401, "invalid_api_key", "API key is invalid, expired or revoked")
        return _key_principal(row)
    if token:
        claims = access_claims(state, token)
        if claims is None:
            raise ApiError(
                401,
                "invalid_token",
                "access token is invalid or expired",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if await _family_revoked(state, claims.family_id):
            raise ApiError(
                401,
                "token_revoked",
                "the session of this token was revoked",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if session_touch_due(state, claims.family_id):
            await touch_session(state, claims.family_id)
        return _user_principal(state, claims)
    raise ApiError(
        401,
        "not_authenticated",
        "send a bearer access token or an X-API-Key header",
        headers={"WWW-Authenticate": "Bearer"},
    )


class OrgSession:
    """A lazily opened, organization-scoped transaction for one request."""

    def __init__(self, state: ApiState, principal: Principal, permission: Permission) -> None:
        self.state = state
        self.principal = principal
        self.permission = permission  # what the route required (cached responses remember it)
        self._pool_cm: Any = None
        self._tx_cm: Any = None
        self._conn: AsyncConnection | None = None

    async def conn(self) -> AsyncConnection:
        if self._conn is None:
            assert self.state.pool is not None
            self._pool_cm = self.state.pool.connection()
            conn = await self._pool_cm.__aenter__()
            self._tx_cm = conn.transaction()
            await self._tx_cm.__aenter__()
            self._conn = conn
            await set_org_scope(conn, self.principal.org_id)
        return self._conn

    async def close(self, exc: BaseException | None) -> None:
        if self._conn is None:
            return
        exc_info = (type(exc), exc, exc.__traceback__) if exc else (None, None, None)
        try:
            await self._tx_cm.__aexit__(*exc_info)
        finally:
            await self._pool_cm.__aexit__(*exc_info)
            self._conn = None


def scoped(permission: Permission) -> Callable[..., AsyncIterator[OrgSession]]:
    """Dependency: an OrgSession for a caller holding `permission` (403 otherwise)."""

    async def dependency(
        request: Request, principal: Annotated[Principal, Depends(authenticate)]
    ) -> AsyncIterator[OrgSession]:
        if not principal.can(permission):
            raise ApiError(403, "forbidden", f"role '{principal.role}' lacks permission '{permission}'")
        session = OrgSession(api_state(request), principal, permission)
        try:
            yield session
        except BaseException as exc:
            await session.close(exc)
            raise
        else:
            await session.close(None)

    dependency.__name__ = f"scoped_{permission.name}"
    return dependency
