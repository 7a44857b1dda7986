"""Backups on real Postgres servers (the embedded pgserver 16 and the system PostgreSQL 15) and a real lake, in a
folder or on moto's S3 server: encrypted and checksummed, tampering and a wrong key refused, and a restore that
gives back the same database contents, the home's state and every Delta table at the backed-up version with its
Kafka offsets."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pyarrow as pa
import pyarrow.fs as pafs
import pytest
from deltalake import write_deltalake
from typer.testing import CliRunner

from infra import db
from infra.backup import (
    BackupError,
    BackupKeys,
    _EncryptingWriter,
    create_backup,
    decrypt_chunks,
    find_backup,
    list_backups,
    newest_backup_age_hours,
    prune_backups,
    restore_backup,
    verify_backup,
)
from infra.lake import Lake
from infra.s3_server import S3Server, start_s3_server
from infra.settings import Settings
from ingestion.cdc.delta import BronzeTables
from tests.operations.test_lake_maintenance import TOPIC, _batch

KEY = "correct horse battery staple 42"
SYSTEM_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def fingerprint(database_url: str) -> dict[str, str]:
    """md5 of every table's rows in the platform's schemas (what a restore must give back)."""
    out = {}
    with psycopg.connect(database_url) as conn:
        tables = conn.execute(
            """SELECT schemaname, tablename FROM pg_tables
               WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2"""
        ).fetchall()
        for schema, table in tables:
            if (schema, table) == ("ops", "schema_migrations"):
                continue
            row = conn.execute(
                "SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), ''))"
                f' FROM "{schema}"."{table}" t'
            ).fetchone()
            out[f"{schema}.{table}"] = f"{row[0]}:{row[1]}"
    return out


def _settings(tmp_path: Path, name: str, backup_dir: Path) -> Settings:
    return Settings(home=tmp_path / name, backup_key=KEY, backup_dir=backup_dir)


def _home_state(home: Path) -> None:
    (home / "jwt_keys").mkdir(parents=True)
    (home / "jwt_keys" / "signing.pem").write_text("-----BEGIN PRIVATE KEY-----\nabc\n")
    (home / "dagster_home").mkdir()
    (home / "dagster_home" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")


def _seed(database_url: str) -> None:
    with db.connect(database_url) as conn:
        conn.execute("CREATE SCHEMA IF NOT EXISTS backup_probe")
        conn.execute("DROP TABLE IF EXISTS backup_probe.values_seen")
        conn.execute("CREATE TABLE backup_probe.values_seen (id int PRIMARY KEY, body jsonb, at timestamptz)")
        conn.execute(
            "INSERT INTO backup_probe.values_seen SELECT g, jsonb_build_object('v', g * 1.5), now() "
            "FROM generate_series(1, 5000) g"
        )


def _roundtrip(tmp_path: Path, source_url: str, target_url: str) -> None:
    backups = tmp_path / "backups"
    source = _settings(tmp_path, "home_a", backups)
    _home_state(source.home_dir)
    lake = Lake(str(source.home_dir / "lake"))
    writer = BronzeTables(lake)
    for b in range(3):
        writer.append(
            "ticks__prices", _batch(b * 10, 10), topic_offsets={(TOPIC, 0): b * 10 + 8, (TOPIC, 1): b * 10 + 9}
        )
    _seed(source_url)
    expected = fingerprint(source_url)

    backup = create_backup(source, source_url, lake)
    assert [b.backup_id for b in list_backups(source)] == [backup.backup_id]
    assert backup.manifest["lake"]["versions"] == {"bronze/ticks__prices": 2}
    # nothing readable in the clear: the probe's rows and the key file's text are not in any part
    for part in backup.path.glob("*.enc"):
        assert b"-----BEGIN PRIVATE KEY" not in part.read_bytes()
    # the platform goes on after the backup
    writer.append("ticks__prices", _batch(30, 10), topic_offsets={(TOPIC, 0): 38, (TOPIC, 1): 39})

    target = _settings(tmp_path, "home_b", backups)
    target_lake = Lake(str(target.home_dir / "lake"))
    report = restore_backup(target, "latest", target_url, target_lake)
    assert report.lake_versions == {"bronze/ticks__prices": 2}
    assert fingerprint(target_url) == expected
    assert (target.home_dir / "jwt_keys" / "signing.pem").read_text().startswith("-----BEGIN")
    restored = BronzeTables(target_lake)
    assert restored.last_offset("ticks__prices", TOPIC, 0) == 28
    assert restored.last_offset("ticks__prices", TOPIC, 1) == 29
    table = target_lake.table("bronze", "ticks__prices")
    assert table is not None and sorted(table.to_pyarrow_table().column("_offset").to_pylist()) == list(range(30))
    # a second restore over what is now there is refused, nothing touched
    with pytest.raises(BackupError, match="already holds tables"):
        restore_backup(target, "latest", target_url, target_lake)


@pytest.fixture
def restore_database(database_url: str) -> Iterator[str]:
    name = f"optibid_restore_{os.getpid()}"
    yield db.create_database(database_url, name, drop_existing=True)
    db.drop_database(database_url, name)


def test_backup_and_restore_on_the_embedded_server(tmp_path: Path, database_url: str, restore_database: str) -> None:
    _roundtrip(tmp_path, database_url, restore_database)


def test_backup_and_restore_on_the_system_postgresql_15(tmp_path: Path) -> None:
    try:
        psycopg.connect(SYSTEM_ADMIN_URL, connect_timeout=3).close()
    except psycopg.Error as exc:
        pytest.skip(f"no PostgreSQL at 127.0.0.1:5432 ({exc})")
    source = db.create_database(SYSTEM_ADMIN_URL, f"optibid_backup_src_{os.getpid()}", drop_existing=True)
    target = db.create_database(SYSTEM_ADMIN_URL, f"optibid_backup_dst_{os.getpid()}", drop_existing=True)
    try:
        db.migrate(source)
        _roundtrip(tmp_path, source, target)
        manifest = list_backups(_settings(tmp_path, "home_a", tmp_path / "backups"))[0].manifest
        assert (manifest["postgres"]["server_major"], manifest["postgres"]["dump_tool_major"]) == (15, 15)
        assert {"optibid_api", "optibid_auth"} <= {r["name"] for r in manifest["postgres"]["roles"]}
    finally:
        db.drop_database(SYSTEM_ADMIN_URL, source.rsplit("/", 1)[-1].split("?")[0])
        db.drop_database(SYSTEM_ADMIN_URL, target.rsplit("/", 1)[-1].split("?")[0])


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """moto's S3 server on a free port of 127.0.0.1, stopped after the module."""
    server = start_s3_server(tmp_path_factory.mktemp("s3"))
    try:
        yield server
    finally:
        server.stop()


def _append_prices(lake: Lake, start: int) -> None:
    # partition values that must be escaped in object keys
    prices = pa.table({"zone": ["IEX N", "FR/1", "IEX N"], "price": [float(start), start + 0.5, start + 1.0]})
    write_deltalake(lake.table_uri("silver", "prices"), prices, mode="append", partition_by=["zone"],
                    storage_options=lake.storage_options)


def _sorted_rows(lake: Lake, layer: str, name: str, version: int | None = None) -> list[dict]:
    table = lake.table(layer, name, version)
    assert table is not None
    return sorted(table.to_pyarrow_table().to_pylist(), key=repr)


def _checkpoint(lake: Lake, name: str) -> None:
    table = lake.table(*name.split("/"))
    assert table is not None
    table.create_checkpoint()


def _log_entries(lake: Lake, name: str) -> list[str]:
    filesystem = pafs.S3FileSystem(**lake.arrow_s3_options())
    log = f"{lake.root.removeprefix('s3://')}/{name}/_delta_log"
    return sorted(info.base_name for info in filesystem.get_file_info(pafs.FileSelector(log)))


def test_backup_of_a_lake_on_s3_restores_into_another_bucket_and_into_a_folder(
    tmp_path: Path, database_url: str, restore_database: str, s3_server: S3Server
) -> None:
    backups = tmp_path / "backups"
    source = _settings(tmp_path, "home_a", backups)
    lake = s3_server.lake("platform", "prod/lake")
    writer = BronzeTables(lake)
    for b in range(3):
        writer.append(
            "ticks__prices", _batch(b * 10, 10), topic_offsets={(TOPIC, 0): b * 10 + 8, (TOPIC, 1): b * 10 + 9}
        )
    _checkpoint(lake, "bronze/ticks__prices")
    for start in (0, 10):
        _append_prices(lake, start)
    _seed(database_url)
    expected = fingerprint(database_url)

    backup = create_backup(source, database_url, lake)
    versions = {"bronze/ticks__prices": 2, "silver/prices": 1}
    assert backup.manifest["lake"] == {"root": "s3://platform/prod/lake", "kind": "s3", "versions": versions}
    backed_up = {name: _sorted_rows(lake, *name.split("/"), version) for name, version in versions.items()}
    # the platform goes on: new commits, and a checkpoint that `_last_checkpoint` now names
    writer.append("ticks__prices", _batch(30, 10), topic_offsets={(TOPIC, 0): 38, (TOPIC, 1): 39})
    _checkpoint(lake, "bronze/ticks__prices")
    _append_prices(lake, 20)
    assert "_last_checkpoint" in _log_entries(lake, "bronze/ticks__prices")

    target = _settings(tmp_path, "home_b", backups)
    with pytest.raises(BackupError, match=r"bucket missing-bucket .* does not exist"):
        restore_backup(target, "latest", restore_database, Lake("s3://missing-bucket/lake", lake.storage_options))
    target_lake = s3_server.lake("restored", "dr/lake")
    report = restore_backup(target, "latest", restore_database, target_lake)

    assert report.lake_versions == versions
    assert fingerprint(restore_database) == expected
    for name, version in versions.items():
        table = target_lake.table(*name.split("/"))
        assert table is not None and table.version() == version
        assert len(table.history()) == version + 1  # the commits after the backup are not there
        assert _sorted_rows(target_lake, *name.split("/")) == backed_up[name]
    assert _log_entries(target_lake, "bronze/ticks__prices") == [
        "00000000000000000000.json",
        "00000000000000000001.json",
        "00000000000000000002.checkpoint.parquet",
        "00000000000000000002.json",
    ]
    restored = BronzeTables(target_lake)
    assert restored.last_offset("ticks__prices", TOPIC, 0) == 28
    assert restored.last_offset("ticks__prices", TOPIC, 1) == 29
    with pytest.raises(BackupError, match="already holds tables"):
        restore_backup(target, "latest", restore_database, target_lake)

    # and out of the bucket into a folder
    folder = _settings(tmp_path, "home_c", backups)
    folder_lake = Lake(str(folder.home_dir / "lake"))
    folder_db = db.create_database(database_url, f"optibid_restore_local_{os.getpid()}", drop_existing=True)
    try:
        assert restore_backup(folder, "latest", folder_db, folder_lake).lake_versions == versions
    finally:
        db.drop_database(database_url, f"optibid_restore_local_{os.getpid()}")
    for name in versions:
        assert _sorted_rows(folder_lake, *name.split("/")) == backed_up[name]


def test_roles_the_database_names_are_created_on_a_server_without_them(
    tmp_path: Path, database_url: str, restore_database: str
) -> None:
    """What `ensure_bi_roles` sets up (a read-only role, a login role bound to an organization, member of it,
    grants and a policy naming them) survives a restore onto a server that never had those roles."""
    tag = f"{os.getpid()}_{tmp_path.name[-6:]}".lower()
    reader, member = f"bkp_reader_{tag}", f"bkp_org_{tag}"
    source_name = f"optibid_roles_{tag}"
    source_url = db.create_database(database_url, source_name, drop_existing=True)
    try:
        with psycopg.connect(source_url, autocommit=True) as conn:
            conn.execute(f"CREATE ROLE {reader} NOLOGIN")
            conn.execute(f"ALTER ROLE {reader} SET default_transaction_read_only = on")
            conn.execute(f"CREATE ROLE {member} LOGIN NOINHERIT")
            conn.execute(f"ALTER ROLE {member} SET optibid.org_id = 'acme'")
            conn.execute(f"GRANT {reader} TO {member}")
            conn.execute("CREATE TABLE public.prices (zone text, org_id text, price float8)")
            conn.execute("INSERT INTO public.prices VALUES ('PJM', NULL, 31.5), ('PJM', 'acme', 40)")
            conn.execute(f"GRANT SELECT ON public.prices TO {reader}, {member}")
            conn.execute("ALTER TABLE public.prices ENABLE ROW LEVEL SECURITY")
            conn.execute(f"CREATE POLICY reader_all ON public.prices FOR SELECT TO {reader} USING (true)")
        source = _settings(tmp_path, "home_a", tmp_path / "backups")
        backup = create_backup(source, source_url, Lake(str(source.home_dir / "lake")))
        recorded = {r["name"]: r for r in backup.manifest["postgres"]["roles"]}
        assert recorded[member] == {
            "name": member, "login": True, "inherit": False, "settings": ["optibid.org_id=acme"],
            "member_of": [reader],
        }
        assert recorded[reader]["settings"] == ["default_transaction_read_only=on"]

        # the server loses the roles: what a fresh server is like
        db.drop_database(database_url, source_name)
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(f"DROP ROLE {member}")
            conn.execute(f"DROP ROLE {reader}")

        target = _settings(tmp_path, "home_b", tmp_path / "backups")
        restore_backup(target, "latest", restore_database, Lake(str(target.home_dir / "lake")))
        with psycopg.connect(restore_database, autocommit=True) as conn:
            assert conn.execute(
                "SELECT rolcanlogin, rolinherit, rolconfig FROM pg_roles WHERE rolname = %s", (member,)
            ).fetchone() == (True, False, ["optibid.org_id=acme"])
            assert conn.execute("SELECT pg_has_role(%s, %s, 'MEMBER')", (member, reader)).fetchone() == (True,)
            assert conn.execute(
                "SELECT has_table_privilege(%s, 'public.prices', 'SELECT')", (member,)
            ).fetchone() == (True,)
            assert conn.execute("SELECT count(*) FROM public.prices").fetchone() == (2,)
    finally:
        db.drop_database(database_url, source_name)
        with psycopg.connect(restore_database, autocommit=True) as conn:
            conn.execute("DROP TABLE IF EXISTS public.prices")
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(f"DROP ROLE IF EXISTS {member}")
            conn.execute(f"DROP ROLE IF EXISTS {reader}")


def test_chunks_are_authenticated_in_order_and_to_the_end(tmp_path: Path) -> None:
    keys = BackupKeys.derive(KEY)
    data = os.urandom(2 * (1 << 20) + 12345)  # three chunks
    path = tmp_path / "part.enc"
    with path.open("wb") as out:
        writer = _EncryptingWriter(out, keys, "p")
        writer.write(data)
        writer.finish()
    assert b"".join(decrypt_chunks(path, keys, "p")) == data
    with pytest.raises(BackupError, match="does not decrypt"):
        list(decrypt_chunks(path, BackupKeys.derive("another key of enough length", keys.salt), "p"))
    with pytest.raises(BackupError, match="does not decrypt"):
        list(decrypt_chunks(path, keys, "other-part"))
    raw = path.read_bytes()
    cut = tmp_path / "cut.enc"
    cut.write_bytes(raw[: 12 + 4 + (1 << 20) + 16])  # the first chunk alone
    with pytest.raises(BackupError, match="chunk 0 does not decrypt"):
        list(decrypt_chunks(cut, keys, "p"))


def test_verify_refuses_altered_parts_a_swapped_manifest_and_a_wrong_key(tmp_path: Path, database_url: str) -> None:
    settings = _settings(tmp_path, "home", tmp_path / "backups")
    backup = create_backup(settings, database_url, Lake(str(tmp_path / "home" / "lake")))
    verify_backup(settings, backup.path)

    wrong = Settings(home=tmp_path / "home", backup_key="not the key but long enough", backup_dir=tmp_path / "backups")
    with pytest.raises(BackupError, match="does not match OPTIBID_BACKUP_KEY"):
        verify_backup(wrong, backup.path)

    manifest_path = backup.path / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["lake"]["versions"] = {"bronze/x": 7}
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(BackupError, match=r"manifest\.json does not match"):
        verify_backup(settings, backup.path)

    second = create_backup(settings, database_url, Lake(str(tmp_path / "home" / "lake")))
    dump = second.path / "postgres.dump.enc"
    raw = bytearray(dump.read_bytes())
    raw[len(raw) // 2] ^= 1
    dump.write_bytes(bytes(raw))
    with pytest.raises(BackupError, match="checksum mismatch"):
        verify_backup(settings, second.path)

    assert find_backup(settings, "latest").backup_id == second.backup_id
    assert 0 <= newest_backup_age_hours(settings) < 0.1
    assert prune_backups(settings, keep=1) == [backup.backup_id]
    assert [b.backup_id for b in list_backups(settings)] == [second.backup_id]


def test_the_cli_creates_lists_and_verifies_and_a_missing_key_is_one_clear_line(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app import operations_cli
    from app.cli import app
    from infra.settings import get_settings

    monkeypatch.setattr(operations_cli.console, "width", 200)

    monkeypatch.setenv("OPTIBID_BACKUP_DIR", str(tmp_path / "backups"))
    monkeypatch.setenv("OPTIBID_LAKE_URI", str(tmp_path / "lake"))
    monkeypatch.delenv("OPTIBID_BACKUP_KEY", raising=False)
    get_settings.cache_clear()
    runner = CliRunner()
    try:
        missing = runner.invoke(app, ["backup", "create"])
        assert missing.exit_code == 2 and "OPTIBID_BACKUP_KEY is not set" in missing.output
        monkeypatch.setenv("OPTIBID_BACKUP_KEY", KEY)
        get_settings.cache_clear()
        created = runner.invoke(app, ["backup", "create"])
        assert created.exit_code == 0, created.output
        listed = runner.invoke(app, ["backup", "list"])
        backup_id = list_backups(get_settings())[0].backup_id
        assert backup_id in listed.output
        verified = runner.invoke(app, ["backup", "verify", backup_id])
        assert verified.exit_code == 0 and "OK" in verified.output
    finally:
        get_settings.cache_clear()
