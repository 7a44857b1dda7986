"""User lifecycle and identity policy for an organization's admins: invitations by e-mail, deactivation and
reactivation, role changes, resetting a user's MFA, the organization's MFA and session policy, and its OIDC
and SAML providers. Every change is audited; deactivation, role changes and MFA resets revoke the user's
sessions and API keys at once (the same LISTEN/NOTIFY path as every revocation).
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from fastapi import APIRouter, Depends, Path
from psycopg.rows import dict_row

from serving_api import identity, repository, security
from serving_api.deps import OrgSession, scoped
from serving_api.errors import STANDARD_ERRORS, ApiError, error_responses
from serving_api.models import (
    API_PREFIX,
    IdentityPolicy,
    InvitationCreate,
    InvitationOut,
    OidcProviderIn,
    OidcProviderOut,
    Ok,
    RoleChange,
    SamlProviderIn,
    SamlProviderOut,
    UserOut,
)
from serving_api.security import Permission

router = APIRouter(tags=["admin"], responses=error_responses(*STANDARD_ERRORS))
Admin = Annotated[OrgSession, Depends(scoped(Permission.admin))]
UserId = Annotated[str, Path(pattern=r"^[0-9A-Za-z_\-]{1,64}$")]
_USER_COLUMNS = "user_id, org_id, email, role, is_active, auth_source, deactivated_at"
_INVITATION_COLUMNS = (
    "token_id AS invitation_id, org_id, email, role, created_by, created_at, expires_at, used_at, revoked_at"
)


# --- invitations --------------------------------------------------------------------------------------------
@router.post(
    "/users/invitations",
    response_model=InvitationOut,
    status_code=201,
    summary="Invite a user by e-mail (a single-use, expiring link); earlier pending invitations of the address "
    "are withdrawn",
    responses=error_responses(409),
)
async def invite_user(session: Admin, body: InvitationCreate) -> InvitationOut:
    state = session.state
    if not identity.mail_configured(state):
        raise ApiError(409, "mail_not_configured", "no SMTP server is configured (OPTIBID_MAIL_SMTP_HOST)")
    email = body.email.strip().lower()
    conn = await session.conn()
    row = await (await conn.execute("SELECT count(*) FROM api_auth.login_profile(%s)", (email,))).fetchone()
    if row and row[0]:
        raise ApiError(409, "conflict", "a user with this e-mail exists")
    await conn.execute(
        "UPDATE ops.user_tokens SET revoked_at = now() WHERE purpose = 'invite' AND lower(email) = %s"
        " AND used_at IS NULL AND revoked_at IS NULL",
        (email,),
    )
    token, digest = security.new_link_token()
    expires_at = datetime.now(UTC) + timedelta(hours=state.settings.invitation_ttl_hours)
    invitation_id = uuid.uuid4().hex
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        f"""INSERT INTO ops.user_tokens (token_id, token_hash, purpose, org_id, email, role, created_by, expires_at)
            VALUES (%s, %s, 'invite', %s, %s, %s, %s, %s) RETURNING {_INVITATION_COLUMNS}""",
        (invitation_id, digest, session.principal.org_id, email, body.role, session.principal.actor, expires_at),
    )
    created = await cur.fetchone()
    assert created is not None
    await repository.audit(
        conn,
        session.principal.org_id,
        session.principal.actor,
        "user.invite",
        invitation_id,
        {"email": email, "role": body.role},
    )
    subject, text = identity.invitation_mail(state, session.principal.org_id, body.role, token, expires_at)
    # Sent before the transaction commits: an invitation nobody received is rolled back with the error.
    await identity.send(state, email, subject, text)
    return InvitationOut(**created)


@router.get("/users/invitations", response_model=list[InvitationOut], summary="Invitations (newest first)")
async def list_invitations(session: Admin):
    return await repository.rows_of(
        await session.conn(),
        f"SELECT {_INVITATION_COLUMNS} FROM ops.user_tokens WHERE purpose = 'invite'"
        " ORDER BY created_at DESC LIMIT 1000",
    )


@router.delete(
    "/users/invitations/{invitation_id}",
    response_model=InvitationOut,
    summary="Withdraw an invitation (its link stops working)",
    responses=error_responses(404),
)
async def revoke_invitation(session: Admin, invitation_id: Annotated[str, Path(pattern=r"^[0-9a-f]{1,64}$")]):
    conn = await session.conn()
    rows = await repository.rows_of(
        conn,
        f"UPDATE ops.user_tokens SET revoked_at = coalesce(revoked_at, now())"
        f" WHERE token_id = %s AND purpose = 'invite' RETURNING {_INVITATION_COLUMNS}",
        (invitation_id,),
    )
    if not rows:
        raise ApiError(404, "not_found", "no such invitation in your organization")
    await repository.audit(conn, session.principal.org_id, session.principal.actor, "invitation.revoke", invitation_id)
    return rows[0]


# --- users ----------------------------------------------------------------------------------------------------
async def _user_row(session: OrgSession, user_id: str) -> dict:
    rows = await repository.rows_of(
        await session.conn(), f"SELECT {_USER_COLUMNS} FROM ops.users WHERE user_id = %s", (user_id,)
    )
    if not rows:
        raise ApiError(404, "not_found", "no such user in your organization")
    return rows[0]


async def _other_active_admins(session: OrgSession, user_id: str) -> int:
    row = await (
        await (await session.conn()).execute(
            "SELECT count(*) FROM ops.users WHERE role = 'admin' AND is_active AND user_id <> %s", (user_id,)
        )
    ).fetchone()
    return int(row[0]) if row else 0


@router.post(
    "/users/{user_id}/deactivate",
    response_model=UserOut,
    summary="Deactivate a user: no more logins; every session and API key of the user is revoked",
    responses=error_responses(404, 409),
)
async def deactivate_user(session: Admin, user_id: UserId):
    user = await _user_row(session, user_id)
    if user_id == session.principal.subject_id:
        raise ApiError(409, "conflict", "you cannot deactivate yourself")
    if user["role"] == "admin" and user["is_active"] and await _other_active_admins(session, user_id) == 0:
        raise ApiError(409, "conflict", "the organization's last active admin cannot be deactivated")
    conn = await session.conn()
    rows = await repository.rows_of(
        conn,
        f"UPDATE ops.users SET is_active = false, deactivated_at = coalesce(deactivated_at, now())"
        f" WHERE user_id = %s RETURNING {_USER_COLUMNS}",
        (user_id,),
    )
    revoked = await identity.revoke_user_credentials(conn, session.state, user_id)
    await repository.audit(conn, session.principal.org_id, session.principal.actor, "user.deactivate", user_id, revoked)
    return rows[0]


@router.post(
    "/users/{user_id}/reactivate",
    response_model=UserOut,
    summary="Reactivate a deactivated user (they log in again; nothing revoked comes back)",
    responses=error_responses(404),
)
async def reactivate_user(session: Admin, user_id: UserId):
    await _user_row(session, user_id)
    conn = await session.conn()
    rows = await repository.rows_of(
        conn,
        f"UPDATE ops.users SET is_active = true, deactivated_at = NULL WHERE user_id = %s RETURNING {_USER_COLUMNS}",
        (user_id,),
    )
    await repository.audit(conn, session.principal.org_id, session.principal.actor, "user.reactivate", user_id)
    return rows[0]


@router.patch(
    "/users/{user_id}",
    response_model=UserOut,
    summary="Change a user's role; the user's sessions and API keys are revoked (tokens carry the role)",
    responses=error_responses(404, 409),
)
async def change_role(session: Admin, user_id: UserId, body: RoleChange):
    user = await _user_row(session, user_id)
    if user["role"] == body.role:
        return user
    if user["role"] == "admin" and await _other_active_admins(session, user_id) == 0:
        raise ApiError(409, "conflict", "the organization's last active admin cannot lose the admin role")
    conn = await session.conn()
    rows = await repository.rows_of(
        conn, f"UPDATE ops.users SET role = %s WHERE user_id = %s RETURNING {_USER_COLUMNS}", (body.role, user_id)
    )
    revoked = await identity.revoke_user_credentials(conn, session.state, user_id)
    await repository.audit(
        conn,
        session.principal.org_id,
        session.principal.actor,
        "user.role_change",
        user_id,
        {"from": user["role"], "to": body.role} | revoked,
    )
    return rows[0]


@router.post(
    "/users/{user_id}/mfa/reset",
    response_model=Ok,
    summary="Remove a user's MFA (lost device); their sessions and API keys are revoked",
    responses=error_responses(404),
)
async def reset_mfa(session: Admin, user_id: UserId) -> Ok:
    await _user_row(session, user_id)
    conn = await session.conn()
    await conn.execute("SELECT api_auth.mfa_disable(%s)", (user_id,))
    revoked = await identity.revoke_user_credentials(conn, session.state, user_id)
    await repository.audit(conn, session.principal.org_id, session.principal.actor, "mfa.reset", user_id, revoked)
    return Ok()


# --- policy ---------------------------------------------------------------------------------------------------
@router.get("/identity-policy", response_model=IdentityPolicy, summary="The organization's MFA and session policy")
async def get_policy(session: Admin) -> IdentityPolicy:
    rows = await repository.rows_of(
        await session.conn(),
        "SELECT mfa_required, session_absolute_seconds, session_idle_seconds FROM ops.identity_policies",
    )
    return IdentityPolicy(**rows[0]) if rows else IdentityPolicy()


@router.put(
    "/identity-policy",
    response_model=IdentityPolicy,
    summary="Set the MFA requirement (applies at each user's next login) and session lifetimes (new sessions)",
)
async def put_policy(session: Admin, body: IdentityPolicy) -> IdentityPolicy:
    if body.session_idle_seconds > body.session_absolute_seconds:
        raise ApiError(422, "invalid_policy", "session_idle_seconds: must not exceed session_absolute_seconds")
    conn = await session.conn()
    await conn.execute(
        """INSERT INTO ops.identity_policies (org_id, mfa_required, session_absolute_seconds, session_idle_seconds,
                                              updated_by)
           VALUES (%s, %s, %s, %s, %s)
           ON CONFLICT (org_id) DO UPDATE SET mfa_required = excluded.mfa_required,
               session_absolute_seconds = excluded.session_absolute_seconds,
               session_idle_seconds = excluded.session_idle_seconds, updated_at = now(),
               updated_by = excluded.updated_by""",
        (
            session.principal.org_id,
            body.mfa_required,
            body.session_absolute_seconds,
            body.session_idle_seconds,
            session.principal.actor,
        ),
    )
    await repository.audit(
        conn,
        session.principal.org_id,
        session.principal.actor,
        "identity_policy.update",
        session.principal.org_id,
        body.model_dump(),
    )
    return body


# --- OIDC provider --------------------------------------------------------------------------------------------
def _redirect_uri(session: OrgSession) -> str:
    return f"{session.state.settings.resolved_public_url}{API_PREFIX}/auth/sso/callback"


def _provider_out(session: OrgSession, row: dict) -> OidcProviderOut:
    return OidcProviderOut(
        org_id=row["org_id"],
        issuer=row["issuer"],
        client_id=row["client_id"],
        has_client_secret=row["client_secret_enc"] is not None,
        scopes=row["scopes"],
        groups_claim=row["groups_claim"],
        group_roles=row["group_roles"],
        default_role=row["default_role"],
        jit_provisioning=row["jit_provisioning"],
        enabled=row["enabled"],
        redirect_uri=_redirect_uri(session),
    )


_PROVIDER_COLUMNS = (
    "org_id, issuer, client_id, client_secret_enc, scopes, groups_claim, group_roles, default_role,"
    " jit_provisioning, enabled"
)


@router.get(
    "/oidc-provider",
    response_model=OidcProviderOut,
    summary="The organization's OIDC single sign-on settings",
    responses=error_responses(404),
)
async def get_provider(session: Admin) -> OidcProviderOut:
    rows = await repository.rows_of(await session.conn(), f"SELECT {_PROVIDER_COLUMNS} FROM ops.oidc_providers")
    if not rows:
        raise ApiError(404, "not_found", "no OIDC provider is configured for your organization")
    return _provider_out(session, rows[0])


@router.put(
    "/oidc-provider",
    response_model=OidcProviderOut,
    summary="Configure OIDC single sign-on (the issuer's discovery document must answer; the client secret is "
    "stored encrypted and never shown again)",
    responses=error_responses(409),
)
async def put_provider(session: Admin, body: OidcProviderIn) -> OidcProviderOut:
    if body.enabled:
        from serving_api.routers.sso import provider_discovery

        try:
            await provider_discovery(session.state, body.issuer.rstrip("/"), refresh=True)
        except ApiError as exc:
            raise ApiError(422, "invalid_provider", f"issuer: discovery failed: {exc.message}") from exc
    sealed = security.seal(session.state.jwt_secret, body.client_secret) if body.client_secret else None
    conn = await session.conn()
    rows = await repository.rows_of(
        conn,
        f"""INSERT INTO ops.oidc_providers (org_id, issuer, client_id, client_secret_enc, scopes, groups_claim,
                                            group_roles, default_role, jit_provisioning, enabled, updated_by)
            VALUES (%s, %s, %s, %s, %s, %s, %s::jsonb, %s, %s, %s, %s)
            ON CONFLICT (org_id) DO UPDATE SET issuer = excluded.issuer, client_id = excluded.client_id,
                client_secret_enc = excluded.client_secret_enc, scopes = excluded.scopes,
                groups_claim = excluded.groups_claim, group_roles = excluded.group_roles,
                default_role = excluded.default_role, jit_provisioning = excluded.jit_provisioning,
                enabled = excluded.enabled, updated_at = now(), updated_by = excluded.updated_by
            RETURNING {_PROVIDER_COLUMNS}""",
        (
            session.principal.org_id,
            body.issuer.rstrip("/"),
            body.client_id,
            sealed,
            body.scopes,
            body.groups_claim,
            json.dumps(body.group_roles),
            body.default_role,
            body.jit_provisioning,
            body.enabled,
            session.principal.actor,
        ),
    )
    await repository.audit(
        conn,
        session.principal.org_id,
        session.principal.actor,
        "oidc_provider.update",
        session.principal.org_id,
        body.model_dump(exclude={"client_secret"}) | {"client_secret_set": sealed is not None},
    )
    return _provider_out(session, rows[0])


@router.delete(
    "/oidc-provider", response_model=Ok, summary="Remove OIDC single sign-on", responses=error_responses(404)
)
async def delete_provider(session: Admin) -> Ok:
    conn = await session.conn()
    rows = await repository.rows_of(conn, "DELETE FROM ops.oidc_providers RETURNING org_id")
    if not rows:
        raise ApiError(404, "not_found", "no OIDC provider is configured for your organization")
    await repository.audit(
        conn, session.principal.org_id, session.principal.actor, "oidc_provider.delete", session.principal.org_id
    )
    return Ok()


# --- SAML provider --------------------------------------------------------------------------------------------
_SAML_COLUMNS = (
    "org_id, idp_entity_id, idp_sso_url, idp_slo_url, idp_certificate, email_attribute, groups_attribute,"
    " group_roles, default_role, jit_provisioning, enabled"
)


def _certificate_pem(text: str) -> tuple[str, datetime]:
    """The certificate as PEM and its expiry; 422 naming the field when it is not one X.509 certificate."""
    body = text.strip()
    if "-----BEGIN CERTIFICATE-----" not in body:
        body = "-----BEGIN CERTIFICATE-----\n" + "".join(body.split()) + "\n-----END CERTIFICATE-----"
    try:
        cert = x509.load_pem_x509_certificate(body.encode())
    except ValueError as exc:
        raise ApiError(422, "invalid_provider", "idp_certificate: not a PEM X.509 certificate") from exc
    return cert.public_bytes(serialization.Encoding.PEM).decode(), cert.not_valid_after_utc


def _saml_out(session: OrgSession, row: dict) -> SamlProviderOut:
    from serving_api.routers.saml import sp_urls

    urls = sp_urls(session.state, row["org_id"])
    _, expires_at = _certificate_pem(row["idp_certificate"])
    return SamlProviderOut(
        **row,
        idp_certificate_expires_at=expires_at,
        sp_entity_id=urls.entity_id,
        acs_url=urls.acs_url,
        metadata_url=urls.metadata_url,
        login_url=f"{session.state.settings.resolved_public_url}{API_PREFIX}/auth/saml/{row['org_id']}/login",
    )


@router.get(
    "/saml-provider",
    response_model=SamlProviderOut,
    summary="The organization's SAML single sign-on settings and the SP addresses to register at the IdP",
    responses=error_responses(404),
)
async def get_saml_provider(session: Admin) -> SamlProviderOut:
    rows = await repository.rows_of(await session.conn(), f"SELECT {_SAML_COLUMNS} FROM ops.saml_providers")
    if not rows:
        raise ApiError(404, "not_found", "no SAML provider is configured for your organization")
    return _saml_out(session, rows[0])


@router.put(
    "/saml-provider",
    response_model=SamlProviderOut,
    summary="Configure SAML single sign-on (IdP entity id, SSO and SLO URLs, signing certificate, attributes, "
    "group -> role mapping)",
)
async def put_saml_provider(session: Admin, body: SamlProviderIn) -> SamlProviderOut:
    from onelogin.saml2.errors import OneLogin_Saml2_Error

    from serving_api.routers.saml import saml_settings

    certificate, _ = _certificate_pem(body.idp_certificate)
    values = body.model_dump() | {"idp_certificate": certificate, "org_id": session.principal.org_id}
    try:
        saml_settings(session.state, values)
    except OneLogin_Saml2_Error as exc:
        raise ApiError(422, "invalid_provider", f"the SAML settings are not usable: {exc}") from exc
    conn = await session.conn()
    rows = await repository.rows_of(
        conn,
        f"""INSERT INTO ops.saml_providers (org_id, idp_entity_id, idp_sso_url, idp_slo_url, idp_certificate,
                                            email_attribute, groups_attribute, group_roles, default_role,
                                            jit_provisioning, enabled, updated_by)
            VALUES (%s, %s, %s, %s, %s, %s, %s, %s::jsonb, %s, %s, %s, %s)
            ON CONFLICT (org_id) DO UPDATE SET idp_entity_id = excluded.idp_entity_id,
                idp_sso_url = excluded.idp_sso_url, idp_slo_url = excluded.idp_slo_url,
                idp_certificate = excluded.idp_certificate, email_attribute = excluded.email_attribute,
                groups_attribute = excluded.groups_attribute, group_roles = excluded.group_roles,
                default_role = excluded.default_role, jit_provisioning = excluded.jit_provisioning,
                enabled = excluded.enabled, updated_at = now(), updated_by = excluded.updated_by
            RETURNING {_SAML_COLUMNS}""",
        (
            session.principal.org_id,
            body.idp_entity_id,
            body.idp_sso_url,
            body.idp_slo_url,
            certificate,
            body.email_attribute,
            body.groups_attribute,
            json.dumps(body.group_roles),
            body.default_role,
            body.jit_provisioning,
            body.enabled,
            session.principal.actor,
        ),
    )
    await repository.audit(
        conn,
        session.principal.org_id,
        session.principal.actor,
        "saml_provider.update",
        session.principal.org_id,
        body.model_dump(exclude={"idp_certificate"}),
    )
    return _saml_out(session, rows[0])


@router.delete(
    "/saml-provider", response_model=Ok, summary="Remove SAML single sign-on", responses=error_responses(404)
)
async def delete_saml_provider(session: Admin) -> Ok:
    conn = await session.conn()
    rows = await repository.rows_of(conn, "DELETE FROM ops.saml_providers RETURNING org_id")
    if not rows:
        raise ApiError(404, "not_found", "no SAML provider is configured for your organization")
    await repository.audit(
        conn, session.principal.org_id, session.principal.actor, "saml_provider.delete", session.principal.org_id
    )
    return Ok()
