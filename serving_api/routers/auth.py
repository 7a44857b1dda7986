"""OAuth2 password login, refresh-token rotation with reuse detection, and revocation.

Login and refresh run before the caller's organization is known, so their reads and writes go through the
narrow SECURITY DEFINER functions of `api_auth` (infra/sql/120_api_hardening.sql); the API's connections
themselves are the RLS-bound API role and never the tables' owner.

Refresh tokens rotate on every use; presenting an already-rotated token means it was
copied, so the whole family (and its access tokens, via `fam`) is revoked.
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.security import OAuth2PasswordRequestForm
from psycopg import AsyncConnection
from psycopg.rows import dict_row

from infra.signals import AUTH_CHANNEL
from serving_api import security
from serving_api.deps import api_state
from serving_api.errors import ApiError, error_responses
from serving_api.models import Ok, RefreshRequest, TokenResponse
from serving_api.state import ApiOptions, ApiState

router = APIRouter(prefix="/auth", tags=["auth"], responses=error_responses(400, 401, 422, 429, 500, 503))


def _client_ip(request: Request) -> str:
    """The client's address: the peer's, or X-Forwarded-For's when the peer is a trusted proxy."""
    state = api_state(request)
    peer = request.client.host if request.client else "unknown"
    return security.client_address(
        peer, request.headers.getlist("x-forwarded-for"), _trusted(tuple(state.settings.trusted_proxies))
    )


@functools.cache
def _trusted(cidrs: tuple[str, ...]) -> tuple[security.IPNetwork, ...]:
    return security.parse_networks(cidrs)


_email_locks: dict[str, tuple[asyncio.Lock, list[int]]] = {}
# Attempts on one throttled e-mail that may wait in line; beyond it the caller is told when to retry.
_MAX_WAITING_PER_EMAIL = 8
_verify_slots: dict[int, asyncio.Semaphore] = {}


@functools.cache
def _verify_pool(threads: int, nice: int) -> ThreadPoolExecutor:
    """Threads that verify passwords at a lowered CPU priority (`nice`), so a login flood's argon2 work
    yields the cores to the requests of signed-in clients instead of sharing them evenly."""
    return ThreadPoolExecutor(
        max_workers=threads,
        thread_name_prefix="optibid-argon2",
        initializer=security.lower_thread_priority,
        initargs=(nice,),
    )


async def _password_matches(state: ApiState, password_hash: str | None, password: str) -> bool:
    """argon2 verification (~50 ms of CPU) in a low-priority thread, at most `password_hash_concurrency` at
    once."""
    loop_id = id(asyncio.get_running_loop())
    slot = _verify_slots.get(loop_id)
    opts = state.options
    if slot is None:
        slot = _verify_slots[loop_id] = asyncio.Semaphore(opts.password_hash_concurrency)
    async with slot:
        pool = _verify_pool(opts.password_hash_concurrency, opts.password_hash_nice)
        return await asyncio.get_running_loop().run_in_executor(
            pool, security.password_matches, password_hash, password
        )


def _delay_for(failures: int, threshold: int, opts: ApiOptions) -> float:
    if failures < threshold:
        return 0.0
    return min(opts.login_delay_max_seconds, opts.login_delay_base_seconds * 2 ** (failures - threshold))


async def _issue(conn: AsyncConnection, state: ApiState, user: dict, family_id: str) -> tuple[TokenResponse, str]:
    token, digest = security.new_refresh_token()
    token_id = uuid.uuid4().hex
    issued = await (
        await conn.execute(
            "SELECT api_auth.issue_refresh_token(%s, %s, %s, %s, %s)",
            (
                token_id,
                family_id,
                user["user_id"],
                digest,
                datetime.now(UTC) + timedelta(seconds=security.REFRESH_TOKEN_SECONDS),
            ),
        )
    ).fetchone()
    if issued is None or issued[0] is None:
        raise ApiError(401, "invalid_credentials", "the account is disabled")
    access = security.access_token_for(
        state.jwt_secret,
        user_id=user["user_id"],
        org_id=user["org_id"],
        role=user["role"],
        family_id=family_id,
    )
    return TokenResponse(access_token=access, refresh_token=token, expires_in=security.ACCESS_TOKEN_SECONDS), token_id


@router.post("/token", response_model=TokenResponse, summary="Log in with e-mail and password (OAuth2 password)")
async def login(request: Request, form: Annotated[OAuth2PasswordRequestForm, Depends()]) -> TokenResponse:
    state = api_state(request)
    opts = state.options
    email = form.username.strip().lower()
    if "\x00" in email or "\x00" in form.password or len(email) > 320 or len(form.password) > 1024:
        raise ApiError(400, "invalid_input", "malformed credentials")
    ip = _client_ip(request)
    window = timedelta(seconds=opts.login_window_seconds)
    assert state.pool is not None
    async with state.pool.connection() as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(
            "SELECT by_email, by_ip, by_pair, last_pair FROM api_auth.login_failures(%s, %s, %s)",
            (email, ip, window),
        )
        counts = await cur.fetchone()
        assert counts is not None
        if counts["by_pair"] >= opts.login_max_failures:
            # Only this e-mail from this address backs off (exponentially): neither the account from other
            # addresses nor other accounts from this address are refused.
            backoff = min(opts.login_backoff_max_seconds, 2 ** (counts["by_pair"] - opts.login_max_failures + 1))
            remaining = (counts["last_pair"] + timedelta(seconds=backoff) - datetime.now(UTC)).total_seconds()
            if remaining > 0:
                wait = math.ceil(remaining)
                await conn.execute("SELECT api_auth.record_login_backoff(%s, %s)", (email, ip))
                await conn.commit()
                raise ApiError(
                    429,
                    "login_backoff",
                    "too many failed logins for this account from this address; try again later",
                    {"retry_after": wait},
                    headers={"Retry-After": str(wait)},
                )
    email_delay = _delay_for(counts["by_email"], opts.login_max_failures, opts)
    ip_delay = _delay_for(counts["by_ip"], opts.login_max_failures_per_ip, opts)
    delay = max(email_delay, ip_delay)
    if delay <= 0:
        return await _verify_and_issue(request, state, email, ip, form.password)
    # Throttled: attempts on this e-mail (or, when the address is the one failing, from this address) are
    # serialized and each waits `delay`, so guessing runs at most at 1/delay per account however many
    # connections or addresses are used, and a flood of random e-mails from one address costs at most one
    # password hash per `delay`; the right password still gets in.
    throttle_key = email if email_delay >= ip_delay else f"address:{ip}"
    lock, waiting = _email_locks.setdefault(throttle_key, (asyncio.Lock(), [0]))
    if waiting[0] >= _MAX_WAITING_PER_EMAIL:
        wait = max(1, int(delay * _MAX_WAITING_PER_EMAIL))
        raise ApiError(
            429,
            "login_busy",
            "too many concurrent login attempts for this account or address; try again shortly",
            {"retry_after": wait},
            headers={"Retry-After": str(wait)},
        )
    waiting[0] += 1
    try:
        async with lock:
            await asyncio.sleep(delay)
            return await _verify_and_issue(request, state, email, ip, form.password)
    finally:
        waiting[0] -= 1
        if waiting[0] == 0:
            _email_locks.pop(throttle_key, None)


async def _verify_and_issue(request: Request, state: ApiState, email: str, ip: str, password: str) -> TokenResponse:
    assert state.pool is not None
    async with state.pool.connection() as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(
            "SELECT user_id, org_id, role, password_hash, is_active FROM api_auth.login_user(%s)", (email,)
        )
        user = await cur.fetchone()
        await conn.commit()  # no transaction stays open across the hash
        ok = await _password_matches(state, user["password_hash"] if user else None, password)
        ok = ok and user is not None and user["is_active"]
        await conn.execute("SELECT api_auth.record_login(%s, %s, %s)", (email, ip, ok))
        if not ok:
            await conn.commit()
            raise ApiError(
                401,
                "invalid_credentials",
                "e-mail or password is wrong",
                headers={"WWW-Authenticate": "Bearer"},
            )
        assert user is not None
        tokens, _ = await _issue(conn, state, user, uuid.uuid4().hex)
    return tokens


async def _revoke_family(conn: AsyncConnection, state: ApiState, family_id: str) -> None:
    await conn.execute("SELECT api_auth.revoke_family(%s)", (family_id,))
    await conn.execute("SELECT pg_notify(%s, %s)", (AUTH_CHANNEL, json.dumps({"family_id": family_id})))
    state.revoked_families.add(family_id)


async def _family_revoked(conn: AsyncConnection, state: ApiState, family_id: str) -> bool:
    if family_id in state.revoked_families:
        return True
    row = await (await conn.execute("SELECT api_auth.family_revoked(%s)", (family_id,))).fetchone()
    return bool(row and row[0])


async def _audit_session(conn: AsyncConnection, family_id: str, action: str, details: dict | None = None) -> None:
    await conn.execute(
        "SELECT api_auth.audit_session(%s, %s, %s::jsonb)", (family_id, action, json.dumps(details or {}))
    )


async def _token_row(conn: AsyncConnection, token: str) -> dict | None:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        """SELECT token_id, family_id, user_id, org_id, expires_at, used_at, revoked_at, role, is_active
           FROM api_auth.refresh_token_for_update(%s)""",
        (security.token_digest(token),),
    )
    return await cur.fetchone()


@router.post("/refresh", response_model=TokenResponse, summary="Rotate a refresh token for new tokens")
async def refresh(request: Request, body: RefreshRequest) -> TokenResponse:
    state = api_state(request)
    assert state.pool is not None
    async with state.pool.connection() as conn:
        row = await _token_row(conn, body.refresh_token)
        if row is None:
            raise ApiError(401, "invalid_refresh_token", "refresh token is unknown")
        if row["used_at"] is not None:
            await _revoke_family(conn, state, row["family_id"])
            await _audit_session(conn, row["family_id"], "token.reuse_detected", {"ip": _client_ip(request)})
            await conn.commit()
            raise ApiError(
                401,
                "refresh_token_reused",
                "refresh token was already used; all sessions of this login are revoked",
            )
        if row["revoked_at"] is not None or row["expires_at"] <= datetime.now(UTC) or not row["is_active"]:
            raise ApiError(401, "invalid_refresh_token", "refresh token is expired or revoked")
        if await _family_revoked(conn, state, row["family_id"]):
            # A token rotated in concurrently with the family's revocation escaped the UPDATE: still dead.
            raise ApiError(401, "invalid_refresh_token", "the session of this refresh token was revoked")
        user = {"user_id": row["user_id"], "org_id": row["org_id"], "role": row["role"]}
        tokens, new_id = await _issue(conn, state, user, row["family_id"])
        await conn.execute("SELECT api_auth.rotate_refresh_token(%s, %s)", (row["token_id"], new_id))
        await _audit_session(conn, row["family_id"], "token.refresh")
    return tokens


@router.post("/revoke", response_model=Ok, summary="Log out: revoke the refresh token's whole family")
async def revoke(request: Request, body: RefreshRequest) -> Ok:
    state = api_state(request)
    assert state.pool is not None
    async with state.pool.connection() as conn:
        row = await _token_row(conn, body.refresh_token)
        if row is None:
            raise ApiError(401, "invalid_refresh_token", "refresh token is unknown")
        await _revoke_family(conn, state, row["family_id"])
        await _audit_session(conn, row["family_id"], "token.revoke")
    return Ok()
