"""The semantic HTML page from a dbt manifest/catalog and KPI catalog rows."""

from __future__ import annotations

import json
from html.parser import HTMLParser

from ingestion.bi.semantic import gold_models, render_semantic_html

MANIFEST = {
    "nodes": {
        "model.optibid.fct_prices_hourly": {
            "resource_type": "model",
            "name": "fct_prices_hourly",
            "schema": "gold",
            "fqn": ["optibid", "gold", "fct_prices_hourly"],
            "description": "Hourly prices <per zone>",
            "meta": {"grain": "zone x hour"},
            "columns": {"zone": {"name": "zone", "description": "Bidding zone", "data_type": None}},
        },
        "model.optibid.stg_prices": {
            "resource_type": "model",
            "name": "stg_prices",
            "schema": "silver",
            "fqn": ["optibid", "silver", "stg_prices"],
            "description": "staging",
            "columns": {},
        },
        "test.optibid.not_null_x": {"resource_type": "test", "name": "not_null_x", "schema": "gold"},
    }
}
CATALOG = {
    "nodes": {
        "model.optibid.fct_prices_hourly": {
            "columns": {"zone": {"type": "text"}, "price_avg": {"type": "double precision"}}
        }
    }
}
KPIS = [
    {"kpi_code": "spread", "name": "Peak/off-peak spread", "unit": "EUR/MWh", "description": "peak - base"},
    {"kpi_code": "xss", "name": "<script>alert(1)</script>", "unit": None, "description": "a & b"},
]


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.text: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)

    def handle_data(self, data):
        self.text.append(data)


def test_gold_models_merge_manifest_docs_and_catalog_types():
    (model,) = gold_models(MANIFEST, CATALOG)
    assert model["relation"] == "gold.fct_prices_hourly"
    assert model["grain"] == "zone x hour"
    assert model["columns"] == [
        {"name": "zone", "type": "text", "description": "Bidding zone"},
        {"name": "price_avg", "type": "double precision", "description": ""},
    ]


def test_render_semantic_html_escapes_and_falls_back_to_registry(tmp_path):
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps(MANIFEST))
    (tmp_path / "catalog.json").write_text(json.dumps(CATALOG))
    page = render_semantic_html(manifest, KPIS)
    parser = _Text()
    parser.feed(page)
    text = "".join(parser.text)
    assert "script" not in parser.tags  # KPI text is escaped, not executed
    assert "<script>alert(1)</script>" in text and "a & b" in text
    assert "Hourly prices <per zone>" in text and "zone x hour" in text and "double precision" in text
    assert "stg_prices" not in text  # silver models are not part of the gold description
    # registry tables dbt does not describe yet still appear, with their registry grain
    assert "gold.kpi_values" in text and "one row per KPI code, grain, zone" in text
    assert text.count("gold.fct_prices_hourly") == 1

    fallback = render_semantic_html(tmp_path / "absent.json", [])
    assert "no dbt manifest found" in fallback and "The KPI catalog is empty." in fallback
    assert "gold.fct_prices_5min" in fallback
