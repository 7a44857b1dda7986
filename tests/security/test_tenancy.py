"""Broken object- and property-level authorization (OWASP API1/API3): no organization's values reach
another organization, through freshness metadata, ids of its objects, or its rows."""

from __future__ import annotations

from tests.security.conftest import ORG_B_SECRET_PRICE, ORG_B_SECRET_SAMPLE, V1


def test_freshness_strips_org_private_check_metadata(client, auth):
    resp = client.get(f"{V1}/freshness", headers=auth("org_a", "viewer"))
    assert resp.status_code == 200, resp.text
    body = resp.text
    assert ORG_B_SECRET_PRICE not in body and ORG_B_SECRET_SAMPLE not in body and "12345" not in body
    checks = {c["name"]: c for t in resp.json()["tables"] for c in t["checks"]}
    # What the suite is (how many expectations ran and failed, which ones) is still there.
    kpi = checks["kpi_values_expectations"]
    assert kpi["passed"] is False
    assert kpi["metadata"] == {
        "evaluated_expectations": "4",
        "failed_expectations": "1",
        "failing": "['expect_column_values_to_be_between(value)']",
    }
    assert checks["fct_prices_hourly_expectations"]["metadata"] == {}


def test_other_orgs_objects_are_invisible(client, auth):
    headers = auth("org_a", "analyst")
    for path in ("/optimization/runs?run_id=storage_dispatch_org_b", "/uploads"):
        resp = client.get(f"{V1}{path}", headers=headers)
        assert resp.status_code in (200, 404), resp.text
        assert "org_b" not in resp.text
    kpis = client.get(f"{V1}/kpis/pnl", params={"zone": "PJM", "grain": "hour"}, headers=headers)
    assert kpis.status_code == 200, kpis.text
    values = {row["value"] for row in kpis.json()["data"]}
    assert values == {1000.0}  # org_a's own pnl; org_b's is 2000.0
