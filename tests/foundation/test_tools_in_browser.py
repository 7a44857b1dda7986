"""Every tool one click from the landing page, looked at in headless Chromium.

One set of servers for the module, as the platform runs them (`PlatformProcesses.start_tools`: the landing
page and the MLflow UI on the platform's tracking store; the API as uvicorn serves it), on a private home
and database whose reports come from the real producers: a Great Expectations suite validated on
warehouse rows (Data Docs, and its failing check recorded in Dagster's instance as the check factory builds
it), a seasonal-naive backtest logged to MLflow, Evidently drift reports, a forecast plot, an open alert in
`ops.alerts`, and the dbt docs generated from the warehouse by the landing page itself. The browser follows
the landing page's links, asserts on what each page shows and on its JavaScript errors, and keeps a
screenshot of each in the test's temporary folder.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import httpx
import pandas as pd
import pytest

from infra.processes import free_port
from infra.settings import Settings
from tests.browser import Browser, Page, chromium_or_skip

REPO = Path(__file__).resolve().parents[2]
ZONES = ("PJM", "ERCOT")
DAY = date(2024, 7, 10)  # the silver fixture's day


@dataclass(frozen=True)
class Tools:
    settings: Settings
    portal: str
    mlflow: str
    api: str
    shots: Path
    failing_check_page: Path


def _price_frame(days: int = 42) -> pd.DataFrame:
    """Hourly day-ahead prices of two simulated zones, as the forecasting library's long frame."""
    from ingestion.simulator.market import iter_market_days

    frames = [d.prices_hourly for d in iter_market_days(date(2026, 1, 1), days, nodes_per_zone=0, five_minute=False)]
    prices = pd.concat(frames)
    prices = prices[prices["zone"].isin(ZONES)]
    return pd.DataFrame(
        {"unique_id": prices["zone"], "ds": pd.to_datetime(prices["ts_utc"], utc=True), "y": prices["price"]}
    ).reset_index(drop=True)


def _produce_reports(settings: Settings, database_url: str) -> Path:
    """The reports the platform writes, written by the same library code; the failing check's Data Docs page."""
    import dagster as dg

    from assets.shared.expectation_checks import suite_check_result
    from expectations.runner import validate_frame
    from expectations.suites import SuiteParameters, suite_for
    from expectations.warehouse import partition_frame, validate_partition, zone_bounds
    from infra import db
    from infra.alerts import raise_alert
    from infra.dagster_instance import write_dagster_home
    from ml.forecasting.pipeline import ForecastPipeline
    from ml.forecasting.tracking import forecast_plot_png, log_backtest_run
    from ml.monitoring.drift import drift_by_zone
    from tests.gold.silver_fixture import load_fixture

    reports = settings.reports_dir
    # Data Docs: one passing validation of the warehouse's rows, one failing (a price above the zone's cap).
    load_fixture(database_url)
    docs = reports / "gx_docs"
    assert validate_partition(database_url, "silver.market__prices", DAY, DAY, docs_dir=docs).success
    rows = partition_frame(database_url, "silver.market__prices", DAY, DAY)
    rows.loc[rows.index[0], "price"] = 99_999.0
    failing = validate_frame(
        rows,
        suite_for("silver.market__prices"),
        SuiteParameters(zones=zone_bounds(database_url)),
        docs_dir=docs,
    )
    assert not failing.success and failing.docs_page is not None
    # The check result the Dagster check factory builds from it (its links are made from the process's
    # settings, so they are this platform's for the call), recorded in this platform's instance (whose
    # storage is the database its dagster.yaml reads from OPTIBID_DATABASE_URL).
    from infra.settings import get_settings

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OPTIBID_HOME", str(settings.home_dir))
        patch.setenv("OPTIBID_PORTAL_PORT", str(settings.portal_port))
        patch.setenv("OPTIBID_DATABASE_URL", database_url)
        get_settings.cache_clear()
        result = suite_check_result(failing)
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
        instance.report_runless_asset_event(
            dg.AssetMaterialization(asset_key=dg.AssetKey(["gold", "fct_prices_hourly"]))
        )
        instance.dispose()
    get_settings.cache_clear()
    assert result.metadata["data_docs"].value == settings.report_url(failing.docs_page)
    # MLflow: a backtest per zone, logged as the weekly backtests log them.
    frame = _price_frame()
    pipeline = ForecastPipeline(["seasonal_naive"], ensemble=None, recalibrate_every_days=7)
    last = frame["ds"].max().normalize()
    result_bt = pipeline.backtest(frame, last - pd.Timedelta(days=2), last - pd.Timedelta(days=1), warmup_days=1)
    for zone in ZONES:
        log_backtest_run(result_bt, settings.resolved_mlflow_uri, zone)
    # Forecast plot and drift reports, in the dated folders the assets use.
    (reports / "forecasts" / "2026-02-11").mkdir(parents=True)
    forecast_plot_png(result_bt.forecasts, ZONES[0], "seasonal_naive", reports / "forecasts" / "2026-02-11" / "PJM.png")
    reference = frame[frame["ds"] < last - pd.Timedelta(days=7)]
    current = frame[frame["ds"] >= last - pd.Timedelta(days=7)]
    current = current.assign(y=current["y"] * 1.8 + 40)  # a shifted week: drift to report
    drift = drift_by_zone(reference, current, reports / "drift" / f"{last:%Y-%m-%d}")
    assert set(drift["unique_id"]) == set(ZONES)
    with db.connect(database_url) as conn:
        raise_alert(
            conn,
            kind="freshness",
            severity="warning",
            dedup_key="freshness:gold/fct_prices_hourly",
            title="gold/fct_prices_hourly missed its freshness policy",
            detail={"asset": "gold/fct_prices_hourly"},
            asset_key="gold/fct_prices_hourly",
        )
        conn.commit()
    return failing.docs_page


def _start_api(settings: Settings, env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "serving_api.app:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(settings.api_port),
        ],
        cwd=REPO,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


@pytest.fixture(scope="module")
def tools(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tools]:
    from app.demo import tool_options
    from app.platform import PlatformProcesses
    from infra.dagster_instance import write_dagster_home
    from tests.conftest import private_database

    chromium_or_skip()
    root = tmp_path_factory.mktemp("tools")
    for url in private_database(database_url, "optibid_test_tools"):
        settings = Settings(
            home=root / "home",
            database_url=url,
            portal_port=free_port(),
            mlflow_ui_port=free_port(),
            api_port=free_port(),
            dagster_port=free_port(),
        )
        failing_page = _produce_reports(settings, url)
        env = {
            **os.environ,
            "OPTIBID_HOME": str(settings.home_dir),
            "OPTIBID_DATABASE_URL": url,
            "DAGSTER_HOME": str(write_dagster_home(settings)),
            "OPTIBID_PORTAL_PORT": str(settings.portal_port),
            "OPTIBID_MLFLOW_UI_PORT": str(settings.mlflow_ui_port),
            "OPTIBID_API_PORT": str(settings.api_port),
            "OPTIBID_DAGSTER_PORT": str(settings.dagster_port),
        }
        env.pop("MLFLOW_TRACKING_URI", None)
        platform = PlatformProcesses(
            env=env, dagster_home=settings.dagster_home, log_dir=root / "logs", cwd=REPO, **tool_options(settings)
        )
        (root / "logs").mkdir()
        api = _start_api(settings, env, root / "logs" / "api.log")
        try:
            platform.start_tools()
            platform.wait_until_tools_serve(timeout=300)
            _wait_answers(f"{settings.api_url}/healthz", api, root / "logs" / "api.log")
            # As `optibid demo` does once gold is built: the landing page generates the dbt docs.
            assert httpx.post(f"{platform.portal_url}/dbt-docs/refresh", timeout=30).status_code == 202
            _wait_for_dbt_docs(platform.portal_url)
            yield Tools(
                settings, platform.portal_url, platform.mlflow_ui_url, settings.api_url, root / "shots", failing_page
            )
        finally:
            platform.stop()
            os.killpg(api.pid, 15)
            api.wait(timeout=60)


def _wait_answers(url: str, proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"{url} did not answer; log {log}:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)


def _wait_for_dbt_docs(portal: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while True:
        state = httpx.get(f"{portal}/status.json", timeout=30).json()["dbt_docs"]
        assert state["error"] is None, state["error"]
        if state["generated_at"] and not state["running"]:
            return
        assert time.monotonic() < deadline, "the dbt docs were not generated in time"
        time.sleep(2)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    with Browser(tmp_path_factory.mktemp("chromium"), offline=True) as b:
        yield b


@pytest.fixture
def page(browser: Browser, tools: Tools) -> Page:
    page = browser.new_page()
    page.open(tools.portal)
    return page


def test_landing_page_shows_freshness_failing_checks_and_alerts(page: Page, tools: Tools) -> None:
    text = page.wait_for_text("Freshness", "Failing checks", "Open alerts")
    page.screenshot(tools.shots / "landing.png")
    assert "1 failing" in text and "1 open" in text
    assert "market__prices_expectations" in text and "silver/market__prices" in text
    assert "gold/fct_prices_hourly missed its freshness policy" in text
    layers = page.evaluate("[...document.querySelectorAll('#layers tr')].map(r => r.innerText)")
    gold = next(row for row in layers if row.startswith("gold"))
    assert "ago" in gold and "gold/fct_prices_hourly" in gold
    for name in ("Dagster", "MLflow", "API docs (Swagger UI)", "dbt docs", "Data quality (GX Data Docs)"):
        assert name in text
    page.assert_no_js_errors()
    assert not page.blocked


def test_failing_check_links_to_its_data_docs_page(page: Page, tools: Tools) -> None:
    href = page.click_link("Data Docs")
    assert href.endswith(tools.failing_check_page.name)
    text = page.wait_for_text("Expectation Validation Result", "Expectation Suite: silver__market__prices")
    page.screenshot(tools.shots / "data_docs_failing.png")
    assert re.search(r"Status:\s*Failed", text), text[:2000]
    page.assert_no_js_errors()


def test_data_docs_list_the_suite_runs(page: Page, tools: Tools) -> None:
    page.click_link("Data quality (GX Data Docs)")
    text = page.wait_for_text("validation results")
    assert text.count("silver.market__prices") == 2
    page.click_link(page.evaluate("document.querySelector('li a').innerText"))
    text = page.wait_for_text("Expectation Validation Result", "Expectation Suite: silver__market__prices")
    page.screenshot(tools.shots / "data_docs.png")
    assert "Evaluated Expectations" in text
    page.assert_no_js_errors()


def test_mlflow_lists_the_backtest_runs(page: Page, tools: Tools) -> None:
    page.click_link("MLflow")
    page.wait_for_text("optibid-forecasting", timeout=120)
    page.screenshot(tools.shots / "mlflow_home.png")
    page.evaluate("[...document.querySelectorAll('a')].find(a => a.innerText.trim() === 'optibid-forecasting').click()")
    experiment = page.wait_for("(location.hash.match(/experiments\\/(\\d+)/) || [])[1]", what="the experiment page")
    # The experiment's runs table, as a data scientist opens it from the experiment page.
    page.evaluate(f"location.hash = '#/experiments/{experiment}/runs'")
    text = page.wait_for_text(*(f"backtest-{zone}" for zone in ZONES), timeout=120)
    page.screenshot(tools.shots / "mlflow_runs.png")
    page.assert_no_js_errors()
    assert not page.blocked, f"the MLflow UI reached outside: {page.blocked}"
    # The link the weekly backtest asset puts on its materialization opens that run's page.
    from mlflow.tracking import MlflowClient

    run = MlflowClient(tracking_uri=tools.settings.resolved_mlflow_uri).search_runs([experiment])[0]
    page.open(tools.settings.mlflow_run_url(experiment, run.info.run_id))
    text = page.wait_for_text(run.info.run_name, "seasonal_naive.mae", timeout=120)
    page.screenshot(tools.shots / "mlflow_run.png")
    assert run.data.params["zone"] in text
    page.assert_no_js_errors()


def test_dbt_docs_show_the_gold_models(page: Page, tools: Tools) -> None:
    page.click_link("dbt docs")
    page.wait_for_text("optibid", timeout=60)
    page.evaluate("window.location.hash = '#!/model/model.optibid.fct_prices_hourly'")
    text = page.wait_for_text("fct_prices_hourly", "Columns", timeout=60)
    page.screenshot(tools.shots / "dbt_docs.png")
    assert "price_avg" in text or "zone" in text
    page.assert_no_js_errors()


def test_evidently_report_renders_its_drift_table(page: Page, tools: Tools) -> None:
    page.click_link("Drift reports")
    page.click_link(page.evaluate("document.querySelector('li a').innerText"))
    text = page.wait_for_text("Drift", timeout=90)
    page.screenshot(tools.shots / "evidently.png")
    # The drift table: the target column, its test and its verdict (the current week was shifted).
    assert "Data Drift Summary" in text and "Drift Score" in text and "Stat Test" in text, text[:2000]
    row = page.evaluate("[...document.querySelectorAll('tr')].map(r => r.innerText).find(t => /^\\s*y\\s/.test(t))")
    assert row is not None and "Detected" in row, text[:2000]
    page.assert_no_js_errors()


def test_gold_page_and_plots(page: Page, tools: Tools) -> None:
    page.click_link("Gold layer")
    text = page.wait_for_text("fct_prices_hourly")
    page.screenshot(tools.shots / "gold.png")
    page.open(tools.portal)
    page.click_link("Forecast plots")
    href = page.click_link("2026-02-11/PJM.png")
    assert href.endswith("/reports/forecasts/2026-02-11/PJM.png")
    assert page.evaluate("document.images[0].naturalWidth") > 200
    assert "grain" in text.lower()


def test_api_docs_render_offline(browser: Browser, tools: Tools) -> None:
    """Swagger UI and ReDoc from the API's own assets, with every host but loopback unreachable."""
    page = browser.new_page()
    page.open(tools.portal)
    page.requests.clear()
    page.click_link("API docs (Swagger UI)")
    page.wait_for("document.querySelectorAll('.opblock').length > 20", timeout=90, what="the operations list")
    text = page.text()
    page.screenshot(tools.shots / "swagger_offline.png")
    assert "/api/v1/prices" in text and "OptiBid API" in text
    page.assert_no_js_errors()
    assert not page.blocked, f"the docs page tried to reach outside: {page.blocked}"
    assert all(url.startswith(tools.api) or url.startswith("data:") for url in page.requests), page.requests
    page.open(tools.portal)
    page.click_link("API docs (ReDoc)")
    page.wait_for_text("/api/v1/prices", timeout=90)
    page.screenshot(tools.shots / "redoc_offline.png")
    page.assert_no_js_errors()
    # ReDoc's bundle links its own "powered by" logo from its CDN (decoration in the sidebar footer, which
    # renders without it); nothing else may leave the machine.
    outside = [url for url in page.blocked if url != "https://cdn.redoc.ly/redoc/logo-mini.svg"]
    assert not outside, f"ReDoc tried to reach outside: {outside}"
