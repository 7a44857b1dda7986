"""A warehouse whose gold layer comes from the real producer, for tests of what the pipeline signals.

The fixture silver rows (`silver_fixture`) are loaded into a private database and gold is built by
materializing the gold dbt assets through Dagster, exactly as the automation does; the API tests then
change silver and re-materialize a gold partition to see the API and the WebSocket follow.

The build is shared by every module that asks for it (one dbt build per test run): `pipeline_warehouse`
builds it once per process and drops the database at exit.
"""

from __future__ import annotations

import atexit
import contextlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import dagster as dg
import psycopg

from tests.gold.silver_fixture import DAY, PJM_DAY_START, load_fixture

PARTITION = DAY.isoformat()
PASSWORD = "Correct-Horse-Battery-9"
DATABASE = "optibid_test_pipeline"
# users of the fixture's organizations (ingestion.reference seeds them)
ORGS = ("acme", "voltindia")
ROLES = ("viewer", "analyst")
PRICE_MODELS = (["gold", "stg_market__prices"], ["gold", "fct_prices_hourly"])
KPI_MODELS = (["gold", "kpi_values"],)

_built: dict[str, str] = {}


def pipeline_warehouse(database_url: str) -> str:
    """The URL of the private warehouse: fixture silver rows, gold materialized through Dagster, users."""
    if "url" not in _built:
        from infra import db
        from serving_api import cli

        url = db.create_database(database_url, DATABASE, drop_existing=True)
        atexit.register(_drop, database_url)
        db.migrate(url)
        load_fixture(url)
        result = materialize_gold(url, selection=None)
        assert result.success
        for org in ORGS:
            for role in ROLES:
                cli.create_user(url, org, f"{role}@{org}.pipeline.test", role, PASSWORD)
        _built["url"] = url
    return _built["url"]


def _drop(database_url: str) -> None:
    # The embedded server may already be stopped at exit, and its database with it.
    with contextlib.suppress(psycopg.OperationalError):
        from infra import db

        db.drop_database(database_url, DATABASE)


def materialize_gold(url: str, selection: Sequence[Sequence[str]] | None) -> dg.ExecuteInProcessResult:
    """Materialize gold dbt assets for PARTITION through Dagster (None: every gold model and seed)."""
    from assets import gold
    from assets.shared.resources import WarehouseResource, gold_dbt_resource

    resources = {"warehouse": WarehouseResource(database_url=url), "dbt": gold_dbt_resource()}
    if selection is None:
        unpartitioned = dg.materialize([gold.gold_dbt_unpartitioned], resources=resources, raise_on_error=False)
        if not unpartitioned.success:
            return unpartitioned
        return dg.materialize([gold.gold_dbt_partitioned], partition_key=PARTITION, resources=resources)
    return dg.materialize(
        [gold.gold_dbt_partitioned],
        selection=dg.AssetSelection.assets(*selection),
        partition_key=PARTITION,
        resources=resources,
    )


def correct_pjm_price(url: str, local_hour: int, price: float) -> datetime:
    """A late correction of one PJM day-ahead price of DAY in silver, as the Spark writer stores it; the
    hour's UTC start. Gold holds it only once a gold partition run rewrites the day."""
    from infra import db

    ts = PJM_DAY_START + timedelta(hours=local_hour)
    with db.connect(url) as conn:
        conn.execute(
            "UPDATE silver.market__prices SET price = %s WHERE zone = 'PJM' AND ts_utc = %s AND market = 'DA'",
            (price, ts),
        )
    return ts.astimezone(UTC)


def table_versions(url: str) -> dict[tuple[str, str], int]:
    """(table, market_date) -> version of ops.table_versions."""
    from infra import db

    with db.connect(url) as conn:
        rows = conn.execute("SELECT table_name, market_date::text, version FROM ops.table_versions").fetchall()
    return {(t, d): v for t, d, v in rows}


@contextmanager
def pipeline_api(settings, url: str, home) -> Iterator:
    """A running app (TestClient with lifespan) on the pipeline warehouse."""
    from fastapi.testclient import TestClient

    from serving_api.app import create_app
    from serving_api.state import ApiOptions

    app = create_app(
        settings.model_copy(update={"database_url": url, "home": home, "clickhouse_url": None}),
        ApiOptions(ws_heartbeat_seconds=0.5, login_max_failures_per_ip=10_000, user_rate_limit_per_minute=100_000),
    )
    with TestClient(app) as client:
        yield client


def bearer(client, org: str = "acme", role: str = "viewer") -> dict[str, str]:
    resp = client.post(
        "/api/v1/auth/token", data={"username": f"{role}@{org}.pipeline.test", "password": PASSWORD}
    )
    assert resp.status_code == 200, resp.text
    return {"Authorization": f"Bearer {resp.json()['access_token']}"}


def day_window() -> dict[str, str]:
    """from/to of the fixture's PJM market day (a past day: its reads are cached)."""
    return {"from": PJM_DAY_START.isoformat(), "to": (PJM_DAY_START + timedelta(days=1)).isoformat()}
