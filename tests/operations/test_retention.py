"""Retention on a real Postgres: old days move to the cold tier only once the archive has been read back and
matches the hot rows; reads across hot and archived days give the same values as before; a day comes back
with one call; login attempts are pruned while the audit log is archived only after its compliance period."""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from infra import db
from infra.lake import Lake
from infra.retention import (
    RetentionError,
    apply_retention,
    archive_day,
    archived_days,
    policy_for,
    read_days,
    restore_day,
)
from infra.settings import Settings
from tests.conftest import private_database

TODAY = date(2026, 12, 6)
OLD = [TODAY - timedelta(days=800 + i) for i in range(3)]


@pytest.fixture(scope="module")
def warehouse(database_url: str) -> Iterator[str]:
    """One migrated database for the module (a migration per test would double its time); `_seed` empties the
    tables the tests write."""
    yield from private_database(database_url, f"optibid_retention_{os.getpid()}")


def _seed(url: str) -> None:
    with db.connect(url) as conn:
        conn.execute("TRUNCATE silver.market__prices, ops.audit_log, ops.login_attempts, ops.archived_partitions")
        for day in [*OLD, TODAY - timedelta(days=1)]:
            for hour in range(24):
                ts = datetime(day.year, day.month, day.day, hour, tzinfo=UTC)
                conn.execute(
                    """INSERT INTO silver.market__prices (ts_utc, market_date, zone, node, market, interval_minutes,
                           price, currency, org_id, revision, source, ingested_at)
                       VALUES (%s, %s, 'PJM', NULL, 'DA', 60, %s, 'USD', NULL, 1, 'files', %s)""",
                    (ts, day, 30.123456789 + hour / 7, ts + timedelta(hours=26)),
                )
        for age in (500, 401, 10):
            conn.execute(
                "INSERT INTO ops.audit_log (at, org_id, actor, action, target, details) VALUES (%s, 'acme', 'a', "
                "'user.created', 'u1', %s::jsonb)",
                (datetime.now(UTC) - timedelta(days=age), '{"nested": {"x": [1, 2.50, "é"]}}'),
            )
        for age in (45, 31, 2):
            conn.execute(
                "INSERT INTO ops.login_attempts (email, client_ip, at, success)"
                " VALUES ('a@b.c', '127.0.0.1', %s, false)",
                (datetime.now(UTC) - timedelta(days=age),),
            )


def _settings(tmp_path: Path, **overrides) -> Settings:
    return Settings(home=tmp_path / "home", archive_uri=str(tmp_path / "cold"), **overrides)


def _count(url: str, query: str) -> int:
    with db.connect(url) as conn:
        return conn.execute(query).fetchone()[0]


def test_old_days_move_to_the_cold_tier_and_read_back_value_for_value(
    warehouse: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _seed(warehouse)
    settings = _settings(tmp_path)
    window = (min(OLD), TODAY)
    before = read_days(warehouse, settings.resolved_archive_uri, "silver.market__prices", *window, "market_date")
    audit_before = read_days(
        warehouse,
        settings.resolved_archive_uri,
        "ops.audit_log",
        date(2020, 1, 1),
        TODAY + timedelta(days=1),
        "(at AT TIME ZONE 'UTC')::date",
    )

    outcomes = apply_retention(warehouse, settings, datetime.now(UTC).date())
    done = {(o.table, o.action): 0 for o in outcomes}
    for o in outcomes:
        done[(o.table, o.action)] += o.rows
    assert done[("silver.market__prices", "archive")] == 72
    assert done[("ops.audit_log", "archive")] == 2  # 500 and 401 days old; the 10-day-old entry stays
    assert done[("ops.login_attempts", "prune")] == 2
    assert _count(warehouse, "SELECT count(*) FROM silver.market__prices") == 24
    assert _count(warehouse, "SELECT count(*) FROM ops.audit_log") == 1
    assert _count(warehouse, "SELECT count(*) FROM ops.login_attempts") == 1
    assert list((tmp_path / "cold" / "warehouse" / "silver.market__prices").glob("day=*.parquet"))

    after = read_days(warehouse, settings.resolved_archive_uri, "silver.market__prices", *window, "market_date")
    assert after.equals(before)
    audit_after = read_days(
        warehouse,
        settings.resolved_archive_uri,
        "ops.audit_log",
        date(2020, 1, 1),
        TODAY + timedelta(days=1),
        "(at AT TIME ZONE 'UTC')::date",
    )
    assert audit_after.sort_by("id").equals(audit_before.sort_by("id"))

    # one command brings a day back, exactly as it was
    from app.cli import app
    from infra.settings import get_settings

    monkeypatch.setenv("OPTIBID_DATABASE_URL", warehouse)
    monkeypatch.setenv("OPTIBID_ARCHIVE_URI", settings.resolved_archive_uri)
    get_settings.cache_clear()  # the CLI reads the process-wide settings
    try:
        result = CliRunner().invoke(app, ["archive", "restore", "silver.market__prices", OLD[0].isoformat()])
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    assert "24 rows" in result.output
    assert (
        read_days(warehouse, settings.resolved_archive_uri, "silver.market__prices", *window, "market_date")
        .sort_by([("market_date", "ascending"), ("ts_utc", "ascending")])
        .equals(before.sort_by([("market_date", "ascending"), ("ts_utc", "ascending")]))
    )
    with db.connect(warehouse) as conn:
        assert [d for _, d, _, _ in archived_days(conn, "silver.market__prices")] == sorted(OLD[1:])
    with pytest.raises(RetentionError, match="not in the archive"):
        restore_day(warehouse, settings.resolved_archive_uri, "silver.market__prices", OLD[0])


def test_nothing_is_deleted_when_the_archive_cannot_be_written_or_verified(warehouse: str, tmp_path: Path) -> None:
    _seed(warehouse)
    blocked = tmp_path / "not_a_folder"
    blocked.write_text("a file where the archive would go")
    policy = policy_for(_settings(tmp_path), "silver.market__prices")
    with pytest.raises(Exception):  # noqa: B017 - any failure of the cold tier
        archive_day(warehouse, str(blocked), policy, OLD[0])
    assert _count(warehouse, f"SELECT count(*) FROM silver.market__prices WHERE market_date = '{OLD[0]}'") == 24
    assert _count(warehouse, "SELECT count(*) FROM ops.archived_partitions") == 0


def test_a_rebuilt_day_supersedes_its_archive_and_is_archived_in_its_place(warehouse: str, tmp_path: Path) -> None:
    _seed(warehouse)
    settings = _settings(tmp_path)
    policy = policy_for(settings, "silver.market__prices")
    day = OLD[0]
    archive_day(warehouse, settings.resolved_archive_uri, policy, day)
    rebuilt = read_days(
        warehouse, settings.resolved_archive_uri, "silver.market__prices", day, day + timedelta(1), "market_date"
    )
    with db.connect(warehouse) as conn:  # the day's next build from bronze: all of it, every price corrected
        for row in rebuilt.to_pylist():
            conn.execute(
                """INSERT INTO silver.market__prices (ts_utc, market_date, zone, node, market, interval_minutes,
                       price, currency, org_id, revision, source, ingested_at)
                   VALUES (%(ts_utc)s, %(market_date)s, %(zone)s, %(node)s, %(market)s, %(interval_minutes)s,
                       %(price)s + 1, %(currency)s, %(org_id)s, %(revision)s, %(source)s, %(ingested_at)s)""",
                row,
            )

    def read() -> pa.Table:
        return read_days(
            warehouse, settings.resolved_archive_uri, "silver.market__prices", day, day + timedelta(1), "market_date"
        )

    served = read()
    assert served.num_rows == 24  # the new build alone, not beside the archived one
    assert served.column("price").to_pylist() == [p + 1 for p in rebuilt.column("price").to_pylist()]
    assert archive_day(warehouse, settings.resolved_archive_uri, policy, day).rows == 24
    assert read().equals(served)
    assert _count(warehouse, f"SELECT count(*) FROM silver.market__prices WHERE market_date = '{day}'") == 0
    with db.connect(warehouse) as conn:
        assert conn.execute(
            "SELECT row_count FROM ops.archived_partitions WHERE table_name = 'silver.market__prices' AND day = %s",
            (day,),
        ).fetchone() == (24,)


def test_rows_appended_to_an_archived_audit_day_join_its_archive(warehouse: str, tmp_path: Path) -> None:
    _seed(warehouse)
    settings = _settings(tmp_path)
    policy = policy_for(settings, "ops.audit_log")
    day_sql = "(at AT TIME ZONE 'UTC')::date"
    with db.connect(warehouse) as conn:
        day = conn.execute(f"SELECT min({day_sql}) FROM ops.audit_log").fetchone()[0]
    window = (day, day + timedelta(days=1))
    archive_day(warehouse, settings.resolved_archive_uri, policy, day)
    with db.connect(warehouse) as conn:
        conn.execute(
            "INSERT INTO ops.audit_log (at, org_id, actor, action) VALUES (%s, 'acme', 'late', 'user.deleted')",
            (datetime.combine(day, datetime.min.time(), UTC) + timedelta(hours=23),),
        )
    both = read_days(warehouse, settings.resolved_archive_uri, "ops.audit_log", *window, day_sql)
    assert sorted(both.column("actor").to_pylist()) == ["a", "late"]
    assert archive_day(warehouse, settings.resolved_archive_uri, policy, day).rows == 1
    assert _count(warehouse, "SELECT count(*) FROM ops.audit_log WHERE actor = 'late'") == 0
    after = read_days(warehouse, settings.resolved_archive_uri, "ops.audit_log", *window, day_sql)
    assert after.sort_by("id").equals(both.sort_by("id"))


def test_retention_overrides_are_checked(tmp_path: Path) -> None:
    with pytest.raises(RetentionError, match=r"without a policy: silver\.nope"):
        policy_for(_settings(tmp_path, retention_days={"silver.nope": 3}), "silver.market__prices")
    assert policy_for(_settings(tmp_path, retention_days={"ops.audit_log": 2555}), "ops.audit_log").hot_days == 2555


def test_the_retention_asset_records_what_it_archived_and_pruned(
    warehouse: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dagster as dg

    from assets.operations import retention
    from assets.shared.resources import LakeResource, WarehouseResource
    from infra.settings import get_settings

    _seed(warehouse)
    _cdc_events(Lake(str(tmp_path / "lake")), datetime.now(UTC))
    monkeypatch.setenv("OPTIBID_ARCHIVE_URI", str(tmp_path / "cold"))
    get_settings.cache_clear()
    try:
        resources = {
            "warehouse": WarehouseResource(database_url=warehouse),
            "lake": LakeResource(lake_uri=str(tmp_path / "lake")),
        }
        result = dg.materialize([retention], resources=resources)
    finally:
        get_settings.cache_clear()
    [mat] = result.asset_materializations_for_node("ops__retention")
    meta = {k: v.value for k, v in mat.metadata.items()}
    assert (meta["days_archived"], meta["rows_archived"], meta["rows_pruned"]) == (5, 74, 2)
    assert "archive silver.market__prices | 3 | 72" in meta["per_table"]
    assert meta["payloads_archived"] == 5
    assert "archive_payloads bronze.cdc__bids | 1 | 5" in meta["per_table"]


def test_the_api_serves_archived_audit_entries_as_it_served_them_hot(
    warehouse: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fastapi.testclient import TestClient

    from ingestion.reference import seed_reference_data
    from serving_api.app import create_app
    from serving_api.cli import create_user

    _seed(warehouse)
    with db.connect(warehouse) as conn:
        seed_reference_data(conn, nodes_per_zone=1)
    create_user(warehouse, "acme", "audit-admin@acme.example", "admin", "Audit-Admin-Password-1!")
    with db.connect(warehouse) as conn:  # another organization's old entry must stay invisible
        conn.execute(
            "INSERT INTO ops.audit_log (at, org_id, actor, action) VALUES (now() - interval '600 days', 'globex', "
            "'x', 'user.created')"
        )
    settings = _settings(tmp_path, database_url=warehouse, jwt_secret="audit-secret-" + "z" * 32)
    app = create_app(settings)
    with TestClient(app) as client:
        token = client.post(
            "/api/v1/auth/token", data={"username": "audit-admin@acme.example", "password": "Audit-Admin-Password-1!"}
        ).json()["access_token"]
        headers = {"Authorization": f"Bearer {token}"}
        hot = client.get("/api/v1/audit?limit=1000", headers=headers)
        assert hot.status_code == 200 and len(hot.json()) >= 3
        outcomes = apply_retention(warehouse, settings, datetime.now(UTC).date())
        assert sum(o.rows for o in outcomes if o.table == "ops.audit_log") == 3
        cold = client.get("/api/v1/audit?limit=1000", headers=headers)
        assert cold.status_code == 200
        assert cold.content == hot.content
        assert all(e["org_id"] == "acme" for e in cold.json())

        # dead letters: the same answer, whole or in pages, once the old ones live in the cold lake
        _dead_letters(Lake(settings.resolved_lake_uri), datetime.now(UTC))
        letters = ["/api/v1/ingestion/dead-letters", "/api/v1/ingestion/dead-letters?limit=1"]
        before = {path: client.get(path, headers=headers).content for path in letters}
        assert b'"count":3' in before[letters[0]]
        lake_outcomes = apply_retention(
            warehouse, settings, datetime.now(UTC).date(), lake=Lake(settings.resolved_lake_uri)
        )
        assert [o.rows for o in lake_outcomes if o.table == "bronze.cdc__dead_letters"] == [2]
        assert {path: client.get(path, headers=headers).content for path in letters} == before
        older = client.get(
            "/api/v1/ingestion/dead-letters",
            params={"limit": 1, "cursor": json.loads(before[letters[1]])["next_cursor"]},
            headers=headers,
        )
        assert older.json()["count"] == 1 and older.json()["data"][0]["offset"] == 1


def _dead_letters(lake: Lake, now: datetime, topic: str = "optibid.market.ticks") -> None:
    """Three dead letters of `topic`, ingested 45, 40 and 3 days before `now`, through the consumer's writer."""
    from ingestion.cdc.decode import DEAD_LETTER_SCHEMA
    from ingestion.cdc.delta import BronzeTables

    writer = BronzeTables(lake)
    for age, offset in ((45, 0), (40, 1), (3, 2)):
        row = {f.name: None for f in DEAD_LETTER_SCHEMA}
        row |= {"target_table": "ticks__prices", "reason_code": "bad_json", "reason": "not JSON", "key_b64": "aw=="}
        row |= {"value_b64": "e25vdA==", "_topic": topic, "_partition": 0, "_batch_id": f"b{offset}"}
        row |= {"_offset": offset, "_offset_epoch": 0, "_ingested_at": now - timedelta(days=age)}
        writer.append(
            "cdc__dead_letters",
            pa.Table.from_pylist([row], schema=DEAD_LETTER_SCHEMA),
            topic_offsets={(topic, 0): offset},
        )


def test_old_dead_letters_move_to_the_cold_lake_and_the_offsets_stay(tmp_path: Path) -> None:
    from infra.retention import (
        LakeRetentionPolicy,
        archive_lake_rows,
        archive_lake_uri,
        archived_lake_days,
        read_archived_lake_rows,
    )

    lake = Lake(str(tmp_path / "lake"))
    now = datetime(2026, 12, 6, tzinfo=UTC)
    _dead_letters(lake, now, "t.public.bids")
    hot_before = lake.table("bronze", "cdc__dead_letters").to_pyarrow_table()
    archive = str(tmp_path / "cold")
    policy = LakeRetentionPolicy("cdc__dead_letters", 30)

    outcome = archive_lake_rows(lake, archive, policy, now)
    assert outcome.rows == 2
    hot = lake.table("bronze", "cdc__dead_letters")
    assert hot.to_pyarrow_table().column("_offset").to_pylist() == [2]
    assert hot.transaction_version("t.public.bids-0") == 2  # the consumer's position is untouched
    cold = read_archived_lake_rows(lake, archive, "cdc__dead_letters")
    together = pa.concat_tables([cold.select(hot_before.column_names), hot.to_pyarrow_table()])
    assert together.sort_by("_offset").equals(hot_before.sort_by("_offset"))
    # a second pass finds nothing more to move, and does not archive twice
    assert archive_lake_rows(lake, archive, policy, now).rows == 0
    assert read_archived_lake_rows(lake, archive, "cdc__dead_letters").num_rows == 2
    # listed by the UTC day of the policy's column
    per_day = Counter(t.astimezone(UTC).date() for t in cold["_ingested_at"].to_pylist())
    uri = archive_lake_uri(archive, "cdc__dead_letters")
    assert archived_lake_days(lake, archive, "cdc__dead_letters") == [
        ("bronze.cdc__dead_letters", d, n, uri) for d, n in sorted(per_day.items())
    ]


BIDS_TOPIC = "optibid.public.bids"
NOW = datetime(2026, 12, 6, tzinfo=UTC)


def _cdc_events(lake: Lake, now: datetime, table: str = "cdc__bids", topic: str = BIDS_TOPIC) -> None:
    """Bid change events through the consumer's writer, ingested 120, 100 and 95 days before `now` (old: the
    95-day batch holds a tombstone, which has no value) and 10 days and 1 day before (recent; the last batch
    after an offset reset, epoch 1, so its offsets repeat old ones)."""
    from ingestion.cdc.decode import CDC_SCHEMA
    from ingestion.cdc.delta import BronzeTables

    writer = BronzeTables(lake)
    schema = CDC_SCHEMA.append(pa.field("price", pa.float64()))
    batches = [(120, 0, 0, [0, 1]), (100, 1, 0, [0, 1]), (95, 0, 0, [2, 3]), (10, 0, 0, [4]), (1, 0, 1, [0, 1])]
    for age, partition, epoch, offsets in batches:
        rows = []
        for offset in offsets:
            tombstone = age == 95 and offset == 2
            after = None if tombstone else json.dumps({"bid_id": f"b{partition}{offset}", "price": 40.0 + offset})
            envelope = {"payload": {"op": "u", "after": None if tombstone else json.loads(after)}, "epoch": epoch}
            payload = None if tombstone else json.dumps(envelope)
            row = {f.name: None for f in schema}
            row |= {"op": "t" if tombstone else "u", "key": json.dumps({"bid_id": f"b{partition}{offset}"})}
            row |= {"after_json": after, "payload_raw": payload, "price": None if tombstone else 40.0 + offset}
            row |= {"source_ts_ms": 1_700_000_000_000 + offset, "source_lsn": 100 + offset, "source_table": "bids"}
            row |= {"_topic": topic, "_partition": partition, "_offset": offset, "_offset_epoch": epoch}
            row |= {"_ingested_at": now - timedelta(days=age, minutes=offset), "_batch_id": f"b{age}"}
            rows.append(row)
        writer.append(
            table,
            pa.Table.from_pylist(rows, schema=schema),
            topic_offsets={(topic, partition): max(offsets)},
            epochs={(topic, partition): epoch},
        )


LINEAGE = [(c, "ascending") for c in ("_topic", "_partition", "_offset_epoch", "_offset")]


def _hot(lake: Lake, table: str = "cdc__bids") -> pa.Table:
    return lake.table("bronze", table).to_pyarrow_table().sort_by(LINEAGE)


def _offsets(lake: Lake, table: str = "cdc__bids") -> dict[str, int | None]:
    hot = lake.table("bronze", table)
    apps = [f"{BIDS_TOPIC}-{p}{suffix}" for p in (0, 1) for suffix in ("", ".epoch")]
    return {app: hot.transaction_version(app) for app in apps}


def _key(row: dict) -> tuple[str, int, int, int]:
    return (row["_topic"], row["_partition"], row["_offset_epoch"], row["_offset"])


def test_old_raw_cdc_payloads_move_to_the_cold_tier_and_come_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from deltalake import DeltaTable

    from infra.lake_maintenance import only_maintenance_since
    from infra.retention import (
        PayloadRetentionPolicy,
        archive_payloads,
        archived_lake_days,
        payload_archive_uri,
        raw_payloads,
    )

    lake = Lake(str(tmp_path / "lake"))
    archive = str(tmp_path / "cold")
    _cdc_events(lake, NOW)
    before = _hot(lake)
    offsets = _offsets(lake)
    version = lake.table("bronze", "cdc__bids").version()
    cutoff = pa.scalar(NOW - timedelta(days=90), pa.timestamp("us", tz="UTC"))
    is_old = pc.less(before["_ingested_at"], cutoff)
    old_payloads = before.filter(is_old).filter(before.filter(is_old)["payload_raw"].is_valid())
    assert old_payloads.num_rows == 5  # six old events, one of them a tombstone

    outcome = archive_payloads(lake, archive, PayloadRetentionPolicy("cdc__bids", 90), NOW)
    assert outcome.rows == 5 and outcome.action == "archive_payloads"
    after = _hot(lake)
    originals = zip(is_old.to_pylist(), before["payload_raw"].to_pylist(), strict=True)
    assert after.column("payload_raw").to_pylist() == [None if old else payload for old, payload in originals]
    # every other column of every row, and the consumer's position, exactly as they were
    assert after.drop_columns(["payload_raw"]).equals(before.drop_columns(["payload_raw"]))
    assert _offsets(lake) == offsets and offsets[f"{BIDS_TOPIC}-0.epoch"] == 1
    # the rewrite is maintenance to silver's change detection
    assert only_maintenance_since(lake.table("bronze", "cdc__bids"), version)

    cold = DeltaTable(payload_archive_uri(archive, "cdc__bids")).to_pyarrow_table()
    columns = ["_topic", "_partition", "_offset_epoch", "_offset", "_ingested_at", "payload_raw"]
    assert cold.select(columns).sort_by(LINEAGE).equals(old_payloads.select(columns))
    # listed by the UTC day each payload was ingested
    per_day = Counter(t.astimezone(UTC).date() for t in old_payloads["_ingested_at"].to_pylist())
    uri = payload_archive_uri(archive, "cdc__bids")
    listed = [("bronze.cdc__bids (raw payloads)", d, n, uri) for d, n in sorted(per_day.items())]
    assert archived_lake_days(lake, archive) == archived_lake_days(lake, archive, "bronze.cdc__bids") == listed
    assert archived_lake_days(lake, archive, "cdc__other") == []
    for path in DeltaTable(payload_archive_uri(archive, "cdc__bids")).file_uris():
        assert pq.ParquetFile(path).metadata.row_group(0).column(0).compression == "ZSTD"

    # reads are transparent: every row's original value, old (cold) or recent (hot), epochs told apart
    keys = [_key(r) for r in before.to_pylist()]
    assert raw_payloads(lake, archive, "cdc__bids", keys) == {_key(r): r["payload_raw"] for r in before.to_pylist()}
    assert raw_payloads(lake, archive, "cdc__bids", [(BIDS_TOPIC, 0, 9, 0)]) == {}

    # a second pass has nothing left to move and archives nothing twice
    again = lake.table("bronze", "cdc__bids").version()
    assert archive_payloads(lake, archive, PayloadRetentionPolicy("cdc__bids", 90), NOW).rows == 0
    assert lake.table("bronze", "cdc__bids").version() == again
    assert DeltaTable(payload_archive_uri(archive, "cdc__bids")).to_pyarrow_table().num_rows == 5

    # one command brings the payloads back: the table reads as it did before
    from app.cli import app
    from infra.settings import get_settings

    monkeypatch.setenv("OPTIBID_LAKE_URI", lake.root)
    monkeypatch.setenv("OPTIBID_ARCHIVE_URI", archive)
    get_settings.cache_clear()
    try:
        listed = CliRunner().invoke(app, ["archive", "list", "bronze.cdc__bids"])
        result = CliRunner().invoke(app, ["archive", "restore-payloads", "bronze.cdc__bids"])
        shown = CliRunner().invoke(app, ["archive", "payload", "cdc__bids", BIDS_TOPIC, "1", "0"])
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
    assert listed.exit_code == 0, listed.output
    assert "payloads" in listed.output and min(per_day).isoformat() in listed.output
    assert result.exit_code == 0, result.output
    assert "5 raw payloads back" in result.output
    assert _hot(lake).equals(before)
    assert _offsets(lake) == offsets
    assert shown.exit_code == 0, shown.output
    assert shown.output.strip() == before.filter(pc.equal(before["_partition"], 1))["payload_raw"][0].as_py()
    # restored payloads are cleared again by the next pass without a second copy in the archive
    assert archive_payloads(lake, archive, PayloadRetentionPolicy("cdc__bids", 90), NOW).rows == 5
    assert _hot(lake).equals(after)
    assert DeltaTable(payload_archive_uri(archive, "cdc__bids")).to_pyarrow_table().num_rows == 5


def test_a_payload_archive_that_does_not_match_clears_nothing(tmp_path: Path) -> None:
    from deltalake import write_deltalake

    from infra.retention import (
        ARCHIVE_VERSION_COLUMN,
        PayloadRetentionPolicy,
        archive_payloads,
        payload_archive_uri,
    )

    lake = Lake(str(tmp_path / "lake"))
    archive = str(tmp_path / "cold")
    _cdc_events(lake, NOW)
    before = _hot(lake)
    version = lake.table("bronze", "cdc__bids").version()
    # the cold tier already holds one of the old payloads, but not the bytes the hot row holds
    oldest = before.slice(0, 1).select(["_topic", "_partition", "_offset_epoch", "_offset", "_ingested_at"])
    damaged = oldest.append_column("payload_raw", pa.array(["{}"])).append_column(
        ARCHIVE_VERSION_COLUMN, pa.array([0], pa.int64())
    )
    write_deltalake(payload_archive_uri(archive, "cdc__bids"), damaged)

    with pytest.raises(RetentionError, match="no payload cleared"):
        archive_payloads(lake, archive, PayloadRetentionPolicy("cdc__bids", 90), NOW)
    assert lake.table("bronze", "cdc__bids").version() == version
    assert _hot(lake).equals(before)


def test_a_consumer_append_during_the_payload_rewrite_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from deltalake import DeltaTable

    from infra.retention import PayloadRetentionPolicy, archive_payloads
    from ingestion.cdc.delta import BronzeTables

    lake = Lake(str(tmp_path / "lake"))
    _cdc_events(lake, NOW)
    before = _hot(lake)
    update = DeltaTable.update
    appended = []

    def update_while_the_consumer_commits(self: DeltaTable, *args, **kwargs):
        # The retention pass holds this snapshot; the consumer commits the next offset of partition 0 on top.
        if not appended:
            row = before.filter(pc.equal(before["_offset_epoch"], 1)).slice(1, 1).to_pylist()[0]
            row |= {"_offset": 2, "payload_raw": '{"new": true}', "_ingested_at": NOW}
            BronzeTables(lake).append(
                "cdc__bids", pa.Table.from_pylist([row], schema=before.schema), topic_offsets={(BIDS_TOPIC, 0): 2}
            )
            appended.append(row)
        return update(self, *args, **kwargs)

    monkeypatch.setattr(DeltaTable, "update", update_while_the_consumer_commits)
    assert archive_payloads(lake, str(tmp_path / "cold"), PayloadRetentionPolicy("cdc__bids", 90), NOW).rows == 5
    after = _hot(lake)
    assert after.num_rows == before.num_rows + 1
    assert [r["payload_raw"] for r in after.to_pylist() if r["_offset"] == 2 and r["_offset_epoch"] == 1] == [
        '{"new": true}'
    ]
    assert lake.table("bronze", "cdc__bids").transaction_version(f"{BIDS_TOPIC}-0") == 2
    assert sum(v is None for v in after["payload_raw"].to_pylist()) == 6  # five archived, one tombstone
    # the rewrite committed on top of the append it had not read (no conflict to retry)
    cleared, consumer = lake.table("bronze", "cdc__bids").history(2)
    assert (cleared["operation"], consumer["operation"]) == ("UPDATE", "WRITE")
    assert cleared["readVersion"] < consumer["version"]


def test_payload_retention_covers_every_cdc_table_with_overrides(tmp_path: Path) -> None:
    from infra.retention import PAYLOAD_HOT_DAYS, payload_policies

    lake = Lake(str(tmp_path / "lake"))
    _cdc_events(lake, NOW)
    _cdc_events(lake, NOW, table="cdc__trades", topic="optibid.public.trades")
    _dead_letters(lake, NOW)
    assert [(p.table, p.hot_days) for p in payload_policies(lake, _settings(tmp_path))] == [
        ("cdc__bids", PAYLOAD_HOT_DAYS),
        ("cdc__trades", PAYLOAD_HOT_DAYS),
    ]
    settings = _settings(tmp_path, retention_days={"bronze.cdc__*": 30, "bronze.cdc__trades": 200})
    assert [(p.table, p.hot_days) for p in payload_policies(lake, settings)] == [
        ("cdc__bids", 30),
        ("cdc__trades", 200),
    ]
    policy_for(settings, "ops.audit_log")  # the CDC keys are accepted by the warehouse policies' check
    with pytest.raises(RetentionError, match="at least 1"):
        payload_policies(lake, _settings(tmp_path, retention_days={"bronze.cdc__bids": 0}))


def test_a_payload_pass_takes_the_oldest_days_first_and_no_more(tmp_path: Path) -> None:
    from infra.retention import PayloadRetentionPolicy, archive_payloads

    lake = Lake(str(tmp_path / "lake"))
    archive = str(tmp_path / "cold")
    _cdc_events(lake, NOW)
    policy = PayloadRetentionPolicy("cdc__bids", 90)
    passes = [archive_payloads(lake, archive, policy, NOW, max_days_per_pass=10).rows for _ in range(3)]
    assert passes == [2, 3, 0]  # ingested 120 days ago; then 100 and 95 days ago (one a tombstone); nothing
