"""The caller's own account: password change, forgotten-password reset, accepting an invitation, TOTP MFA
set-up, and the list of the caller's sessions (which the caller can revoke).

Links in e-mails lead here: `GET` shows what a link is for (without using it), `POST` uses it, once.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Depends, Path, Query, Request
from psycopg import errors as pg_errors
from psycopg.rows import dict_row

from serving_api import identity, security
from serving_api.deps import OrgSession, Principal, api_state, authenticate
from serving_api.errors import ApiError, error_responses
from serving_api.models import (
    InvitationAccept,
    LinkInfo,
    MfaCode,
    MfaEnrollment,
    Ok,
    PasswordChange,
    PasswordForgot,
    PasswordReset,
    RecoveryCodes,
    SessionOut,
    TokenResponse,
    UserOut,
)
from serving_api.routers.auth import _password_matches
from serving_api.security import Permission

router = APIRouter(prefix="/auth", tags=["account"], responses=error_responses(400, 401, 403, 409, 422, 429, 500, 503))
_LINK_ERRORS = {
    "link_invalid": "the link is not valid",
    "link_used": "the link was already used",
    "link_expired": "the link has expired",
    "link_revoked": "the link was withdrawn",
}


async def _user(principal: Annotated[Principal, Depends(authenticate)]) -> Principal:
    if principal.kind != "user":
        raise ApiError(403, "forbidden", "this endpoint is for users signed in with a token, not API keys")
    return principal


User = Annotated[Principal, Depends(_user)]


async def _own_session(request: Request, principal: User) -> AsyncIterator[OrgSession]:
    # Every role may read its own sessions; market:read is the permission every role holds.
    session = OrgSession(api_state(request), principal, Permission.market_read)
    try:
        yield session
    except BaseException as exc:
        await session.close(exc)
        raise
    else:
        await session.close(None)


def _link_error(row: dict | None) -> ApiError:
    if row is None:
        code = "link_invalid"
    elif row["used_at"] is not None:
        code = "link_used"
    elif row["revoked_at"] is not None:
        code = "link_revoked"
    elif row["expires_at"] <= datetime.now(UTC):
        code = "link_expired"
    else:
        code = "link_invalid"
    return ApiError(400, code, _LINK_ERRORS[code])


async def _link_row(request: Request, token: str, purpose: str) -> dict | None:
    state = api_state(request)
    assert state.pool is not None
    async with state.pool.connection() as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(
            "SELECT token_id, org_id, user_id, email, role, expires_at, used_at, revoked_at"
            " FROM api_auth.user_token(%s, %s)",
            (security.token_digest(token), purpose),
        )
        return await cur.fetchone()


def _usable(row: dict | None) -> bool:
    return (
        row is not None
        and row["used_at"] is None
        and row["revoked_at"] is None
        and row["expires_at"] > datetime.now(UTC)
    )


# --- invitations --------------------------------------------------------------------------------------------
@router.get("/invitations/accept", response_model=LinkInfo, summary="What an invitation link is for (not used)")
async def invitation_info(request: Request, token: Annotated[str, Query(min_length=1, max_length=200)]) -> LinkInfo:
    row = await _link_row(request, token, "invite")
    if not _usable(row):
        raise _link_error(row)
    assert row is not None
    return LinkInfo(email=row["email"], org_id=row["org_id"], role=row["role"], expires_at=row["expires_at"])


@router.post(
    "/invitations/accept",
    response_model=UserOut,
    status_code=201,
    summary="Accept an invitation: choose a password; the account exists from now on",
    responses=error_responses(409),
)
async def accept_invitation(request: Request, body: InvitationAccept) -> UserOut:
    state = api_state(request)
    try:
        password_hash = security.hash_password(body.password)
    except security.PasswordPolicyError as exc:
        raise ApiError(422, "weak_password", str(exc)) from exc
    assert state.pool is not None
    async with state.pool.connection() as conn:
        cur = conn.cursor(row_factory=dict_row)
        try:
            await cur.execute(
                "SELECT user_id, org_id, email, role FROM api_auth.accept_invitation(%s, %s, %s)",
                (security.token_digest(body.token), uuid.uuid4().hex, password_hash),
            )
        except pg_errors.UniqueViolation as exc:
            raise ApiError(409, "conflict", "an account with this e-mail exists already; log in instead") from exc
        row = await cur.fetchone()
    if row is None:
        raise _link_error(await _link_row(request, body.token, "invite"))
    return UserOut(user_id=row["user_id"], org_id=row["org_id"], email=row["email"], role=row["role"], is_active=True)


# --- passwords ----------------------------------------------------------------------------------------------
@router.post(
    "/password",
    response_model=TokenResponse,
    summary="Change the caller's password; every session and API key of the caller is revoked, and a new "
    "session starts",
)
async def change_password(request: Request, principal: User, body: PasswordChange) -> TokenResponse:
    state = api_state(request)
    ip = identity.client_ip(request)
    assert state.pool is not None
    async with state.pool.connection() as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(
            """SELECT user_id, org_id, email, role, is_active, auth_source, session_absolute_seconds,
                      session_idle_seconds FROM api_auth.user_profile(%s)""",
            (principal.subject_id,),
        )
        profile = await cur.fetchone()
    if profile is None or not profile["is_active"] or profile["auth_source"] != "password":
        raise ApiError(409, "conflict", "this account signs in through its organization's identity provider")
    try:
        new_hash = security.hash_password(body.new_password)
    except security.PasswordPolicyError as exc:
        raise ApiError(422, "weak_password", str(exc)) from exc

    async def attempt() -> TokenResponse:
        assert state.pool is not None
        async with state.pool.connection() as conn:
            row = await (await conn.execute("SELECT api_auth.password_hash_of(%s)", (principal.subject_id,))).fetchone()
            await conn.commit()
            ok = await _password_matches(state, row[0] if row else None, body.current_password)
            await conn.execute(
                "SELECT api_auth.record_factor(%s, %s, 'password_change', %s)", (profile["email"], ip, ok)
            )
            if not ok:
                await conn.commit()
                raise ApiError(401, "invalid_credentials", "the current password is wrong")
            await conn.execute("SELECT api_auth.set_password(%s, %s)", (principal.subject_id, new_hash))
            revoked = await identity.revoke_user_credentials(conn, state, principal.subject_id)
            await identity.audit(
                conn, principal.org_id, principal.actor, "user.password_change", principal.subject_id, revoked
            )
            tokens, _ = await identity.issue_tokens(
                conn,
                state,
                profile,
                uuid.uuid4().hex,
                identity.NewSession(
                    "password",
                    ip,
                    identity.user_agent(request),
                    profile["session_absolute_seconds"],
                    profile["session_idle_seconds"],
                ),
            )
        return tokens

    _signed_in_check_allowed(request, principal)
    return await attempt()


def _signed_in_check_allowed(request: Request, principal: Principal) -> None:
    """Credential checks by a signed-in caller (current password, MFA codes): at most 5 a minute per user, so
    a stolen access token cannot guess them quickly, without touching the owner's login throttle."""
    wait = api_state(request).limiter.retry_after(f"credential-check:{principal.subject_id}", 5)
    if wait is not None:
        raise ApiError(
            429,
            "rate_limited",
            "too many credential checks; try again later",
            {"retry_after": wait},
            headers={"Retry-After": str(wait)},
        )


@router.post(
    "/password/forgot",
    response_model=Ok,
    status_code=202,
    summary="E-mail a single-use password-reset link (the answer is the same whether the account exists)",
)
async def forgot_password(request: Request, body: PasswordForgot, background: BackgroundTasks) -> Ok:
    state = api_state(request)
    ip = identity.client_ip(request)
    wait = state.limiter.retry_after(f"password-reset-address:{ip}", 10)
    if wait is not None:
        raise ApiError(
            429,
            "rate_limited",
            "too many reset requests from this address",
            {"retry_after": wait},
            headers={"Retry-After": str(wait)},
        )
    if not identity.mail_configured(state):
        raise ApiError(409, "mail_not_configured", "password reset by e-mail is not configured")
    email = body.email.strip().lower()
    # At most two reset e-mails per account per minute, whoever asks (silently: the answer stays the same).
    if state.limiter.retry_after(f"password-reset:{email}", 2) is not None:
        return Ok()
    token, digest = security.new_link_token()
    expires_at = datetime.now(UTC) + timedelta(minutes=state.settings.password_reset_ttl_minutes)
    assert state.pool is not None
    async with state.pool.connection() as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(
            "SELECT user_id, org_id FROM api_auth.create_password_reset(%s, %s, %s, %s)",
            (email, uuid.uuid4().hex, digest, expires_at),
        )
        row = await cur.fetchone()
        if row is not None:
            await identity.audit(conn, row["org_id"], email, "password.reset_requested", row["user_id"], {"ip": ip})
    if row is not None:
        subject, text = identity.password_reset_mail(state, token, expires_at)
        # After the response, so its timing does not tell whether the account exists.
        background.add_task(_send_quietly, state, email, subject, text)
    return Ok()


async def _send_quietly(state, to: str, subject: str, body: str) -> None:
    with contextlib.suppress(ApiError):  # logged by identity.send; the requester can ask again
        await identity.send(state, to, subject, body)


@router.get("/password/reset", response_model=LinkInfo, summary="What a password-reset link is for (not used)")
async def reset_info(request: Request, token: Annotated[str, Query(min_length=1, max_length=200)]) -> LinkInfo:
    row = await _link_row(request, token, "password_reset")
    if not _usable(row):
        raise _link_error(row)
    assert row is not None
    return LinkInfo(email=row["email"], org_id=row["org_id"], expires_at=row["expires_at"])


@router.post(
    "/password/reset",
    response_model=Ok,
    summary="Set a new password with an e-mailed reset token; every session and API key of the user is revoked",
)
async def reset_password(request: Request, body: PasswordReset) -> Ok:
    state = api_state(request)
    try:
        new_hash = security.hash_password(body.new_password)
    except security.PasswordPolicyError as exc:
        raise ApiError(422, "weak_password", str(exc)) from exc
    assert state.pool is not None
    async with state.pool.connection() as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(
            "SELECT user_id, org_id FROM api_auth.reset_password(%s, %s)",
            (security.token_digest(body.token), new_hash),
        )
        row = await cur.fetchone()
        if row is not None:
            revoked = await identity.revoke_user_credentials(conn, state, row["user_id"])
            await identity.audit(
                conn,
                row["org_id"],
                f"user:{row['user_id']}",
                "user.password_reset",
                row["user_id"],
                revoked | {"ip": identity.client_ip(request)},
            )
    if row is None:
        raise _link_error(await _link_row(request, body.token, "password_reset"))
    return Ok()


# --- MFA ------------------------------------------------------------------------------------------------------
@router.post(
    "/mfa/setup",
    response_model=MfaEnrollment,
    summary="Start TOTP enrolment for the signed-in caller (confirm with POST /auth/mfa/confirm)",
    responses=error_responses(409),
)
async def mfa_setup(request: Request, principal: User) -> MfaEnrollment:
    state = api_state(request)
    secret = security.new_totp_secret()
    assert state.pool is not None
    async with state.pool.connection() as conn:
        started = await (
            await conn.execute("SELECT api_auth.mfa_begin_enrolment(%s, %s)", (principal.subject_id, secret))
        ).fetchone()
        if started is None or not started[0]:
            raise ApiError(409, "mfa_already_enabled", "MFA is already on; disable it first to enrol again")
        email = await (
            await conn.execute("SELECT email FROM api_auth.user_profile(%s)", (principal.subject_id,))
        ).fetchone()
    return MfaEnrollment(secret=secret, otpauth_uri=security.totp_uri(secret, email[0] if email else ""))


async def _with_code(request: Request, principal: Principal, code: str, *, confirm: bool, then) -> object:
    """Check a second factor of the caller under the login throttle, then run `then(conn)`."""
    state = api_state(request)
    ip = identity.client_ip(request)
    assert state.pool is not None
    async with state.pool.connection() as conn:
        email = await (
            await conn.execute("SELECT email FROM api_auth.user_profile(%s)", (principal.subject_id,))
        ).fetchone()
    assert email is not None

    async def attempt():
        assert state.pool is not None
        async with state.pool.connection() as conn:
            factor = await identity.check_second_factor(conn, principal.subject_id, code, confirm=confirm)
            await conn.execute(
                "SELECT api_auth.record_factor(%s, %s, 'mfa_manage', %s)", (email[0], ip, factor is not None)
            )
            if factor is None:
                await conn.commit()
                raise ApiError(401, "invalid_mfa_code", "the code is wrong, expired or already used")
            return await then(conn)

    _signed_in_check_allowed(request, principal)
    return await attempt()


@router.post(
    "/mfa/confirm",
    response_model=RecoveryCodes,
    summary="Confirm TOTP enrolment with a first code; returns recovery codes (shown once)",
)
async def mfa_confirm(request: Request, principal: User, body: MfaCode) -> RecoveryCodes:
    async def then(conn):
        codes = await identity.new_recovery_codes(conn, principal.subject_id)
        await identity.audit(conn, principal.org_id, principal.actor, "mfa.enable", principal.subject_id)
        return RecoveryCodes(recovery_codes=codes)

    return await _with_code(request, principal, body.code, confirm=True, then=then)  # type: ignore[return-value]


@router.post(
    "/mfa/recovery-codes",
    response_model=RecoveryCodes,
    summary="Replace the caller's recovery codes (needs a current code)",
)
async def mfa_new_codes(request: Request, principal: User, body: MfaCode) -> RecoveryCodes:
    async def then(conn):
        codes = await identity.new_recovery_codes(conn, principal.subject_id)
        await identity.audit(conn, principal.org_id, principal.actor, "mfa.recovery_codes", principal.subject_id)
        return RecoveryCodes(recovery_codes=codes)

    return await _with_code(request, principal, body.code, confirm=False, then=then)  # type: ignore[return-value]


@router.post(
    "/mfa/disable",
    response_model=Ok,
    summary="Turn the caller's MFA off (needs a current code; refused while the organization requires MFA)",
    responses=error_responses(409),
)
async def mfa_disable(request: Request, principal: User, body: MfaCode) -> Ok:
    state = api_state(request)
    assert state.pool is not None
    async with state.pool.connection() as conn:
        row = await (
            await conn.execute("SELECT mfa_required FROM api_auth.user_profile(%s)", (principal.subject_id,))
        ).fetchone()
    if row and row[0]:
        raise ApiError(409, "mfa_required", "your organization requires MFA")

    async def then(conn):
        await conn.execute("SELECT api_auth.mfa_disable(%s)", (principal.subject_id,))
        await identity.audit(conn, principal.org_id, principal.actor, "mfa.disable", principal.subject_id)
        return Ok()

    return await _with_code(request, principal, body.code, confirm=False, then=then)  # type: ignore[return-value]


# --- sessions -------------------------------------------------------------------------------------------------
OwnSession = Annotated[OrgSession, Depends(_own_session)]


@router.get("/sessions", response_model=list[SessionOut], summary="The caller's active sessions")
async def list_sessions(session: OwnSession) -> list[SessionOut]:
    cur = (await session.conn()).cursor(row_factory=dict_row)
    await cur.execute(
        """SELECT family_id, auth_method, created_at, last_used_at, absolute_expires_at, idle_seconds, ip,
                  user_agent
           FROM ops.sessions
           WHERE user_id = %s AND revoked_at IS NULL AND absolute_expires_at > now()
             AND last_used_at + make_interval(secs => idle_seconds) > now()
           ORDER BY last_used_at DESC LIMIT 500""",
        (session.principal.subject_id,),
    )
    return [
        SessionOut(
            session_id=r["family_id"],
            auth_method=r["auth_method"],
            created_at=r["created_at"],
            last_used_at=r["last_used_at"],
            expires_at=r["absolute_expires_at"],
            idle_timeout_seconds=r["idle_seconds"],
            ip=r["ip"],
            device=r["user_agent"],
            current=r["family_id"] == session.principal.family_id,
        )
        for r in await cur.fetchall()
    ]


@router.delete(
    "/sessions/{session_id}",
    response_model=Ok,
    summary="Revoke one of the caller's sessions (its refresh and access tokens stop working)",
    responses=error_responses(404),
)
async def revoke_session(session: OwnSession, session_id: Annotated[str, Path(pattern=r"^[0-9a-f]{1,64}$")]) -> Ok:
    conn = await session.conn()
    row = await (
        await conn.execute(
            "SELECT 1 FROM ops.sessions WHERE family_id = %s AND user_id = %s",
            (session_id, session.principal.subject_id),
        )
    ).fetchone()
    if row is None:
        raise ApiError(404, "not_found", "no such session of yours")
    from serving_api.routers.auth import _audit_session, _revoke_family

    await _revoke_family(conn, session.state, session_id)
    await _audit_session(conn, session_id, "session.revoke")
    return Ok()
