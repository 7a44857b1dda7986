"""The semantic description of the gold layer as a standalone HTML page (served by the API).

What belongs here: turning dbt's `manifest.json` (models, descriptions, column docs, `meta.grain`) and,
when present next to it, `catalog.json` (column types as built), plus the KPI catalog rows, into HTML.
Gold tables of the BI registry that dbt does not describe (or no manifest at all) fall back to the
registry's descriptions, so the page is useful before the first `dbt docs generate`.
Every text is HTML-escaped: descriptions come from YAML files and database rows.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from html import escape
from pathlib import Path
from typing import Any

from ingestion.bi.tables import TABLES

GOLD_SCHEMA_HINTS = ("gold",)
KPI_FIELDS = ("kpi_code", "name", "description", "unit", "definition", "grain", "owner")


def _is_gold(node: Mapping[str, Any]) -> bool:
    schema = str(node.get("schema") or "")
    config_schema = str((node.get("config") or {}).get("schema") or "")
    fqn = [str(p) for p in node.get("fqn") or []]
    return any(h in schema or h == config_schema or h in fqn for h in GOLD_SCHEMA_HINTS)


def gold_models(
    manifest: Mapping[str, Any], catalog: Mapping[str, Any] | None = None
) -> list[dict[str, Any]]:
    """Gold models of a dbt manifest as dicts: name, relation, description, grain, columns[name,type,desc]."""
    catalog_nodes = (catalog or {}).get("nodes") or {}
    models: list[dict[str, Any]] = []
    for uid, node in sorted((manifest.get("nodes") or {}).items()):
        if node.get("resource_type") != "model" or not _is_gold(node):
            continue
        types = {
            name.lower(): col.get("type")
            for name, col in ((catalog_nodes.get(uid) or {}).get("columns") or {}).items()
        }
        meta = {**(node.get("config") or {}).get("meta", {}), **(node.get("meta") or {})}
        columns = [
            {
                "name": name,
                "type": col.get("data_type") or types.get(name.lower()) or "",
                "description": col.get("description") or "",
            }
            for name, col in (node.get("columns") or {}).items()
        ]
        documented = {c["name"].lower() for c in columns}
        columns += [
            {"name": name, "type": typ or "", "description": ""}
            for name, typ in types.items()
            if name not in documented
        ]
        models.append(
            {
                "name": node.get("name", uid),
                "relation": f"{node.get('schema', '')}.{node.get('alias') or node.get('name', '')}",
                "description": node.get("description") or "",
                "grain": str(meta.get("grain") or ""),
                "columns": columns,
            }
        )
    return models


def _registry_models(skip: set[str]) -> list[dict[str, Any]]:
    return [
        {
            "name": spec.pg_table,
            "relation": spec.qualified_pg_name,
            "description": spec.description,
            "grain": spec.grain,
            "columns": [
                {"name": c.name, "type": c.pg_type, "description": c.description} for c in spec.columns
            ],
        }
        for spec in TABLES.values()
        if spec.qualified_pg_name not in skip
    ]


def _load_json(path: Path | None) -> dict[str, Any] | None:
    if path is None or not path.is_file():
        return None
    return json.loads(path.read_text())


def render_semantic_html(
    manifest_path: str | Path | None,
    kpi_rows: Iterable[Mapping[str, Any]],
    *,
    catalog_path: str | Path | None = None,
    title: str = "OptiBid gold layer",
) -> str:
    """An HTML page describing the gold tables (grain, columns) and the KPI definitions.

    `manifest_path` may be missing (registry fallback); `catalog_path` defaults to `catalog.json` next to
    the manifest. `kpi_rows` are KPI catalog rows (mappings with kpi_code, name, description, unit, ...).
    """
    manifest_file = Path(manifest_path) if manifest_path else None
    manifest = _load_json(manifest_file)
    catalog_file = (
        Path(catalog_path)
        if catalog_path
        else (manifest_file.parent / "catalog.json" if manifest_file else None)
    )
    catalog = _load_json(catalog_file)
    models = gold_models(manifest, catalog) if manifest else []
    models += _registry_models({m["relation"] for m in models})
    kpis = sorted((dict(r) for r in kpi_rows), key=lambda r: str(r.get("kpi_code", "")))

    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{escape(title)}</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:70em}table{border-collapse:collapse;"
        "margin-bottom:1.5em}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left;"
        "vertical-align:top}"
        "th{background:#f3f3f3}code{background:#f6f6f6}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        f"<p>Source: {'dbt manifest' if manifest else 'BI table registry (no dbt manifest found)'}"
        f"{' + catalog' if catalog else ''}.</p>",
        '<nav><a href="#tables">Tables</a> · <a href="#kpis">KPI definitions</a></nav>',
        '<h2 id="tables">Tables</h2>',
    ]
    for model in models:
        parts.append(f'<section id="{escape(model["name"], quote=True)}">')
        parts.append(f"<h3><code>{escape(model['relation'])}</code></h3>")
        if model["description"]:
            parts.append(f"<p>{escape(model['description'])}</p>")
        if model["grain"]:
            parts.append(f"<p><strong>Grain:</strong> {escape(model['grain'])}</p>")
        parts.append("<table><tr><th>Column</th><th>Type</th><th>Description</th></tr>")
        for col in model["columns"]:
            parts.append(
                f"<tr><td><code>{escape(col['name'])}</code></td><td>{escape(str(col['type']))}</td>"
                f"<td>{escape(col['description'])}</td></tr>"
            )
        parts.append("</table></section>")
    parts.append('<h2 id="kpis">KPI definitions</h2>')
    if kpis:
        extra = sorted({k for row in kpis for k in row} - set(KPI_FIELDS))
        fields = [f for f in KPI_FIELDS if any(f in row for row in kpis)] + extra
        parts.append("<table><tr>" + "".join(f"<th>{escape(f)}</th>" for f in fields) + "</tr>")
        for row in kpis:
            cells = "".join(
                f"<td>{escape('' if row.get(f) is None else str(row.get(f)))}</td>" for f in fields
            )
            parts.append(f"<tr>{cells}</tr>")
        parts.append("</table>")
    else:
        parts.append("<p>The KPI catalog is empty.</p>")
    parts.append("</body></html>")
    return "\n".join(parts)
