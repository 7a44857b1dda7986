"""Administration within the caller's organization: users, API keys, audit log (admin role only)."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import date
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query
from psycopg import errors as pg_errors

from infra.signals import AUTH_CHANNEL
from serving_api import repository, security
from serving_api.deps import OrgSession, scoped
from serving_api.errors import STANDARD_ERRORS, ApiError, error_responses
from serving_api.models import ApiKeyCreate, ApiKeyCreated, ApiKeyOut, AuditEntry, UserCreate, UserOut
from serving_api.security import Permission

router = APIRouter(tags=["admin"], responses=error_responses(*STANDARD_ERRORS))
Admin = Annotated[OrgSession, Depends(scoped(Permission.admin))]
_KEY_COLUMNS = (
    "key_id, org_id, name, prefix, role, rate_limit_per_minute, created_at, expires_at, revoked_at, last_used_at"
)


@router.get("/users", response_model=list[UserOut], summary="Users of the organization")
async def list_users(session: Admin):
    return await repository.rows_of(
        await session.conn(),
        "SELECT user_id, org_id, email, role, is_active, auth_source, deactivated_at FROM ops.users ORDER BY email",
    )


@router.post("/users", response_model=UserOut, status_code=201, summary="Create a user", responses=error_responses(409))
async def create_user(session: Admin, body: UserCreate):
    try:
        password_hash = security.hash_password(body.password)
    except security.PasswordPolicyError as exc:
        raise ApiError(422, "weak_password", str(exc)) from exc
    conn = await session.conn()
    user_id = uuid.uuid4().hex
    try:
        async with conn.transaction():
            await conn.execute(
                "INSERT INTO ops.users (user_id, org_id, email, role, password_hash) VALUES (%s, %s, %s, %s, %s)",
                (user_id, session.principal.org_id, body.email.lower(), body.role, password_hash),
            )
    except pg_errors.UniqueViolation as exc:
        raise ApiError(409, "conflict", "a user with this e-mail exists") from exc
    await repository.audit(
        conn,
        session.principal.org_id,
        session.principal.actor,
        "user.create",
        user_id,
        {"email": body.email.lower(), "role": body.role},
    )
    return UserOut(
        user_id=user_id,
        org_id=session.principal.org_id,
        email=body.email.lower(),
        role=body.role,
        is_active=True,
    )


@router.get("/api-keys", response_model=list[ApiKeyOut], summary="API keys of the organization")
async def list_api_keys(session: Admin):
    return await repository.rows_of(
        await session.conn(), f"SELECT {_KEY_COLUMNS} FROM ops.api_keys ORDER BY created_at"
    )


@router.post("/api-keys", response_model=ApiKeyCreated, status_code=201, summary="Create an API key")
async def create_api_key(session: Admin, body: ApiKeyCreate):
    key, prefix, digest = security.new_api_key()
    conn = await session.conn()
    key_id = uuid.uuid4().hex
    rows = await repository.rows_of(
        conn,
        f"""INSERT INTO ops.api_keys (key_id, org_id, name, prefix, key_hash, role, rate_limit_per_minute,
                                      created_by, expires_at)
            VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING {_KEY_COLUMNS}""",
        (
            key_id,
            session.principal.org_id,
            body.name,
            prefix,
            digest,
            body.role,
            body.rate_limit_per_minute,
            session.principal.actor,
            body.expires_at,
        ),
    )
    await repository.audit(
        conn,
        session.principal.org_id,
        session.principal.actor,
        "api_key.create",
        key_id,
        {"name": body.name, "role": body.role},
    )
    return {**rows[0], "api_key": key}


@router.delete(
    "/api-keys/{key_id}",
    response_model=ApiKeyOut,
    summary="Revoke an API key",
    responses=error_responses(404),
)
async def revoke_api_key(session: Admin, key_id: Annotated[str, Path(pattern=r"^[0-9a-f]{1,64}$")]):
    conn = await session.conn()
    rows = await repository.rows_of(
        conn,
        f"UPDATE ops.api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE key_id = %s RETURNING {_KEY_COLUMNS}",
        (key_id,),
    )
    if not rows:
        raise ApiError(404, "not_found", "no such API key in your organization")
    await conn.execute("SELECT pg_notify(%s, %s)", (AUTH_CHANNEL, json.dumps({"api_key_prefix": rows[0]["prefix"]})))
    session.state.api_keys.pop(rows[0]["prefix"], None)
    await repository.audit(conn, session.principal.org_id, session.principal.actor, "api_key.revoke", key_id)
    return rows[0]


@router.get("/audit", response_model=list[AuditEntry], summary="Audit log of the organization (newest first)")
async def audit_log(session: Admin, limit: Annotated[int, Query(ge=1, le=1000)] = 100):
    conn = await session.conn()
    rows = await repository.rows_of(
        conn,
        "SELECT id, at, org_id, actor, action, target, details FROM ops.audit_log ORDER BY id DESC LIMIT %s",
        (limit,),
    )
    if len(rows) < limit:
        # Entries past the hot retention live in the cold tier (infra/retention.py): older than every hot one.
        days = [
            date.fromisoformat(r["day"])
            for r in await repository.rows_of(
                conn,
                "SELECT day FROM ops.archived_partitions WHERE table_name = 'ops.audit_log' AND restored_at IS NULL",
            )
        ]
        if days:
            from infra.retention import archived_audit_entries

            rows += await asyncio.to_thread(
                archived_audit_entries,
                session.state.settings.resolved_archive_uri,
                days,
                session.principal.org_id,
                limit - len(rows),
            )
    return rows
