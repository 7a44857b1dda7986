"""Postgres access for BI tools: read-only roles, per-organisation row-level security, friendly views.

Project convention (applies to every table with an `org_id text` column):
- `ALTER TABLE ... ENABLE ROW LEVEL SECURITY` and a policy
  `USING (org_id IS NULL OR org_id = current_setting('optibid.org_id', true))`;
- an organisation role `org_<id>` has `ALTER ROLE ... SET optibid.org_id = '<id>'` (applied at login, so
  these roles are LOGIN roles; set passwords out of band), sees public rows plus its own, writes nothing;
- `bi_reader` sees every row, read-only (an extra permissive policy for it, SELECT grants only, and
  `default_transaction_read_only`).
The table owner (the pipeline/dbt user) is not subject to RLS, so loading is unaffected.

Hardening: `optibid.org_id` is an ordinary custom setting, so any session can `SET` it to another
organisation's id, and an org role that is a member of `bi_reader` (the gold layer's convention) could
`SET ROLE bi_reader` and reach its `USING (true)` policy. So an extra RESTRICTIVE policy, for every role,
binds the rows of a session that LOGGED IN as an org role to that organisation
(`org_id IS NULL OR NOT starts_with(session_user, '<prefix>') OR '<prefix>' || org_id = session_user`):
`session_user` is the login role, which neither `SET optibid.org_id` nor `SET ROLE` changes. The
setting-based policy stays the project-wide convention for connections (e.g. the API's pool role) that set
it on behalf of an authenticated organisation.

`ensure_bi_roles` is idempotent and safe to run concurrently with itself or when the roles exist already
(roles are cluster-wide in Postgres). Re-run it after every dbt build: dbt recreates its tables, which drops
grants, policies and (via CASCADE) the `bi.*` views on top of them.

The `bi` schema holds one view per registered gold table with friendly column names; `COMMENT ON` every
view and column comes from the `ingestion.bi.tables` registry, so a BI tool's schema browser explains them.
Views use `security_invoker` (Postgres >= 15) so RLS applies to the querying role, not the view owner.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import psycopg
from psycopg import errors, sql

from ingestion.bi.tables import TABLES, TableSpec

ORG_ID = re.compile(r"^[a-z0-9][a-z0-9_]{0,39}$")
ORG_SETTING = "optibid.org_id"
ORG_POLICY = "optibid_org_isolation"
READER_POLICY = "optibid_bi_reader_all"
BINDING_POLICY = "optibid_org_role_binding"


@dataclass(frozen=True)
class BiRoles:
    """Role names used for BI access; parameterisable so tests can prefix them (roles are cluster-wide)."""

    reader: str = "bi_reader"
    org_prefix: str = "org_"
    bi_schema: str = "bi"

    def org_role(self, org_id: str) -> str:
        if not ORG_ID.match(org_id):
            raise ValueError(f"organisation id must match {ORG_ID.pattern}, got {org_id!r}")
        return f"{self.org_prefix}{org_id}"


@dataclass(frozen=True)
class BiAccessResult:
    """What `ensure_bi_roles` set up."""

    roles: tuple[str, ...]
    tables: tuple[str, ...]
    rls_tables: tuple[str, ...]
    views: tuple[str, ...]
    missing_tables: tuple[str, ...]


def _role_exists(conn: psycopg.Connection, role: str) -> bool:
    return conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone() is not None


def _ensure_role(conn: psycopg.Connection, role: str) -> None:
    if _role_exists(conn, role):
        return
    try:
        with conn.transaction():
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN NOINHERIT").format(sql.Identifier(role)))
    except errors.DuplicateObject:
        pass  # created concurrently by another process: that is the state we want


def _table_exists(conn: psycopg.Connection, spec: TableSpec) -> bool:
    return conn.execute("SELECT to_regclass(%s) IS NOT NULL", (spec.qualified_pg_name,)).fetchone()[0]  # type: ignore[index]


def friendly_view_sql(spec: TableSpec, bi_schema: str, invoker: bool) -> sql.Composed:
    """CREATE OR REPLACE VIEW bi.<view> with the registry's friendly column names."""
    cols = sql.SQL(", ").join(
        sql.SQL("{} AS {}").format(sql.Identifier(c.name), sql.Identifier(c.bi_name)) for c in spec.columns
    )
    options = sql.SQL(" WITH (security_invoker = true)") if invoker else sql.SQL("")
    return sql.SQL("CREATE OR REPLACE VIEW {}.{}{} AS SELECT {} FROM {}.{}").format(
        sql.Identifier(bi_schema),
        sql.Identifier(spec.bi_view),
        options,
        cols,
        sql.Identifier(spec.pg_schema),
        sql.Identifier(spec.pg_table),
    )


def comment_statements(spec: TableSpec, bi_schema: str) -> list[sql.Composed]:
    """COMMENT ON the view and each of its columns, from the registry."""
    view = sql.SQL("{}.{}").format(sql.Identifier(bi_schema), sql.Identifier(spec.bi_view))
    stmts = [
        sql.SQL("COMMENT ON VIEW {} IS {}").format(
            view, sql.Literal(f"{spec.description} Grain: {spec.grain}. Source: {spec.qualified_pg_name}.")
        )
    ]
    for col in spec.columns:
        stmts.append(
            sql.SQL("COMMENT ON COLUMN {}.{} IS {}").format(
                view,
                sql.Identifier(col.bi_name),
                sql.Literal(f"{col.description} (source column {col.name})"),
            )
        )
    return stmts


def ensure_bi_roles(
    conn: psycopg.Connection,
    orgs: Iterable[str],
    *,
    roles: BiRoles = BiRoles(),
    specs: Sequence[TableSpec] | None = None,
) -> BiAccessResult:
    """Create/refresh the BI roles, grants, RLS policies and commented `bi.*` views; idempotent.

    Tables of the registry that do not exist yet are skipped and listed in `missing_tables`.
    Must run as a role that owns the gold tables (or a superuser) and may create roles.
    """
    specs = list(specs or TABLES.values())
    org_roles = [roles.org_role(o) for o in orgs]
    all_roles = [roles.reader, *org_roles]
    invoker = conn.info.server_version >= 150000
    if not invoker:
        raise RuntimeError("bi views need Postgres >= 15 (security_invoker) so RLS applies to the reader")
    for role in all_roles:
        _ensure_role(conn, role)
    present = [s for s in specs if _table_exists(conn, s)]
    missing = tuple(s.qualified_pg_name for s in specs if s not in present)
    idents = sql.SQL(", ").join(sql.Identifier(r) for r in all_roles)
    with conn.transaction():
        conn.execute(
            sql.SQL("ALTER ROLE {} SET default_transaction_read_only = on").format(
                sql.Identifier(roles.reader)
            )
        )
        for org, role in zip(orgs, org_roles, strict=True):
            conn.execute(
                sql.SQL("ALTER ROLE {} SET {} = {}").format(
                    sql.Identifier(role), sql.SQL(ORG_SETTING), sql.Literal(org)
                )
            )
            conn.execute(
                sql.SQL("ALTER ROLE {} SET default_transaction_read_only = on").format(sql.Identifier(role))
            )
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(roles.bi_schema)))
        conn.execute(
            sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(roles.bi_schema), idents)
        )
        for schema in sorted({s.pg_schema for s in present}):
            conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(schema), idents))
        rls: list[str] = []
        for spec in present:
            table = sql.SQL("{}.{}").format(sql.Identifier(spec.pg_schema), sql.Identifier(spec.pg_table))
            conn.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(table, idents))
            if spec.has_org_column:
                rls.append(spec.qualified_pg_name)
                conn.execute(sql.SQL("ALTER TABLE {} ENABLE ROW LEVEL SECURITY").format(table))
                for policy in (ORG_POLICY, READER_POLICY, BINDING_POLICY):
                    conn.execute(
                        sql.SQL("DROP POLICY IF EXISTS {} ON {}").format(sql.Identifier(policy), table)
                    )
                conn.execute(
                    sql.SQL(
                        "CREATE POLICY {} ON {} FOR SELECT USING "
                        "(org_id IS NULL OR org_id = current_setting({}, true))"
                    ).format(sql.Identifier(ORG_POLICY), table, sql.Literal(ORG_SETTING))
                )
                conn.execute(
                    sql.SQL("CREATE POLICY {} ON {} FOR SELECT TO {} USING (true)").format(
                        sql.Identifier(READER_POLICY), table, sql.Identifier(roles.reader)
                    )
                )
                conn.execute(
                    sql.SQL(
                        "CREATE POLICY {} ON {} AS RESTRICTIVE FOR SELECT USING "
                        "(org_id IS NULL OR NOT starts_with(session_user, {prefix}) "
                        "OR {prefix} || org_id = session_user)"
                    ).format(sql.Identifier(BINDING_POLICY), table, prefix=sql.Literal(roles.org_prefix))
                )
            conn.execute(friendly_view_sql(spec, roles.bi_schema, invoker))
            for stmt in comment_statements(spec, roles.bi_schema):
                conn.execute(stmt)
            conn.execute(
                sql.SQL("GRANT SELECT ON {}.{} TO {}").format(
                    sql.Identifier(roles.bi_schema), sql.Identifier(spec.bi_view), idents
                )
            )
    return BiAccessResult(
        roles=tuple(all_roles),
        tables=tuple(s.qualified_pg_name for s in present),
        rls_tables=tuple(rls),
        views=tuple(f"{roles.bi_schema}.{s.bi_view}" for s in present),
        missing_tables=missing,
    )
