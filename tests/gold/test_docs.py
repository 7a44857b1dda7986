"""`dbt docs generate` works against the warehouse and yields a browsable static site."""

from __future__ import annotations

import json
from pathlib import Path


def test_docs_site(gold_built: str, dbt_target_dir: Path) -> None:
    from infra.dbt import dbt_docs_site

    site = dbt_docs_site(gold_built, target_path=dbt_target_dir)
    assert site == dbt_target_dir / "static_index.html"
    html = site.read_text()
    assert "kpi_values" in html and len(html) > 100_000
    catalog = json.loads((dbt_target_dir / "catalog.json").read_text())
    # the catalog was read from the live database: gold.kpi_values and its columns are in it
    node = catalog["nodes"]["model.optibid.kpi_values"]
    assert node["metadata"]["schema"] == "gold"
    assert {"kpi_code", "grain", "zone", "org_id", "period_start", "market_date", "value"} <= set(
        node["columns"]
    )
