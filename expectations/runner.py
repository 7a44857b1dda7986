"""Validate a pandas DataFrame against a table's suite with GX Core, and write GX Data Docs.

One ephemeral GX context per process (creating it costs more than validating a small batch); nothing is
persisted unless Data Docs are asked for. The outcome is a plain dataclass so callers (Dagster checks,
the CLI, tests) never handle GX objects.
"""

from __future__ import annotations

import math
import re
import threading
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from expectations.suites import SuiteParameters, TableSuite

_SAMPLE_SIZE = 5
_lock = threading.RLock()
_context: Any = None


@dataclass(frozen=True)
class FailedExpectation:
    """One expectation that did not hold, with what GX observed."""

    expectation: str
    column: str | None
    kwargs: dict[str, Any]
    unexpected_count: int | None = None
    unexpected_percent: float | None = None
    sample: list[Any] = field(default_factory=list)
    observed_value: Any = None
    error: str | None = None


@dataclass(frozen=True)
class SuiteOutcome:
    """The result of validating one batch of one table."""

    table: str
    success: bool
    row_count: int
    evaluated: int
    failures: list[FailedExpectation]
    raw: Any = field(default=None, repr=False, compare=False)  # the GX result, for Data Docs
    docs_page: Path | None = None  # this result's Data Docs page, when one was written

    @property
    def unexpected_total(self) -> int:
        return sum(f.unexpected_count or 0 for f in self.failures)

    def summary(self) -> str:
        """One line per failing expectation (or 'ok'), for logs and check descriptions."""
        if self.success:
            return f"{self.table}: {self.evaluated} expectations passed on {self.row_count} rows"
        lines = [f"{self.table}: {len(self.failures)} of {self.evaluated} expectations failed on {self.row_count} rows"]
        for f in self.failures:
            target = f.column or ",".join(str(v) for v in f.kwargs.get("column_list", [])) or "table"
            detail = f.error or (
                f"{f.unexpected_count} unexpected, e.g. {f.sample}"
                if f.unexpected_count is not None
                else f"observed {f.observed_value}"
            )
            lines.append(f"  {f.expectation}({target}): {detail}")
        return "\n".join(lines)

    def as_metadata(self) -> dict[str, Any]:
        """JSON-safe description of the outcome (Dagster check metadata, API, reports)."""
        return {
            "table": self.table,
            "success": self.success,
            "row_count": self.row_count,
            "evaluated_expectations": self.evaluated,
            "failed_expectations": len(self.failures),
            "unexpected_total": self.unexpected_total,
            "failures": [
                {
                    "expectation": f.expectation,
                    "column": f.column,
                    "kwargs": _json_safe(f.kwargs),
                    "unexpected_count": f.unexpected_count,
                    "unexpected_percent": f.unexpected_percent,
                    "sample": _json_safe(f.sample),
                    "observed_value": _json_safe(f.observed_value),
                    "error": f.error,
                }
                for f in self.failures
            ],
        }


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, datetime | date | pd.Timestamp):
        return value.isoformat()
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if hasattr(value, "item"):  # numpy scalars
        return _json_safe(value.item())
    return str(value)


def _gx_context() -> Any:
    global _context
    with _lock:
        if _context is None:
            import great_expectations as gx
            from great_expectations.data_context.types.base import ProgressBarsConfig

            context = gx.get_context(mode="ephemeral")
            context.variables.progress_bars = ProgressBarsConfig(globally=False)
            context.data_sources.add_pandas("optibid")
            _context = context
        return _context


def _batch_definition(table_suite: TableSuite) -> Any:
    source = _gx_context().data_sources.get("optibid")
    try:
        asset = source.get_asset(table_suite.name)
    except LookupError:
        asset = source.add_dataframe_asset(table_suite.name)
    try:
        return asset.get_batch_definition("whole")
    except KeyError:
        return asset.add_batch_definition_whole_dataframe("whole")


def _gx_suite(table_suite: TableSuite, params: SuiteParameters) -> Any:
    import great_expectations as gx

    return gx.ExpectationSuite(name=table_suite.name, expectations=table_suite.expectations(params))


def validate_frame(
    df: pd.DataFrame,
    table_suite: TableSuite,
    params: SuiteParameters | None = None,
    *,
    docs_dir: Path | None = None,
) -> SuiteOutcome:
    """Validate `df` against `table_suite`; with `docs_dir`, also render the result as GX Data Docs there."""
    params = params or SuiteParameters()
    prepared = table_suite.prepare(df, params)
    suite = _gx_suite(table_suite, params)
    with _lock:  # GX's context and its in-memory stores are not thread-safe
        batch = _batch_definition(table_suite).get_batch(batch_parameters={"dataframe": prepared})
        result = batch.validate(
            suite, result_format={"result_format": "SUMMARY", "partial_unexpected_count": _SAMPLE_SIZE}
        )
    outcome = _outcome(table_suite.table, len(df), result)
    if docs_dir is not None:
        outcome = replace(outcome, docs_page=write_data_docs([outcome], docs_dir).pages[0])
    return outcome


def _outcome(table: str, row_count: int, result: Any) -> SuiteOutcome:
    failures = []
    for r in result.results:
        if r.success:
            continue
        config = r.expectation_config
        kwargs = {k: v for k, v in dict(config.kwargs).items() if k not in {"batch_id"}}
        details = r.result or {}
        error = None
        info = r.exception_info or {}
        if info.get("raised_exception"):
            error = str(info.get("exception_message"))
        failures.append(
            FailedExpectation(
                expectation=config.type,
                column=kwargs.get("column")
                or (f"{kwargs['column_A']},{kwargs['column_B']}" if "column_A" in kwargs else None),
                kwargs=kwargs,
                unexpected_count=details.get("unexpected_count"),
                unexpected_percent=details.get("unexpected_percent"),
                sample=list(details.get("partial_unexpected_list") or [])[:_SAMPLE_SIZE],
                observed_value=details.get("observed_value"),
                error=error,
            )
        )
    return SuiteOutcome(
        table=table,
        success=bool(result.success),
        row_count=row_count,
        evaluated=len(result.results),
        failures=failures,
        raw=result,
    )


@dataclass(frozen=True)
class DataDocs:
    """What `write_data_docs` wrote: the index page and one page per outcome (None without a GX result)."""

    index: Path
    pages: list[Path | None]


def write_data_docs(outcomes: list[SuiteOutcome], docs_dir: Path) -> DataDocs:
    """Render the outcomes' validation results as GX Data Docs pages under `docs_dir`, and the index.

    Uses GX's own renderer and page view (the same HTML its Data Docs site builder writes) directly on the
    results, so no GX project or store has to exist on disk.
    """
    from great_expectations.render.renderer import ValidationResultsPageRenderer
    from great_expectations.render.view import DefaultJinjaPageView

    docs_dir = Path(docs_dir)
    pages_dir = docs_dir / "validations"
    pages_dir.mkdir(parents=True, exist_ok=True)
    renderer = ValidationResultsPageRenderer()
    view = DefaultJinjaPageView()
    pages: list[Path | None] = []
    for outcome in outcomes:
        if outcome.raw is None:
            pages.append(None)
            continue
        stamp = datetime.now().strftime("%Y%m%dT%H%M%S%f")
        page = pages_dir / f"{outcome.table.replace('.', '__')}__{stamp}.html"
        page.write_text(offline_page(view.render(renderer.render(outcome.raw))))
        pages.append(page)
    _copy_static_assets(docs_dir / STATIC_FOLDER)
    return DataDocs(_write_index(docs_dir, pages_dir), pages)


# GX's page template loads jQuery, Bootstrap 4, Font Awesome and more from public CDNs, so on a network
# without internet a page loses its layout, icons and scripts (and raises `$ is not defined`). Pages are
# rewritten to load the three they need from `<docs>/_static`, copied from pinned XStatic wheels; the
# rest (Vega charts, table filters, a date picker, a dark theme, GX's hosted logo) is not used by
# validation pages and is dropped, as is the first-visit walkthrough pop-up.
STATIC_FOLDER = "_static"
_LOCAL_ASSETS = {  # fragment of the CDN URL -> the local file that replaces it
    "jquery": f"../{STATIC_FOLDER}/jquery.min.js",
    "bootstrap/4.3.1/js/bootstrap.min.js": f"../{STATIC_FOLDER}/bootstrap.bundle.min.js",
    "bootstrap/4.3.1/css/bootstrap.min.css": f"../{STATIC_FOLDER}/bootstrap.min.css",
    "font-awesome": f"../{STATIC_FOLDER}/font-awesome/css/all.min.css",
}
_EXTERNAL_SCRIPT = re.compile(r"<script\b[^>]*\bsrc=\"(https?://[^\"]+)\"[^>]*>\s*</script>", re.S)
_EXTERNAL_LINK = re.compile(r"<link\b[^>]*\bhref=\"(https?://[^\"]+)\"[^>]*>", re.S)
_EXTERNAL_IMG = re.compile(r"<img\b[^>]*\bsrc=\"https?://[^\"]+\"[^>]*>", re.S)
_WALKTHROUGH = re.compile(r"<script>(?:(?!</script>).)*ge-walkthrough-modal-dismissed.*?</script>", re.S)


def offline_page(html: str) -> str:
    """A GX Data Docs page that loads nothing from outside the docs folder."""

    def local(match: re.Match[str], tag: str) -> str:
        url = match.group(1)
        for fragment, path in _LOCAL_ASSETS.items():
            if fragment in url:
                if tag == "script":
                    return f'<script src="{path}"></script>'
                return f'<link rel="stylesheet" type="text/css" href="{path}">'
        return ""

    html = _EXTERNAL_SCRIPT.sub(lambda m: local(m, "script"), html)
    html = _EXTERNAL_LINK.sub(lambda m: local(m, "link"), html)
    html = _EXTERNAL_IMG.sub("", html)
    html = _WALKTHROUGH.sub("", html)
    # The page is written for GX's own site layout (four folders deep); ours keeps pages beside the index.
    return html.replace('href="../../../../index.html"', 'href="../index.html"')


def _copy_static_assets(folder: Path) -> None:
    """jQuery, Bootstrap and Font Awesome from their XStatic wheels into `folder` (once)."""
    import shutil

    import xstatic.pkg.bootstrap as bootstrap
    import xstatic.pkg.font_awesome as font_awesome
    import xstatic.pkg.jquery as jquery

    if (folder / "font-awesome" / "webfonts").is_dir():
        return
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(Path(jquery.BASE_DIR) / "jquery.min.js", folder)
    shutil.copy(Path(bootstrap.BASE_DIR) / "js" / "bootstrap.bundle.min.js", folder)
    shutil.copy(Path(bootstrap.BASE_DIR) / "css" / "bootstrap.min.css", folder)
    for part in ("css", "webfonts"):
        shutil.copytree(Path(font_awesome.BASE_DIR) / part, folder / "font-awesome" / part, dirs_exist_ok=True)


def _write_index(docs_dir: Path, pages_dir: Path) -> Path:
    from html import escape

    rows = []
    for page in sorted(pages_dir.glob("*.html"), reverse=True):
        table, _, stamp = page.stem.rpartition("__")
        rows.append(
            f'<li><a href="validations/{escape(page.name)}">'
            f"{escape(table.replace('__', '.', 1))}</a> {escape(stamp)}</li>"
        )
    index = docs_dir / "index.html"
    index.write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>OptiBid data quality</title></head><body>"
        "<h1>OptiBid data quality: validation results</h1><ul>" + "".join(rows) + "</ul></body></html>"
    )
    return index
