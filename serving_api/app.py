"""The OptiBid serving API: `create_app(settings)` builds it; `app` is the instance uvicorn serves.

What belongs here: assembling the app (state, middleware, routers) and what its lifespan starts: the
warehouse connection (migrated once), the API's own database login, the connection pool and the listener.
What does not: endpoints (`serving_api/routers/<name>.py`, each exposing `router`; an endpoint family is one
module plus its name in `API_ROUTERS`), authentication and tenancy (`serving_api/deps.py`), and which
database the warehouse is (`infra.services.warehouse_url`).
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import hmac
import importlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import psycopg
from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from psycopg import AsyncConnection, sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import AsyncConnectionPool
from starlette.middleware.gzip import DEFAULT_EXCLUDED_CONTENT_TYPES, GZipMiddleware

from infra.services import warehouse_url
from infra.settings import Settings, get_settings
from serving_api import security
from serving_api.cache import ResponseCache
from serving_api.docs_ui import install_offline_docs
from serving_api.errors import install_error_handlers
from serving_api.exports import ALREADY_COMPRESSED_EXPORTS
from serving_api.fastpath import CachedReadFastPath
from serving_api.freshness import FreshnessReader
from serving_api.guard import RequestGuard, known_query_params
from serving_api.metrics import ApiMetrics, MetricsMiddleware
from serving_api.models import API_PREFIX
from serving_api.org_scope import API_ROLE, assume_api_role
from serving_api.solver import SolverProcesses
from serving_api.state import ApiOptions, ApiState, RateLimiter
from serving_api.streaming import Hub
from serving_api.token_keys import HomeKeyring, TokenKeys

API_LOGIN = "optibid_api_login"  # infra/sql/130_api_login.sql
log = logging.getLogger("serving_api")
# The routers mounted under API_PREFIX, in this order (the order of the OpenAPI document).
API_ROUTERS = [
    "auth",
    "reference",
    "market",
    "kpis",
    "forecasts",
    "optimization_results",
    "trading",
    "model_monitoring",
    "uploads",
    "freshness",
    "admin",
    "ws",
    "dashboard_ws",
    "dead_letters",
    "analytics",
    "on_demand_solves",
    "alerts",
    "account",
    "identity_admin",
    "sso",
    "similar_runs",
    "forecast_jobs",
    "forecast_quality",
    "saml",
]


def provision_api_login(owner_url: str, api_url: str) -> None:
    """Check, as the owner, that the user of `api_url` can become the API role and nothing else, then give it
    the URL's password (as a verifier computed here, so no plaintext reaches the server's statement log).

    The API refuses to start otherwise: serving as a superuser, a BYPASSRLS role or a table owner would
    bypass the row-level security that `OPTIBID_API_DATABASE_URL` exists to guarantee.
    """
    from infra import db

    params = conninfo_to_dict(api_url)
    login = str(params.get("user") or "")
    with db.connect(owner_url) as conn:
        row = conn.execute(
            """SELECT r.rolsuper OR r.rolbypassrls OR EXISTS (SELECT 1 FROM pg_class c WHERE c.relowner = r.oid),
                      pg_has_role(r.oid, %s, 'MEMBER'),
                      ARRAY(SELECT b.rolname::text FROM pg_roles b
                            WHERE b.oid <> r.oid AND b.rolname <> %s AND pg_has_role(r.oid, b.oid, 'MEMBER'))
               FROM pg_roles r WHERE r.rolname = %s""",
            (API_ROLE, API_ROLE, login),
        ).fetchone()
        privileged, can_be_api_role, other_roles = row or (False, False, [])
        if privileged or not can_be_api_role or other_roles:
            raise RuntimeError(
                f"OPTIBID_API_DATABASE_URL must name a login that can become {API_ROLE} and nothing else (not a "
                f"superuser, BYPASSRLS role or table owner): {login!r} is not one"
                + (f" (it can also become {', '.join(other_roles)})" if other_roles and not privileged else "")
                + "; see infra/sql/130_api_login.sql"
            )
        if params.get("password"):
            # Several workers start at once: one ALTER ROLE at a time (concurrent ones fail).
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('optibid.api_login'))")
            verifier = conn.pgconn.encrypt_password(str(params["password"]).encode(), login.encode())
            conn.execute(
                sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(login), sql.Literal(verifier.decode()))
            )


def derived_api_login_url(owner_url: str, secret: str) -> str:
    """The warehouse connection with the API's own login in place of the owner, and a password derived from
    the token secret (every worker of the server derives the same one)."""
    params = conninfo_to_dict(owner_url)
    params["user"] = API_LOGIN
    params["password"] = hmac.new(secret.encode(), API_LOGIN.encode(), hashlib.sha256).hexdigest()
    return make_conninfo(**params)


def _serving_url(owner_url: str, configured_url: str | None, secret: str) -> str:
    """What serves requests: the configured API login (checked, or the API refuses to start), else the API's own
    login on the warehouse, set up here, so that a connection which forgets `SET ROLE` fails closed by
    default. Only where the owner may not set that login up does the API serve as the owner with `SET ROLE`."""
    if configured_url:
        provision_api_login(owner_url, configured_url)
        return configured_url
    derived = derived_api_login_url(owner_url, secret)
    try:
        provision_api_login(owner_url, derived)
        with psycopg.connect(derived, connect_timeout=10):
            pass
    except (psycopg.Error, RuntimeError) as exc:
        log.warning(
            "serving as the warehouse owner with SET ROLE %s: the login %s could not be set up (%s); "
            "set OPTIBID_API_DATABASE_URL to a login of the API's own",
            API_ROLE,
            API_LOGIN,
            str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__,
        )
        return owner_url
    return derived


def _session_limits(settings: Settings) -> Callable[[AsyncConnection], Awaitable[None]]:
    """Pool `configure` hook: every pooled connection acts as the API role (never the owner), and none runs a
    statement, or idles in a transaction, forever."""

    async def configure(conn: AsyncConnection) -> None:
        await conn.set_autocommit(True)
        await conn.execute(
            "SELECT set_config('statement_timeout', %s, false),"
            " set_config('idle_in_transaction_session_timeout', %s, false)",
            (f"{settings.api_statement_timeout_ms}ms", f"{settings.api_idle_in_transaction_timeout_ms}ms"),
        )
        await assume_api_role(conn)
        await conn.set_autocommit(False)

    return configure


def token_keys_for(settings: Settings, legacy_secret: str) -> TokenKeys:
    """The access-token keys the settings name: `OPTIBID_JWT_PRIVATE_KEYS`, else the home's keyring."""
    overlap = float(settings.jwt_key_overlap_seconds)
    configured = settings.jwt_private_keys.get_secret_value() if settings.jwt_private_keys else None
    return TokenKeys(
        audience=settings.jwt_audience,
        issuer=settings.resolved_public_url,
        legacy_secret=legacy_secret,
        configured_pem=configured,
        home_keyring=None
        if configured
        else HomeKeyring(settings.home_dir / "jwt_keys", settings.jwt_key_rotation_days * 86400, overlap),
        overlap_seconds=overlap,
    )


def create_app(settings: Settings | None = None, options: ApiOptions | None = None) -> FastAPI:
    """A configured app; Postgres is connected (and migrated) when its lifespan starts."""
    settings = settings or get_settings()
    options = options or ApiOptions()
    secret = security.jwt_secret_for(
        settings.jwt_secret.get_secret_value() if settings.jwt_secret else None, settings.home_dir
    )
    limiter = RateLimiter(settings.home_dir / "run" / "api_rate_limits.bin")
    state = ApiState(
        settings=settings,
        options=options,
        jwt_secret=secret,
        limiter=limiter,
        token_keys=token_keys_for(settings, secret),
    )
    state.metrics = ApiMetrics()
    state.cache = ResponseCache(options.cache_max_entries, options.cache_max_bytes)
    state.freshness = FreshnessReader(settings.dagster_home)
    state.solver = SolverProcesses(
        settings.api_solver_processes, nice=options.solver_nice, queue_wait_s=options.solver_queue_wait_s
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        from infra import db

        state.database_url = await asyncio.to_thread(warehouse_url, settings)
        await asyncio.to_thread(db.migrate, state.database_url)
        state.api_database_url = await asyncio.to_thread(
            _serving_url, state.database_url, settings.api_database_url, state.jwt_secret
        )
        state.pool = AsyncConnectionPool(
            state.api_database_url,
            min_size=options.pool_min_size,
            max_size=options.pool_max_size,
            open=False,
            configure=_session_limits(settings),
        )
        await state.pool.open(wait=True, timeout=30)
        async with state.pool.connection() as conn:
            since = await (await conn.execute("SELECT extract(epoch FROM api_auth.asymmetric_since())")).fetchone()
        assert since is not None
        state.token_keys.set_legacy_window(float(since[0]))
        state.hub = Hub(state)
        await state.hub.start()
        if options.freeze_gc_after_startup:
            # The app, its OpenAPI models and libraries are ~160k long-lived objects: a full collection
            # over them stalls the event loop for ~80 ms (every in-flight request's latency). Frozen,
            # they are skipped by the cyclic collector (reference counting still frees them).
            gc.collect()
            gc.freeze()
        try:
            yield
        finally:
            await state.hub.stop()
            if state.forecast_jobs is not None:  # before the pool: unfinished jobs are marked failed
                await state.forecast_jobs.close()
            await state.pool.close()
            state.solver.close()

    app = FastAPI(
        title="OptiBid API",
        version="1.0.0",
        description=(
            "Power-market data, KPIs, forecasts and optimization results. Authenticate with a bearer access "
            "token (`POST /api/v1/auth/token`) or an `X-API-Key` header. Every error has the body "
            "`{code, message, details}`."
        ),
        lifespan=lifespan,
        docs_url=None,  # served from local assets by install_offline_docs, not from a CDN
        redoc_url=None,
    )
    app.state.api = state
    install_offline_docs(app)
    install_error_handlers(app)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_credentials=True,
            allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=["Retry-After"],
        )
    app.add_middleware(MetricsMiddleware, metrics=state.metrics, prefix=API_PREFIX)
    app.add_middleware(RequestGuard, state=state, prefix=API_PREFIX)
    if options.cache_fast_path:
        # Added last, so outermost: cache hits skip routing, dependencies and the middleware above.
        app.add_middleware(CachedReadFastPath, state=state, prefix=API_PREFIX)
    if options.gzip_min_bytes > 0:
        # Outermost, so cache hits are compressed too. Streamed exports stay streamed (each chunk is flushed
        # compressed); Parquet and Excel are compressed formats already and pass through.
        app.add_middleware(
            GZipMiddleware,
            minimum_size=options.gzip_min_bytes,
            compresslevel=options.gzip_level,
            exclude_content_types=(*DEFAULT_EXCLUDED_CONTENT_TYPES, *ALREADY_COMPRESSED_EXPORTS),
        )

    from serving_api.routers import health

    app.include_router(health.router)
    app.include_router(health.well_known)
    for name in API_ROUTERS:
        module = importlib.import_module(f"serving_api.routers.{name}")
        app.include_router(module.router, prefix=API_PREFIX, dependencies=[Depends(known_query_params)])
    return app


def __getattr__(name: str) -> FastAPI:
    # `serving_api.app:app` for uvicorn, built on first access so importing this module has no side effects.
    if name == "app":
        global app
        app = create_app()
        return app
    raise AttributeError(name)
