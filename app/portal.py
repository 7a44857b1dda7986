"""The platform's landing page: one address that links every UI and report and shows freshness at a glance.

What belongs here: the portal app (`create_portal`) that the running platform serves beside the Dagster UI,
the API and the MLflow UI (`app/platform.py` starts it, on OPTIBID_PORTAL_HOST/PORT): the landing page, the
report folders under `<home>/reports` (GX Data Docs, dbt docs, Evidently drift reports, forecast and
optimization plots) served as static files with a listing per folder, the gold layer's semantic page, and
the dbt docs it generates from the live warehouse. What does not: producing the reports (the assets and the
libraries write them), and anything an organization's user reaches: the portal is an operator's page, on
loopback by default, reading Dagster's instance and `ops.alerts` as the warehouse owner, so it is never
exposed the way the API is.

Freshness is read on each request (a few indexed queries): the latest materialization per layer, the checks
whose latest evaluation failed (with their Data Docs page), and the open alerts.
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from html import escape
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, HTTPException
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from infra.settings import Settings, get_settings

# Asset key prefixes of each layer, in the order the landing page shows them.
LAYERS: dict[str, tuple[str, ...]] = {
    "bronze": ("bronze",),
    "silver": ("silver",),
    "gold": ("gold",),
    "ML": ("ml",),
    "BI exports": ("clickhouse", "bi"),
}
# Report folders under <home>/reports that hold one sub-folder per day (newest shown first).
DATED_REPORTS = {
    "drift": ("Evidently drift reports", ".html"),
    "forecasts": ("Forecast plots", ".png"),
    "optimization": ("Optimization plots", ".png"),
}
CHECK_EVENTS_SCANNED = 5000
MAX_LISTED = 200
DBT_DOCS_FOLDER = "dbt_docs"
GX_DOCS_FOLDER = "gx_docs"


@dataclass
class DbtDocs:
    """The dbt docs site under `<reports>/dbt_docs`, generated from the live warehouse in the background."""

    folder: Path
    database_url: str
    generated_at: datetime | None = None
    error: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _thread: threading.Thread | None = None

    def __post_init__(self) -> None:
        index = self.folder / "index.html"
        if index.exists() and (self.folder / "catalog.json").exists():
            self.generated_at = datetime.fromtimestamp(index.stat().st_mtime, UTC)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def refresh(self) -> bool:
        """Start generating (unless a generation is under way); whether one was started."""
        with self._lock:
            if self.running:
                return False
            self._thread = threading.Thread(target=self._generate, name="dbt-docs", daemon=True)
            self._thread.start()
            return True

    def wait(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def _generate(self) -> None:
        from infra.dbt import DbtCommandError, dbt_docs_site

        try:
            dbt_docs_site(self.database_url, target_path=self.folder)
        except (DbtCommandError, OSError) as exc:
            self.error = str(exc)[-2000:]
            return
        self.error = None
        self.generated_at = datetime.now(UTC)

    def as_json(self) -> dict[str, Any]:
        return {
            "generated_at": self.generated_at.isoformat() if self.generated_at else None,
            "running": self.running,
            "error": self.error,
        }


def create_portal(settings: Settings | None = None, *, generate_dbt_docs: bool = True) -> FastAPI:
    """The portal app; with `generate_dbt_docs` its start generates the dbt docs when they are missing and
    gold has been built (before that the catalog would be empty: `optibid demo` asks for them once fresh)."""
    settings = settings or get_settings()
    reports = settings.reports_dir
    reports.mkdir(parents=True, exist_ok=True)
    database_url = _database_url(settings)
    dbt_docs = DbtDocs(reports / DBT_DOCS_FOLDER, database_url)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if generate_dbt_docs and dbt_docs.generated_at is None and _gold_built(database_url):
            dbt_docs.refresh()
        yield

    portal = FastAPI(title="OptiBid", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    portal.state.dbt_docs = dbt_docs

    @portal.get("/", response_class=HTMLResponse)
    def landing() -> str:
        return render_landing(settings, platform_status(settings, database_url), dbt_docs)

    @portal.get("/status.json")
    def status() -> dict[str, Any]:
        return {**platform_status(settings, database_url), "dbt_docs": dbt_docs.as_json()}

    @portal.post("/dbt-docs/refresh", status_code=202)
    def refresh_dbt_docs() -> dict[str, Any]:
        """Regenerate the dbt docs (e.g. once gold has been built)."""
        started = dbt_docs.refresh()
        return {"started": started, **dbt_docs.as_json()}

    @portal.get("/gold", response_class=HTMLResponse)
    def gold_page() -> str:
        """The gold layer's semantic page (tables, grain, columns, KPI definitions), as the API serves it."""
        from infra.dbt import DBT_MANIFEST
        from ingestion.bi import render_semantic_html

        return render_semantic_html(DBT_MANIFEST, _kpi_catalog(database_url))

    @portal.get("/browse/{section}", response_class=HTMLResponse)
    def browse(section: str) -> str:
        if section not in DATED_REPORTS:
            raise HTTPException(404, f"unknown report folder {section!r}; one of {sorted(DATED_REPORTS)}")
        title, suffix = DATED_REPORTS[section]
        items = "".join(
            f"<li><a href='{escape(_report_href(reports, f))}'>{escape(f.parent.name)}/{escape(f.name)}</a></li>"
            for f in report_files(reports / section, suffix)[:MAX_LISTED]
        )
        return _page(title, f"<h1>{escape(title)}</h1><ul>{items or '<li>none yet</li>'}</ul>")

    portal.mount("/reports", StaticFiles(directory=reports, html=True, check_dir=False), name="reports")
    return portal


def create_portal_from_environment() -> FastAPI:
    """What `uvicorn --factory app.portal:create_portal_from_environment` serves."""
    return create_portal(get_settings())


def _database_url(settings: Settings) -> str:
    from infra.services import warehouse_url

    return warehouse_url(settings)


# --- freshness ------------------------------------------------------------------------------------------


def platform_status(settings: Settings, database_url: str) -> dict[str, Any]:
    """Last materialization per layer, failing checks and open alerts; each part reports its own error
    rather than failing the page."""
    status: dict[str, Any] = {"layers": [], "failing_checks": [], "open_alerts": 0, "alerts": []}
    try:
        status["layers"], status["failing_checks"] = _dagster_status(settings)
    except Exception as exc:  # the page renders whatever Dagster's state
        status["dagster_error"] = f"{type(exc).__name__}: {exc}"[:500]
    try:
        status["open_alerts"], status["alerts"] = _open_alerts(database_url)
    except Exception as exc:  # likewise: a warehouse that is down is shown, not raised
        status["alerts_error"] = f"{type(exc).__name__}: {exc}"[:500]
    return status


_instances: dict[Path, Any] = {}


def _instance(dagster_home: Path) -> Any:
    import dagster as dg

    if dagster_home not in _instances:
        _instances[dagster_home] = dg.DagsterInstance.from_config(str(dagster_home))
    return _instances[dagster_home]


def _dagster_status(settings: Settings) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    import dagster as dg

    if not (settings.dagster_home / "dagster.yaml").exists():
        return [], []
    instance = _instance(settings.dagster_home)
    keys = list(instance.get_asset_keys())
    latest = instance.get_latest_materialization_events(keys) if keys else {}
    layers = []
    for layer, prefixes in LAYERS.items():
        events = [(k, e) for k, e in latest.items() if e is not None and k.path[0] in prefixes]
        assets = sum(1 for k in keys if k.path[0] in prefixes)
        if not events:
            layers.append({"layer": layer, "assets": assets, "last": None, "asset": None, "run_id": None})
            continue
        key, event = max(events, key=lambda ke: ke[1].timestamp)
        layers.append(
            {
                "layer": layer,
                "assets": assets,
                "last": datetime.fromtimestamp(event.timestamp, UTC).isoformat(),
                "asset": key.to_user_string(),
                "run_id": event.run_id,
            }
        )
    records = instance.get_event_records(
        dg.EventRecordsFilter(event_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION),
        limit=CHECK_EVENTS_SCANNED,
        ascending=False,
    )
    seen: set[tuple[tuple[str, ...], str]] = set()
    failing = []
    for record in records:
        evaluation = record.event_log_entry.dagster_event.event_specific_data
        ident = (tuple(evaluation.asset_key.path), evaluation.check_name)
        if ident in seen:
            continue
        seen.add(ident)
        if evaluation.passed:
            continue
        metadata = evaluation.metadata or {}
        docs = metadata.get("data_docs")
        failing.append(
            {
                "asset": evaluation.asset_key.to_user_string(),
                "check": evaluation.check_name,
                "severity": str(getattr(evaluation.severity, "value", evaluation.severity)),
                "at": datetime.fromtimestamp(record.timestamp, UTC).isoformat(),
                "run_id": record.run_id,
                "data_docs": getattr(docs, "value", None) if docs is not None else None,
            }
        )
    return layers, failing


def _open_alerts(database_url: str) -> tuple[int, list[dict[str, Any]]]:
    from infra import db
    from infra.alerts import latest_open_alerts

    with db.connect(database_url) as conn:
        total, alerts = latest_open_alerts(conn, limit=20)
    return total, [
        {k: v for k, v in a.as_json().items() if k not in ("detail", "resolution", "dedup_key")} for a in alerts
    ]


def _gold_built(database_url: str) -> bool:
    from infra import db

    try:
        with db.connect(database_url) as conn:
            return conn.execute("SELECT to_regclass('gold.fct_prices_hourly') IS NOT NULL").fetchone()[0]
    except Exception:  # a warehouse that does not answer yet: the docs are generated on request
        return False


def _kpi_catalog(database_url: str) -> list[dict[str, Any]]:
    from psycopg.rows import dict_row

    from infra import db

    with db.connect(database_url) as conn:
        if conn.execute("SELECT to_regclass('gold.kpi_catalog')").fetchone()[0] is None:
            return []  # gold not built yet: the tables are still described
        cur = conn.cursor(row_factory=dict_row)
        cur.execute("SELECT kpi_code, name, unit, grains, scope, definition FROM gold.kpi_catalog ORDER BY kpi_code")
        return cur.fetchall()


# --- reports --------------------------------------------------------------------------------------------


def report_files(folder: Path, suffix: str) -> list[Path]:
    """The report files of a dated folder (`<folder>/<day>/*<suffix>`), newest day first."""
    if not folder.is_dir():
        return []
    days = sorted((d for d in folder.iterdir() if d.is_dir()), key=lambda d: d.name, reverse=True)
    return [f for d in days for f in sorted(d.glob(f"*{suffix}"))]


def _report_href(reports: Path, path: Path) -> str:
    return "/reports/" + quote(path.relative_to(reports).as_posix())


# --- the page -------------------------------------------------------------------------------------------

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:72rem;color:#1d2330;padding:0 1rem}
h1{margin-bottom:.2rem} h2{margin-top:2rem;border-bottom:1px solid #dde;padding-bottom:.3rem}
table{border-collapse:collapse;width:100%} td,th{text-align:left;padding:.3rem .6rem;border-bottom:1px solid #eef}
.tools{display:grid;grid-template-columns:repeat(auto-fill,minmax(16rem,1fr));gap:.8rem}
.tool{border:1px solid #dde;border-radius:.5rem;padding:.8rem} .tool a{font-weight:600;font-size:1.05rem}
.tool p{margin:.3rem 0 0;color:#556;font-size:.9rem} .ok{color:#17803d} .bad{color:#b42318} .muted{color:#778}
"""


def _page(title: str, body: str, refresh: int | None = None) -> str:
    meta = f"<meta http-equiv='refresh' content='{refresh}'>" if refresh else ""
    return (
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'>{meta}<title>{escape(title)}</title>"
        f"<style>{_STYLE}</style></head><body>{body}</body></html>"
    )


def _ago(iso: str | None) -> str:
    if not iso:
        return "<span class='muted'>never</span>"
    seconds = max(0, time.time() - datetime.fromisoformat(iso).timestamp())
    if seconds < 120:
        text = f"{seconds:.0f} s ago"
    elif seconds < 2 * 3600:
        text = f"{seconds / 60:.0f} min ago"
    elif seconds < 2 * 86400:
        text = f"{seconds / 3600:.0f} h ago"
    else:
        text = f"{seconds / 86400:.0f} days ago"
    return f"<span title='{escape(iso)}'>{text}</span>"


def _docs_link(url: str | None) -> str:
    return f"<a href='{escape(url)}'>Data Docs</a>" if url else ""


def tool_links(settings: Settings) -> list[tuple[str, str, str]]:
    """(name, URL, what it shows) of every UI and report, in the landing page's order."""
    dagster, api, mlflow = settings.dagster_ui_url, settings.api_url, settings.mlflow_ui_url
    return [
        ("Dagster", dagster, "Asset lineage, runs, automation, check history"),
        ("Dagster automation", f"{dagster}/automation", "Sensors, schedules and automation conditions"),
        ("API docs (Swagger UI)", f"{api}/docs", "Every endpoint, tried from the browser; works offline"),
        ("API docs (ReDoc)", f"{api}/redoc", "The same OpenAPI document as reference pages"),
        ("MLflow", mlflow, "Backtest runs per zone, metrics, champion models"),
        ("Data quality (GX Data Docs)", f"/reports/{GX_DOCS_FOLDER}/index.html", "Validation results per table"),
        ("dbt docs", f"/reports/{DBT_DOCS_FOLDER}/index.html", "Gold models, columns, lineage"),
        ("Gold layer", "/gold", "Tables, grain, columns and KPI definitions"),
        ("Drift reports", "/browse/drift", "Evidently drift per zone, week on week"),
        ("Forecast plots", "/browse/forecasts", "Forecast vs actual with intervals, per delivery day"),
        ("Optimization plots", "/browse/optimization", "Battery schedules per delivery day"),
        ("Platform status (JSON)", "/status.json", "This page's freshness data, for scripts"),
    ]


def render_landing(settings: Settings, status: dict[str, Any], dbt_docs: DbtDocs) -> str:
    reports = settings.reports_dir
    cards = []
    for name, url, what in tool_links(settings):
        extra = ""
        if name == "dbt docs":
            if dbt_docs.running:
                extra = " <span class='muted'>(generating…)</span>"
            elif dbt_docs.generated_at is None and not dbt_docs.error:
                extra = " <span class='muted'>(generated once gold is built)</span>"
            elif dbt_docs.error:
                extra = " <span class='bad'>(generation failed: see the log)</span>"
        cards.append(f"<div class='tool'><a href='{escape(url)}'>{escape(name)}</a>{extra}<p>{escape(what)}</p></div>")
    latest = []
    for section, (title, suffix) in DATED_REPORTS.items():
        files = report_files(reports / section, suffix)
        if files:
            newest_day = files[0].parent
            links = ", ".join(
                f"<a href='{escape(_report_href(reports, f))}'>{escape(f.stem)}</a>"
                for f in files
                if f.parent == newest_day
            )
            latest.append(f"<tr><td>{escape(title)}</td><td>{escape(newest_day.name)}</td><td>{links}</td></tr>")
    layer_rows = "".join(
        f"<tr><td>{escape(row['layer'])}</td><td>{row['assets']}</td><td>{_ago(row['last'])}</td>"
        f"<td>{escape(row['asset'] or '')}</td></tr>"
        for row in status["layers"]
    )
    dagster = settings.dagster_ui_url
    check_rows = "".join(
        f"<tr><td class='bad'>{escape(c['check'])}</td>"
        f"<td><a href='{escape(dagster)}/assets/{escape(c['asset'])}?view=checks'>{escape(c['asset'])}</a></td>"
        f"<td>{escape(c['severity'])}</td><td>{_ago(c['at'])}</td>"
        f"<td>{_docs_link(c['data_docs'])}</td></tr>"
        for c in status["failing_checks"]
    )
    alert_rows = "".join(
        f"<tr><td>{escape(a['severity'])}</td><td>{escape(a['kind'])}</td><td>{escape(a['title'])}</td>"
        f"<td>{a['occurrences']}</td><td>{_ago(a['last_seen'])}</td></tr>"
        for a in status["alerts"]
    )
    problems = "".join(
        f"<p class='bad'>{escape(label)}: {escape(status[key])}</p>"
        for key, label in (("dagster_error", "Dagster"), ("alerts_error", "alerts"))
        if key in status
    )
    failing, alerts = len(status["failing_checks"]), status["open_alerts"]
    body = f"""
<h1>OptiBid</h1>
<p class='muted'>{escape(str(settings.home_dir))} · refreshed every minute</p>
{problems}
<p><b>Checks:</b> <span class='{"bad" if failing else "ok"}' id='failing-checks'>{failing} failing</span> ·
<b>Alerts:</b> <span class='{"bad" if alerts else "ok"}' id='open-alerts'>{alerts} open</span></p>
<h2>Tools and reports</h2>
<div class='tools'>{"".join(cards)}</div>
<h2>Latest reports</h2>
<table><tr><th>report</th><th>day</th><th>files</th></tr>
{"".join(latest) or "<tr><td colspan=3>none yet</td></tr>"}</table>
<h2>Freshness: last materialization per layer</h2>
<table id='layers'><tr><th>layer</th><th>assets</th><th>last</th><th>latest asset</th></tr>{layer_rows}</table>
<h2>Failing checks</h2>
<table id='checks'><tr><th>check</th><th>asset</th><th>severity</th><th>when</th><th>evidence</th></tr>
{check_rows or "<tr><td colspan=5 class='ok'>none: every check's latest evaluation passed</td></tr>"}</table>
<h2>Open alerts</h2>
<table id='alerts'><tr><th>severity</th><th>kind</th><th>title</th><th>occurrences</th><th>last seen</th></tr>
{alert_rows or "<tr><td colspan=5 class='ok'>none</td></tr>"}</table>
"""
    return _page("OptiBid", body, refresh=60)
