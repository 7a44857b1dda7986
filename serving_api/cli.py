"""`optibid orgs|users|apikeys|auth …`: bootstrap organizations, users and API keys; rotate token keys.

What belongs here: the Typer apps that `app/cli.py` mounts as `optibid orgs`, `optibid users`,
`optibid apikeys` and `optibid auth`, and the functions behind them (also used by the demo and the tests).
What does not: anything a request does; the API's own endpoints for the same objects are in
`serving_api/routers/admin.py`.

Writes go straight to Postgres as the migrating user (there is no caller organization to scope to yet) and
are recorded in ops.audit_log with actor `cli`.
"""

from __future__ import annotations

import json
import uuid

import psycopg
import typer

from infra import db
from infra.services import warehouse_url
from infra.settings import get_settings
from serving_api import security

app = typer.Typer(help="Organizations, users and API keys of the serving API.", no_args_is_help=True)
orgs_app = typer.Typer(help="Organizations.", no_args_is_help=True)
users_app = typer.Typer(help="Users.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys.", no_args_is_help=True)
auth_app = typer.Typer(help="Access-token signing keys.", no_args_is_help=True)
app.add_typer(orgs_app, name="orgs")
app.add_typer(users_app, name="users")
app.add_typer(keys_app, name="apikeys")
app.add_typer(auth_app, name="auth")

ROLES = [r.value for r in security.Role]


def _database_url() -> str:
    url = warehouse_url(get_settings())
    db.migrate(url)
    return url


def _audit(conn: psycopg.Connection, org_id: str, action: str, target: str, details: dict) -> None:
    conn.execute(
        "INSERT INTO ops.audit_log (org_id, actor, action, target, details) VALUES (%s, 'cli', %s, %s, %s)",
        (org_id, action, target, json.dumps(details)),
    )


def create_org(database_url: str, org_id: str, name: str, country: str) -> None:
    with db.connect(database_url) as conn:
        conn.execute(
            """INSERT INTO silver.ref__organizations (org_id, name, country) VALUES (%s, %s, %s)
               ON CONFLICT (org_id) DO UPDATE SET name = excluded.name, country = excluded.country""",
            (org_id, name, country),
        )
        _audit(conn, org_id, "org.create", org_id, {"name": name})


def create_user(database_url: str, org_id: str, email: str, role: str, password: str) -> str:
    """The new user's id; PasswordPolicyError for a weak password, ValueError for an unknown role."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}")
    password_hash = security.hash_password(password)
    user_id = uuid.uuid4().hex
    with db.connect(database_url) as conn:
        conn.execute(
            "INSERT INTO ops.users (user_id, org_id, email, role, password_hash) VALUES (%s, %s, %s, %s, %s)",
            (user_id, org_id, email.strip().lower(), role, password_hash),
        )
        _audit(conn, org_id, "user.create", user_id, {"email": email.strip().lower(), "role": role})
    return user_id


def create_api_key(
    database_url: str, org_id: str, name: str, role: str, rate_limit_per_minute: int = 600
) -> str:
    """The new key (shown once; only its digest is stored)."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}")
    key, prefix, digest = security.new_api_key()
    key_id = uuid.uuid4().hex
    with db.connect(database_url) as conn:
        conn.execute(
            """INSERT INTO ops.api_keys (key_id, org_id, name, prefix, key_hash, role, rate_limit_per_minute,
                                         created_by) VALUES (%s, %s, %s, %s, %s, %s, %s, 'cli')""",
            (key_id, org_id, name, prefix, digest, role, rate_limit_per_minute),
        )
        _audit(conn, org_id, "api_key.create", key_id, {"name": name, "role": role})
    return key


@orgs_app.command("create")
def orgs_create(
    org_id: str = typer.Option(...), name: str = typer.Option(...), country: str = typer.Option("US")
) -> None:
    """Create (or rename) an organization."""
    create_org(_database_url(), org_id, name, country)
    typer.echo(f"organization {org_id} ready")


@users_app.command("create")
def users_create(
    org: str = typer.Option(..., help="Organization id"),
    email: str = typer.Option(...),
    role: str = typer.Option("viewer", help="/".join(ROLES)),
    password: str = typer.Option(..., prompt=True, hide_input=True, confirmation_prompt=True),
) -> None:
    """Create a user (password: 12+ characters, three of lower/upper/digit/symbol)."""
    try:
        user_id = create_user(_database_url(), org, email, role, password)
    except (security.PasswordPolicyError, ValueError, psycopg.errors.IntegrityError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"user {user_id} created")


@keys_app.command("create")
def apikeys_create(
    org: str = typer.Option(..., help="Organization id"),
    name: str = typer.Option(...),
    role: str = typer.Option("viewer", help="/".join(ROLES)),
    rate_limit: int = typer.Option(600, help="Requests per minute"),
) -> None:
    """Create an API key and print it once."""
    try:
        key = create_api_key(_database_url(), org, name, role, rate_limit)
    except (ValueError, psycopg.errors.IntegrityError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(key)


@keys_app.command("revoke")
def apikeys_revoke(key_id: str) -> None:
    """Revoke an API key by id."""
    with db.connect(_database_url()) as conn:
        row = conn.execute(
            "UPDATE ops.api_keys SET revoked_at = now() WHERE key_id = %s RETURNING org_id, prefix", (key_id,)
        ).fetchone()
        if row is None:
            typer.echo("error: no such key", err=True)
            raise typer.Exit(1)
        conn.execute("SELECT pg_notify('optibid_auth', %s)", (json.dumps({"api_key_prefix": row[1]}),))
        _audit(conn, row[0], "api_key.revoke", key_id, {})
    typer.echo(f"key {key_id} revoked")


@auth_app.command("rotate-keys")
def auth_rotate_keys() -> None:
    """Start signing access tokens with a new key of the home's keyring (the old one verifies for the
    rotation window, OPTIBID_JWT_KEY_OVERLAP_SECONDS). Keys given by OPTIBID_JWT_PRIVATE_KEYS are rotated by
    changing that variable instead."""
    from serving_api.token_keys import HomeKeyring

    settings = get_settings()
    if settings.jwt_private_keys:
        typer.echo("error: keys come from OPTIBID_JWT_PRIVATE_KEYS: prepend a new key there instead", err=True)
        raise typer.Exit(1)
    ring = HomeKeyring(
        settings.home_dir / "jwt_keys",
        settings.jwt_key_rotation_days * 86400,
        float(settings.jwt_key_overlap_seconds),
    )
    kid = ring.rotate()
    typer.echo(f"new signing key {kid}; running API processes pick it up on their next unknown kid or rotation check")


@users_app.command("deactivate")
def users_deactivate(email: str) -> None:
    """Deactivate a user and revoke their sessions and API keys (e.g. the last admin, locked out of the API)."""
    with db.connect(_database_url()) as conn:
        row = conn.execute(
            "UPDATE ops.users SET is_active = false, deactivated_at = coalesce(deactivated_at, now())"
            " WHERE lower(email) = lower(%s) RETURNING user_id, org_id",
            (email.strip(),),
        ).fetchone()
        if row is None:
            typer.echo("error: no such user", err=True)
            raise typer.Exit(1)
        revoked = conn.execute("SELECT kind, id FROM api_auth.revoke_user_credentials(%s, NULL)", (row[0],)).fetchall()
        for kind, ident in revoked:
            payload = {"family_id": ident} if kind == "family" else {"api_key_prefix": ident}
            conn.execute("SELECT pg_notify('optibid_auth', %s)", (json.dumps(payload),))
        _audit(conn, row[1], "user.deactivate", row[0], {"revoked": len(revoked)})
    typer.echo(f"user {row[0]} deactivated; {len(revoked)} sessions and keys revoked")
