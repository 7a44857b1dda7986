"""What the identity endpoints share: opening a session and issuing its tokens, signing in a user a single
sign-on provider vouched for (OIDC or SAML: group -> role, just-in-time provisioning), revoking everything a
user holds, checking a second factor, the client address, and the e-mails with single-use links.

What belongs here: logic used by more than one of `routers/auth.py`, `routers/account.py`,
`routers/identity_admin.py`, `routers/sso.py` and `routers/saml.py`. What does not: the endpoints
themselves, the SQL functions (`infra/sql/140_identity.sql`, `170_saml.sql`), and pure credential functions
(`serving_api.security`).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import Request
from psycopg import AsyncConnection
from psycopg.rows import dict_row

from infra.mail import MailError, send_mail, smtp_server_from_settings
from infra.signals import AUTH_CHANNEL
from serving_api import security
from serving_api.errors import ApiError
from serving_api.models import API_PREFIX, TokenResponse
from serving_api.security import ROLE_RANK, Role
from serving_api.state import ApiState

log = logging.getLogger(__name__)


def client_ip(request: Request) -> str:
    """The client's address: the peer's, or X-Forwarded-For's when the peer is a trusted proxy."""
    state: ApiState = request.app.state.api
    peer = request.client.host if request.client else "unknown"
    return security.client_address(
        peer, request.headers.getlist("x-forwarded-for"), _trusted(tuple(state.settings.trusted_proxies))
    )


@functools.cache
def _trusted(cidrs: tuple[str, ...]) -> tuple[security.IPNetwork, ...]:
    return security.parse_networks(cidrs)


def user_agent(request: Request) -> str | None:
    agent = request.headers.get("user-agent")
    return agent[:256].replace("\x00", "") if agent else None


@dataclass(frozen=True)
class NewSession:
    """How a session starts: by which method, from where, under which organization policy."""

    auth_method: str
    ip: str | None
    user_agent: str | None
    absolute_seconds: int
    idle_seconds: int
    id_token: str | None = None


async def issue_tokens(
    conn: AsyncConnection,
    state: ApiState,
    user: dict,
    family_id: str,
    new_session: NewSession | None = None,
) -> tuple[TokenResponse, str]:
    """A refresh token in `family_id` (a new session when `new_session` is given) and an access token that
    ends no later than the session; (tokens, refresh token id). 401 when the account is inactive."""
    if new_session is not None:
        await conn.execute(
            "SELECT api_auth.start_session(%s, %s, %s, %s, %s, %s, %s, %s)",
            (
                family_id,
                user["user_id"],
                new_session.auth_method,
                new_session.absolute_seconds,
                new_session.idle_seconds,
                new_session.ip,
                new_session.user_agent,
                new_session.id_token,
            ),
        )
    row = await (await conn.execute("SELECT api_auth.session_expires_at(%s)", (family_id,))).fetchone()
    session_end: datetime | None = row[0] if row else None
    refresh_end = datetime.now(UTC) + timedelta(seconds=security.REFRESH_TOKEN_SECONDS)
    if session_end is not None:
        refresh_end = min(refresh_end, session_end)
    token, digest = security.new_refresh_token()
    token_id = uuid.uuid4().hex
    issued = await (
        await conn.execute(
            "SELECT api_auth.issue_refresh_token(%s, %s, %s, %s, %s)",
            (token_id, family_id, user["user_id"], digest, refresh_end),
        )
    ).fetchone()
    if issued is None or issued[0] is None:
        raise ApiError(401, "invalid_credentials", "the account is disabled")
    access, lifetime = state.token_keys.issue(
        user_id=user["user_id"],
        org_id=user["org_id"],
        role=user["role"],
        family_id=family_id,
        not_after=session_end.timestamp() if session_end else None,
    )
    return TokenResponse(access_token=access, refresh_token=token, expires_in=lifetime), token_id


@dataclass(frozen=True)
class SsoIdentity:
    """Who a single sign-on provider vouched for, after its response was verified."""

    org_id: str
    source: str  # 'oidc' or 'saml': the session's auth method and the account's auth source
    subject: str  # the provider's stable id of the user (OIDC `sub`, SAML NameID)
    email: str
    groups: Any  # the provider's groups claim or attribute, as received (list, string or absent)
    provider: str  # the provider's issuer or entity id, for the audit log


@dataclass(frozen=True)
class RoleMapping:
    """An organization's provider settings that decide roles and provisioning."""

    group_roles: dict[str, str]
    default_role: str | None
    jit_provisioning: bool


def role_for(mapping: RoleMapping, groups: Any) -> str:
    """The highest role the groups map to, else the default role; 403 `sso_no_role` when neither exists."""
    if isinstance(groups, str):
        groups = [groups]
    if not isinstance(groups, list):
        groups = []
    roles = [Role(mapping.group_roles[g]) for g in groups if isinstance(g, str) and g in mapping.group_roles]
    if roles:
        return max(roles, key=lambda r: ROLE_RANK[r]).value
    if mapping.default_role:
        return mapping.default_role
    raise ApiError(403, "sso_no_role", "none of your identity provider groups is mapped to an OptiBid role")


def sso_email(value: Any) -> str:
    """The provider's e-mail address, normalized; 403 `sso_no_email` when there is none usable."""
    email = str(value or "").strip().lower()
    if not email or len(email) > 320 or "@" not in email:
        raise ApiError(403, "sso_no_email", "the identity provider did not share an e-mail address")
    return email


_SSO_ACCOUNT_REFUSALS = {
    "inactive": "this account is deactivated",
    "not_provisioned": "no account exists for you and this organization does not create them",
    "other_org": "this e-mail belongs to an account of another organization",
}


async def sso_sign_in(
    conn: AsyncConnection,
    state: ApiState,
    request: Request,
    who: SsoIdentity,
    mapping: RoleMapping,
    id_token: str | None = None,
) -> tuple[TokenResponse, str]:
    """Sign in a user an SSO provider vouched for: map the groups to a role, find the account (by subject,
    else e-mail in the organization) or provision it, revoke its other sessions when the provider changed its
    role, audit, and open a session; (tokens, the session's family id). 403 `sso_<reason>` when the account
    is deactivated, of another organization, or absent without just-in-time provisioning."""
    role = role_for(mapping, who.groups)
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        "SELECT status, user_id, role, role_changed FROM api_auth.sso_account(%s, %s, %s, %s, %s, %s, %s)",
        (who.org_id, who.source, who.subject, who.email, role, mapping.jit_provisioning, uuid.uuid4().hex),
    )
    account = await cur.fetchone()
    assert account is not None
    if account["status"] != "ok":
        await conn.commit()  # the spent nonce or assertion id stays spent although the login is refused
        raise ApiError(403, f"sso_{account['status']}", _SSO_ACCOUNT_REFUSALS[account["status"]])
    if account["role_changed"]:
        await revoke_user_credentials(conn, state, account["user_id"])
    await cur.execute(
        """SELECT user_id, org_id, email, role, session_absolute_seconds, session_idle_seconds
           FROM api_auth.user_profile(%s)""",
        (account["user_id"],),
    )
    user = await cur.fetchone()
    assert user is not None
    ip = client_ip(request)
    await audit(
        conn,
        user["org_id"],
        f"user:{user['user_id']}",
        "login.sso",
        user["user_id"],
        {"ip": ip, "method": who.source, "issuer": who.provider, "role": role},
    )
    family_id = uuid.uuid4().hex
    result, _ = await issue_tokens(
        conn,
        state,
        user,
        family_id,
        NewSession(
            who.source,
            ip,
            user_agent(request),
            user["session_absolute_seconds"],
            user["session_idle_seconds"],
            id_token=id_token,
        ),
    )
    return result, family_id


async def session_status(conn: AsyncConnection, family_id: str, ip: str | None) -> str:
    row = await (await conn.execute("SELECT api_auth.touch_session(%s, %s)", (family_id, ip))).fetchone()
    return row[0] if row else "unknown"


async def revoke_user_credentials(
    conn: AsyncConnection, state: ApiState, user_id: str, keep_family: str | None = None
) -> dict[str, int]:
    """Revoke every refresh family (but `keep_family`) and every API key of a user, and tell every API
    process at commit (the same LISTEN/NOTIFY path as a logout or a key revocation, so the same bound)."""
    cur = conn.cursor()
    await cur.execute("SELECT kind, id FROM api_auth.revoke_user_credentials(%s, %s)", (user_id, keep_family))
    rows = await cur.fetchall()
    families = [i for k, i in rows if k == "family"]
    prefixes = [i for k, i in rows if k == "api_key"]
    if rows:
        await conn.execute(
            "SELECT pg_notify(%s, payload) FROM unnest(%s::text[]) AS payload",
            (
                AUTH_CHANNEL,
                [json.dumps({"family_id": f}) for f in families]
                + [json.dumps({"api_key_prefix": p}) for p in prefixes],
            ),
        )
    state.revoked_families.update(families)
    for prefix in prefixes:
        state.api_keys.pop(prefix, None)
    return {"sessions": len(families), "api_keys": len(prefixes)}


async def check_second_factor(conn: AsyncConnection, user_id: str, code: str, *, confirm: bool = False) -> str | None:
    """'totp' or 'recovery_code' when `code` is a valid second factor of the user, else None.

    A TOTP code is accepted once (its time step is recorded; a replay within its 30 s fails); with
    `confirm`, the first valid code completes enrolment. A recovery code works once.
    """
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute("SELECT secret, confirmed, last_step FROM api_auth.mfa_secret(%s)", (user_id,))
    mfa = await cur.fetchone()
    if mfa is None or (not mfa["confirmed"] and not confirm):
        return None
    step = security.totp_step_matching(mfa["secret"], code)
    if step is not None:
        accepted = await (
            await conn.execute("SELECT api_auth.mfa_accept_step(%s, %s, %s)", (user_id, step, confirm))
        ).fetchone()
        return "totp" if accepted and accepted[0] else None
    if mfa["confirmed"] and len(code) <= 20:
        used = await (
            await conn.execute(
                "SELECT api_auth.mfa_use_recovery_code(%s, %s)", (user_id, security.recovery_code_digest(code))
            )
        ).fetchone()
        if used and used[0]:
            return "recovery_code"
    return None


async def new_recovery_codes(conn: AsyncConnection, user_id: str) -> list[str]:
    codes = security.new_recovery_codes()
    await conn.execute(
        "SELECT api_auth.mfa_replace_recovery_codes(%s, %s)",
        (user_id, [security.recovery_code_digest(c) for c in codes]),
    )
    return codes


async def audit(
    conn: AsyncConnection, org_id: str | None, actor: str, action: str, target: str | None, details: dict | None = None
) -> None:
    """An audit row outside an organization-scoped transaction (pre-authentication flows)."""
    await conn.execute(
        "SELECT api_auth.audit(%s, %s, %s, %s, %s::jsonb)", (org_id, actor, action, target, json.dumps(details or {}))
    )


def link(state: ApiState, path: str, token: str) -> str:
    """The address of an e-mailed single-use link."""
    return f"{state.settings.resolved_public_url}{API_PREFIX}{path}?token={token}"


def mail_configured(state: ApiState) -> bool:
    return smtp_server_from_settings(state.settings) is not None


async def send(state: ApiState, to: str, subject: str, body: str) -> None:
    """Send an e-mail in a worker thread; ApiError 503 when no server is configured or it refuses."""
    server = smtp_server_from_settings(state.settings)
    if server is None:
        raise ApiError(409, "mail_not_configured", "no SMTP server is configured (OPTIBID_MAIL_SMTP_HOST)")
    try:
        await asyncio.to_thread(send_mail, server, to, subject, body)
    except MailError as exc:
        log.warning("identity mail to %s failed: %s", to, exc)
        raise ApiError(503, "mail_failed", "the e-mail could not be sent; try again later") from exc


def invitation_mail(state: ApiState, org_id: str, role: str, token: str, expires_at: datetime) -> tuple[str, str]:
    url = link(state, "/auth/invitations/accept", token)
    return (
        f"You are invited to OptiBid ({org_id})",
        f"You have been invited to the organization {org_id} on OptiBid as {role}.\n\n"
        f"Accept the invitation and choose a password (POST this link with your password, or open it in the "
        f"OptiBid app):\n{url}\n\nThe link works once and expires at {expires_at:%Y-%m-%d %H:%M} UTC.\n",
    )


def password_reset_mail(state: ApiState, token: str, expires_at: datetime) -> tuple[str, str]:
    url = link(state, "/auth/password/reset", token)
    return (
        "Reset your OptiBid password",
        f"Someone (hopefully you) asked to reset the password of this OptiBid account.\n\n"
        f"Choose a new password here:\n{url}\n\nThe link works once and expires at "
        f"{expires_at:%Y-%m-%d %H:%M} UTC. If you did not ask for it, ignore this e-mail: your password is "
        f"unchanged.\n",
    )
