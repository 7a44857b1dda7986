"""The Dagster UI as data engineers use it: a real `dagster dev` (webserver + daemon) on the project's
definitions, driven through its GraphQL API and looked at in headless Chromium: the lineage, the Automation
page with the platform's sensors and schedules, and an asset's check history with the link to the failed
validation's Data Docs page."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import httpx
import pytest

from infra.dagster_instance import write_dagster_home
from infra.processes import free_port, stop_process_group
from tests.browser import Browser

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def dagster_ui(settings, database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    home = write_dagster_home(settings)
    port = free_port()
    log = (tmp_path_factory.mktemp("dagster") / "dagster-dev.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "dagster", "dev", "-m", "orchestration.definitions", "-h", "127.0.0.1", "-p", str(port)],
        cwd=REPO,
        env={**os.environ, "DAGSTER_HOME": str(home), "OPTIBID_DATABASE_URL": database_url},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        try:
            if httpx.get(f"{url}/server_info", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"dagster dev did not come up; see {log.name}")
        time.sleep(1)
    yield url
    # Idle, dagster dev stops on SIGTERM in about 4 s; after this module's tests (a run launched through the UI)
    # it outlasted a 60 s wait. Nothing of it is needed any more.
    stop_process_group(proc, 15)


def graphql(url: str, query: str, variables: dict | None = None) -> dict:
    response = httpx.post(f"{url}/graphql", json={"query": query, "variables": variables or {}}, timeout=60)
    response.raise_for_status()
    body = response.json()
    assert "errors" not in body, body["errors"]
    return body["data"]


ASSET_GRAPH = """
{
  assetNodes { assetKey { path } groupName
    assetChecksOrError { ... on AssetChecks { checks { name blocking } } } }
  repositoriesOrError { ... on RepositoryConnection { nodes { name location { name } } } }
}
"""

LAUNCH = """
mutation Launch($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on InvalidSubsetError { message }
    ... on RunConfigValidationInvalid { errors { message } }
  }
}
"""

RUN_STATUS = "query Run($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }"


def test_asset_graph_and_a_run_launched_through_the_ui(dagster_ui: str) -> None:
    data = graphql(dagster_ui, ASSET_GRAPH)
    keys = {"/".join(node["assetKey"]["path"]) for node in data["assetNodes"]}
    assert {"silver/ref__zones", "silver/ref__nodes"} <= keys
    repo = data["repositoriesOrError"]["nodes"][0]

    params = {
        "selector": {
            "repositoryLocationName": repo["location"]["name"],
            "repositoryName": repo["name"],
            "jobName": "__ASSET_JOB",
            "assetSelection": [
                {"path": ["silver", t]} for t in ("ref__zones", "ref__nodes", "ref__organizations", "ref__assets")
            ],
        },
        "mode": "default",
    }
    launched = graphql(dagster_ui, LAUNCH, {"params": params})["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    run_id = launched["run"]["runId"]
    deadline = time.monotonic() + 300
    status = None
    while time.monotonic() < deadline:
        status = graphql(dagster_ui, RUN_STATUS, {"id": run_id})["runOrError"]["status"]
        if status in {"SUCCESS", "FAILURE", "CANCELED"}:
            break
        time.sleep(2)
    assert status == "SUCCESS", f"run {run_id} ended {status}"


def dismiss_welcome(page) -> None:
    """Close the community pop-up a fresh Dagster UI shows first visitors, so screenshots show the page."""
    page.evaluate("[...document.querySelectorAll('button')].find(b => b.innerText.trim() === 'Skip')?.click()")


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    with Browser(tmp_path_factory.mktemp("chromium")) as b:
        yield b


def test_automation_page_shows_the_configured_sensors_and_schedules(
    dagster_ui: str, browser: Browser, tmp_path: Path
) -> None:
    page = browser.new_page()
    page.open(f"{dagster_ui}/automation")
    # Sensors and schedules that are on by default (orchestration/, assets/bronze/cdc.py).
    text = page.wait_for_text(
        "automation_sensor", "alert_on_run_failure", "alert_on_check_evaluations", "bronze_cdc_floor", timeout=120
    )
    dismiss_welcome(page)
    page.screenshot(tmp_path / "dagster_automation.png")
    assert "alert_on_missed_freshness" in text and "alert_on_anomalies" in text
    page.assert_no_js_errors()


def test_check_history_links_a_failed_check_to_its_data_docs(
    dagster_ui: str, browser: Browser, settings, database_url: str, tmp_path: Path
) -> None:
    """A failed Great Expectations check, as the check factory reports it, in the asset's check history; its
    Data Docs link is the page the validation wrote."""
    import dagster as dg

    from assets.shared.expectation_checks import suite_check_result
    from expectations.runner import validate_frame
    from expectations.suites import SuiteParameters, suite_for
    from expectations.warehouse import partition_frame, zone_bounds
    from tests.gold.silver_fixture import load_fixture

    load_fixture(database_url)
    day = date(2024, 7, 10)
    rows = partition_frame(database_url, "silver.market__prices", day, day)
    rows.loc[rows.index[0], "price"] = 99_999.0  # above the zone's cap
    outcome = validate_frame(
        rows,
        suite_for("silver.market__prices"),
        SuiteParameters(zones=zone_bounds(database_url)),
        docs_dir=settings.reports_dir / "gx_docs",
    )
    result = suite_check_result(outcome)
    instance = dg.DagsterInstance.from_config(str(write_dagster_home(settings)))
    instance.report_runless_asset_event(
        dg.AssetCheckEvaluation(
            asset_key=dg.AssetKey(["silver", "market__prices"]),
            check_name="market__prices_expectations",
            passed=result.passed,
            metadata=result.metadata,
            severity=result.severity,
        )
    )
    docs_url = result.metadata["data_docs"].value
    assert docs_url == settings.report_url(outcome.docs_page)
    assert docs_url.startswith(f"{settings.portal_url}/reports/gx_docs/validations/")

    page = browser.new_page()
    page.open(f"{dagster_ui}/assets/silver/market__prices?view=checks")
    # Every check the platform declares on the asset, the failed evaluation with its evidence link, and the
    # check's description as the platform declares it (assets/shared/expectation_checks.py), which the UI can
    # render a moment after the evaluation under load.
    text = page.wait_for_text(
        "market__prices_expectations", "Failed", "Great Expectations suite of silver.market__prices", timeout=120
    )
    dismiss_welcome(page)
    page.screenshot(tmp_path / "dagster_checks.png")
    assert "Great Expectations suite of silver.market__prices" in text, text[:3000]
    page.evaluate(
        "[...document.querySelectorAll('a,button,div')].find(e => e.innerText.trim() === "
        "'market__prices_expectations')?.click()"
    )
    page.wait_for(
        f"[...document.querySelectorAll('a')].some(a => a.href === {json.dumps(docs_url)})",
        timeout=60,
        what="the Data Docs link in the check's metadata",
    )
    page.screenshot(tmp_path / "dagster_check_history.png")
    page.assert_no_js_errors()


def test_lineage_page_renders_in_chromium(dagster_ui: str, browser: Browser, tmp_path: Path) -> None:
    page = browser.new_page()
    page.open(f"{dagster_ui}/asset-groups")
    # The global lineage shows the platform's asset groups (collapsed) once the graph has been laid out.
    page.wait_for_text("bronze", "silver", "gold", "optimization", "exports", timeout=120)
    dismiss_welcome(page)
    shot = page.screenshot(tmp_path / "dagster_lineage.png")
    assert shot.stat().st_size > 20_000, "the lineage page screenshot is blank"
    page.assert_no_js_errors()
