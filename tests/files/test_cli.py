"""`optibid ingest files PATH...` end to end, plus a plain JSON array through the same door."""

from __future__ import annotations

import json

from deltalake import DeltaTable
from typer.testing import CliRunner

from tests.files import corpus


def test_cli_lands_files_and_reports_each(database_url, settings, tmp_path):
    from app.cli import app
    from infra.lake import lake_from_settings

    good = corpus.chicago_naive_lmp(tmp_path)
    held = corpus.ambiguous_values_csv(tmp_path)
    result = CliRunner().invoke(
        app,
        [
            "ingest",
            "files",
            str(good),
            str(held),
            "--tz",
            "America/Chicago",
            "-d",
            "currency=USD",
            "--org",
            "cli",
        ],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    lines = {line.split("│")[1].strip(): line for line in result.output.splitlines() if line.count("│") > 5}
    assert "landed" in lines["ercot_rt_lmp.csv"] and "held_for_mapping" in lines["export_0001.csv"]
    table = DeltaTable(lake_from_settings(settings).table_uri("bronze", "files__prices")).to_pyarrow_table()
    assert {r["_org_id"] for r in table.to_pylist() if r["_file_name"] == "ercot_rt_lmp.csv"} == {"cli"}


def test_plain_json_array(ingest, files_lake, tmp_path):
    path = tmp_path / "load_array.json"
    path.write_text(
        json.dumps(
            [
                {"datetime_utc": "2024-09-01T00:00:00Z", "area": "SE1", "demand_mw": 1200.5},
                {"datetime_utc": "2024-09-01T01:00:00Z", "area": "SE1", "demand_mw": None},
            ]
        )
    )
    report = ingest(path)
    assert (report["status"], report["dataset"], report["rows_landed"], report["rows_quarantined"]) == (
        "landed",
        "load",
        1,
        1,
    )
    assert report["quarantine_sample"][0]["reason"] == "missing load_mw"
    assert report["quarantine_sample"][0]["raw_json"] == {
        "datetime_utc": "2024-09-01T01:00:00Z",
        "area": "SE1",
        "demand_mw": None,
    }
