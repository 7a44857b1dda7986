"""Fixtures of the hostile-client suite: a database of its own (seeded like the API tests', two
organizations with one user per role), a Dagster instance whose check evaluations carry organization-private
metadata, and the real app behind a trusted proxy at 127.0.0.1 (so a test picks its client address with
X-Forwarded-For)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.api.conftest import ORGS, PASSWORD, ROLES, _seed
from tests.conftest import private_database

V1 = "/api/v1"
PROXY = ("127.0.0.1", 50000)
# Values only org_b may see (its uploaded prices and revenue), planted in check metadata.
ORG_B_SECRET_PRICE = "431.337"
ORG_B_SECRET_SAMPLE = "org_b-revenue-98765.43"


@pytest.fixture(scope="session")
def security_database(database_url: str) -> Iterator[str]:
    from infra import db
    from serving_api import cli

    for url in private_database(database_url, "optibid_security"):
        with db.connect(url) as conn:
            _seed(conn)
        for org in ORGS:
            for role in ROLES:
                cli.create_user(url, org, f"{role}@{org}.test", role, PASSWORD)
        yield url


@pytest.fixture(scope="session")
def dagster_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real Dagster instance with failed GX checks on org-private gold tables (failure samples included)."""
    import dagster as dg

    home = tmp_path_factory.mktemp("dagster_home")
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    instance = dg.DagsterInstance.from_config(str(home))
    for table, metadata in (
        (
            "kpi_values",
            {
                "row_count": dg.MetadataValue.int(12345),
                "evaluated_expectations": dg.MetadataValue.int(4),
                "failed_expectations": dg.MetadataValue.int(1),
                "failing": dg.MetadataValue.json(["expect_column_values_to_be_between(value)"]),
                "failures": dg.MetadataValue.json(
                    [{"expectation": "between", "column": "value", "samples": [ORG_B_SECRET_SAMPLE]}]
                ),
                "observed_value": dg.MetadataValue.text(ORG_B_SECRET_PRICE),
            },
        ),
        (
            "fct_prices_hourly",
            {"unexpected_counts": dg.MetadataValue.json({"between(price_avg)": ORG_B_SECRET_PRICE})},
        ),
    ):
        instance.report_runless_asset_event(
            dg.AssetCheckEvaluation(
                asset_key=dg.AssetKey(["gold", table]),
                check_name=f"{table}_expectations",
                passed=False,
                metadata=metadata,
            )
        )
    instance.dispose()
    return home


@pytest.fixture(scope="session")
def security_settings(settings, security_database, dagster_home, tmp_path_factory):
    return settings.model_copy(
        update={
            "database_url": security_database,
            "home": tmp_path_factory.mktemp("security_home"),
            "dagster_home_override": dagster_home,
            "clickhouse_url": None,
            "trusted_proxies": ["127.0.0.1/32"],
        }
    )


def make_app(settings, **options):
    from serving_api.app import create_app
    from serving_api.state import ApiOptions

    defaults = {"user_rate_limit_per_minute": 100_000, "ws_heartbeat_seconds": 0.5}
    return create_app(settings, ApiOptions(**(defaults | options)))


@pytest.fixture(scope="session")
def client(security_settings) -> Iterator[TestClient]:
    with TestClient(make_app(security_settings, login_delay_base_seconds=0.05), client=PROXY) as c:
        yield c


def login(client: TestClient, email: str, password: str = PASSWORD, address: str = "198.51.100.1"):
    return client.post(
        f"{V1}/auth/token",
        data={"username": email, "password": password},
        headers={"X-Forwarded-For": address},
    )


_tokens: dict[tuple[str, str], dict] = {}


@pytest.fixture(scope="session")
def tokens(client):
    def get(org: str = "org_a", role: str = "admin") -> dict:
        if (org, role) not in _tokens:
            resp = login(client, f"{role}@{org}.test", address="198.51.100.250")
            assert resp.status_code == 200, resp.text
            _tokens[(org, role)] = resp.json()
        return _tokens[(org, role)]

    return get


@pytest.fixture(scope="session")
def auth(tokens):
    def headers(org: str = "org_a", role: str = "admin") -> dict[str, str]:
        return {"Authorization": f"Bearer {tokens(org, role)['access_token']}"}

    return headers
