"""OAuth2 password login (with its second, MFA step), refresh-token rotation with reuse detection and session
timeouts, and revocation.

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
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Annotated, TypeVar

from fastapi import APIRouter, Depends, Request
from fastapi.security import OAuth2PasswordRequestForm
from psycopg import AsyncConnection
from psycopg.rows import dict_row

from infra.signals import AUTH_CHANNEL
from serving_api import identity, security
from serving_api.deps import api_state
from serving_api.errors import ApiError, error_responses
from serving_api.models import (
    MfaChallenge,
    MfaEnrollment,
    MfaTokenBody,
    MfaVerify,
    Ok,
    RefreshRequest,
    TokenResponse,
)
from serving_api.state import ApiOptions, ApiState

T = TypeVar("T")

router = APIRouter(prefix="/auth", tags=["auth"], responses=error_responses(400, 401, 422, 429, 500, 503))


def _client_ip(request: Request) -> str:
    return identity.client_ip(request)


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


@router.post(
    "/token",
    response_model=TokenResponse | MfaChallenge,
    summary="Log in with e-mail and password (OAuth2 password); a second step follows when MFA is on",
)
async def login(
    request: Request, form: Annotated[OAuth2PasswordRequestForm, Depends()]
) -> TokenResponse | MfaChallenge:
    email = form.username.strip().lower()
    if "\x00" in email or "\x00" in form.password or len(email) > 320 or len(form.password) > 1024:
        raise ApiError(400, "invalid_input", "malformed credentials")
    ip = _client_ip(request)
    return await throttled(
        request, email, ip, lambda: _verify_and_issue(request, api_state(request), email, ip, form.password)
    )


async def throttled(request: Request, email: str, ip: str, attempt: Callable[[], Awaitable[T]]) -> T:
    """Run one credential check (`attempt`) under the login throttle of (e-mail, address).

    Failures of every factor (password, TOTP, recovery code) count together: the pair backoff refuses with
    429, and beyond the thresholds each attempt waits a progressive delay, serialized per e-mail or address.
    """
    state = api_state(request)
    opts = state.options
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
        return await attempt()
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
            return await attempt()
    finally:
        waiting[0] -= 1
        if waiting[0] == 0:
            _email_locks.pop(throttle_key, None)


async def _verify_and_issue(
    request: Request, state: ApiState, email: str, ip: str, password: str
) -> TokenResponse | MfaChallenge:
    assert state.pool is not None
    async with state.pool.connection() as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(
            """SELECT user_id, org_id, role, password_hash, is_active, mfa_enabled, mfa_required,
                      session_absolute_seconds, session_idle_seconds
               FROM api_auth.login_profile(%s)""",
            (email,),
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
        if user["mfa_enabled"] or user["mfa_required"]:
            # The password was right: the second step trades this short-lived proof and a code for tokens.
            challenge, digest = security.new_link_token()
            await conn.execute(
                "SELECT api_auth.mfa_new_challenge(%s, %s, %s)",
                (digest, user["user_id"], state.options.mfa_challenge_seconds),
            )
            return MfaChallenge(
                mfa_token=challenge,
                expires_in=state.options.mfa_challenge_seconds,
                enrollment_required=not user["mfa_enabled"],
            )
        tokens, _ = await identity.issue_tokens(
            conn, state, user, uuid.uuid4().hex, _new_session(request, user, "password", ip)
        )
    return tokens


def _new_session(request: Request, profile: dict, method: str, ip: str) -> identity.NewSession:
    return identity.NewSession(
        auth_method=method,
        ip=ip,
        user_agent=identity.user_agent(request),
        absolute_seconds=profile["session_absolute_seconds"],
        idle_seconds=profile["session_idle_seconds"],
    )


async def _challenge_user(conn: AsyncConnection, mfa_token: str) -> dict:
    """The profile of the user of a live MFA challenge (401 otherwise)."""
    row = await (
        await conn.execute("SELECT api_auth.mfa_challenge_peek(%s)", (security.token_digest(mfa_token),))
    ).fetchone()
    if row is None or row[0] is None:
        raise ApiError(401, "invalid_mfa_token", "the MFA token is unknown, used or expired; log in again")
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        """SELECT user_id, org_id, email, role, is_active, mfa_enabled, mfa_required, session_absolute_seconds,
                  session_idle_seconds FROM api_auth.user_profile(%s)""",
        (row[0],),
    )
    profile = await cur.fetchone()
    if profile is None or not profile["is_active"]:
        raise ApiError(401, "invalid_mfa_token", "the MFA token is unknown, used or expired; log in again")
    return profile


@router.post(
    "/mfa/enroll",
    response_model=MfaEnrollment,
    summary="During a login whose organization requires MFA: start TOTP enrolment with the MFA token",
    responses=error_responses(409),
)
async def enroll_during_login(request: Request, body: MfaTokenBody) -> MfaEnrollment:
    state = api_state(request)
    assert state.pool is not None
    async with state.pool.connection() as conn:
        profile = await _challenge_user(conn, body.mfa_token)
        if profile["mfa_enabled"]:
            raise ApiError(409, "mfa_already_enabled", "MFA is already set up: send a code to /auth/mfa/verify")
        secret = security.new_totp_secret()
        await conn.execute("SELECT api_auth.mfa_begin_enrolment(%s, %s)", (profile["user_id"], secret))
    return MfaEnrollment(secret=secret, otpauth_uri=security.totp_uri(secret, profile["email"]))


@router.post(
    "/mfa/verify",
    response_model=TokenResponse,
    summary="Second login step: the MFA token and a TOTP or recovery code, for tokens",
)
async def verify_mfa(request: Request, body: MfaVerify) -> TokenResponse:
    state = api_state(request)
    ip = _client_ip(request)
    assert state.pool is not None
    async with state.pool.connection() as conn:
        profile = await _challenge_user(conn, body.mfa_token)
    return await throttled(request, profile["email"], ip, lambda: _second_factor(request, state, profile, ip, body))


async def _second_factor(request: Request, state: ApiState, profile: dict, ip: str, body: MfaVerify) -> TokenResponse:
    assert state.pool is not None
    digest = security.token_digest(body.mfa_token)
    async with state.pool.connection() as conn:
        row = await (
            await conn.execute(
                "SELECT api_auth.mfa_challenge_attempt(%s, %s)",
                (digest, state.options.mfa_max_attempts_per_challenge),
            )
        ).fetchone()
        await conn.commit()  # the attempt counts even if what follows fails
        if row is None or row[0] is None:
            raise ApiError(
                401, "mfa_challenge_exhausted", "too many wrong codes or the MFA token expired; log in again"
            )
        enrolling = not profile["mfa_enabled"]
        factor = await identity.check_second_factor(conn, profile["user_id"], body.code, confirm=enrolling)
        await conn.execute(
            "SELECT api_auth.record_factor(%s, %s, %s, %s)",
            (profile["email"], ip, factor or "totp", factor is not None),
        )
        if factor is None:
            await conn.commit()
            raise ApiError(401, "invalid_mfa_code", "the code is wrong, expired or already used")
        done = await (await conn.execute("SELECT api_auth.mfa_challenge_done(%s)", (digest,))).fetchone()
        if done is None or not done[0]:
            raise ApiError(401, "invalid_mfa_token", "the MFA token was already used; log in again")
        codes = None
        if enrolling:
            codes = await identity.new_recovery_codes(conn, profile["user_id"])
            await identity.audit(
                conn, profile["org_id"], f"user:{profile['user_id']}", "mfa.enable", profile["user_id"]
            )
        tokens, _ = await identity.issue_tokens(
            conn, state, profile, uuid.uuid4().hex, _new_session(request, profile, f"password+{factor}", ip)
        )
    if codes:
        tokens.recovery_codes = codes
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
        status = await identity.session_status(conn, row["family_id"], _client_ip(request))
        if status in ("expired", "idle"):
            await _revoke_family(conn, state, row["family_id"])
            await _audit_session(conn, row["family_id"], f"session.{status}")
            await conn.commit()
            raise ApiError(
                401,
                "session_expired",
                "the session reached its absolute lifetime; log in again"
                if status == "expired"
                else "the session was idle for longer than the organization allows; log in again",
            )
        if status == "revoked":
            raise ApiError(401, "invalid_refresh_token", "the session of this refresh token was revoked")
        user = {"user_id": row["user_id"], "org_id": row["org_id"], "role": row["role"]}
        tokens, new_id = await identity.issue_tokens(conn, state, user, row["family_id"])
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
