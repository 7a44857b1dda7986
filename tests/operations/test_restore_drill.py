"""The restore drill: a platform home with data that came through the real ingestion paths (Kafka CDC into
bronze, a market file through the upload service into bronze and Postgres), a backup, more ingestion, the home
destroyed, a restore into a fresh home. The API must then answer byte for byte what it answered at backup time,
and the CDC consumer must resume from the restored offsets: every event Kafka holds lands once, none twice.

Prints the measured RPO and RTO with the load average (docs/operations.md quotes them). Marked `scale`
(`make test-scale`): two embedded Postgres clusters and a fresh API take longer than the main suite allows.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections import defaultdict
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from infra import db
from infra.backup import create_backup, restore_backup
from infra.lake import Lake
from infra.services import embedded_postgres_url, stop_embedded_postgres
from infra.settings import Settings
from ingestion.cdc import CdcConsumer
from ingestion.simulator.trading import trading_events
from tests.cdc.conftest import bronze, coordinates, produce

pytestmark = pytest.mark.scale

KEY = "drill backup key, not for production"
PASSWORD = "Drill-Password-2026!"
EMAIL = "drill-admin@acme.example"


def _home(root: Path, name: str, backups: Path) -> Settings:
    return Settings(home=root / name, backup_key=KEY, backup_dir=backups, jwt_secret="drill-secret-" + "y" * 32)


def _produce_trading(bootstrap: str, prefix: str, n: int, seed: int) -> list[tuple[str, int, int]]:
    by_topic: dict[str, list] = defaultdict(list)
    for event in trading_events(n, seed=seed, topic_prefix=prefix):
        by_topic[event.topic].append((event.key, event.value))
    # one record no decoder accepts: a dead letter the API serves from the lake
    first_topic = sorted(by_topic)[0]
    by_topic[first_topic].append((b"bad-key", b"{not json"))
    delivered = []
    for topic, messages in sorted(by_topic.items()):
        delivered += produce(bootstrap, topic, messages, partitions=2)
    return delivered


def _drain(lake: Lake, client_config: dict, topics: list[str]) -> int:
    with CdcConsumer(lake, client_config, topics, batch_max_events=300) as consumer:
        return consumer.drain().events_read


def _landed_coordinates(lake: Lake, topics: list[str]) -> list[tuple[str, int, int]]:
    out = []
    for topic in topics:
        out += coordinates(bronze(lake, f"cdc__{topic.rsplit('.', 1)[1]}"))
    dead = bronze(lake, "cdc__dead_letters")
    if dead.num_rows:
        out += [c for c in coordinates(dead) if c[0] in topics]
    return sorted(out)


def _upload_day(settings: Settings, url: str, lake: Lake, day: date) -> int:
    from ingestion.files.service import process_upload, receive_upload
    from ingestion.simulator.files import write_landing_files
    from ingestion.simulator.market import iter_market_days

    [market_day] = list(iter_market_days(day, 1, nodes_per_zone=1, five_minute=False, seed=7))
    files = write_landing_files(market_day, settings.home_dir / "landing")
    prices = next(p for p in files if p.name.startswith("prices_"))
    receipt = receive_upload(prices, prices.name, "acme", database_url=url, storage_dir=settings.home_dir / "uploads")
    process_upload(receipt.upload_id, database_url=url, lake=lake)
    return receipt.upload_id


def _api_answers(settings: Settings, url: str, upload_ids: list[int], topics: list[str]) -> dict[str, bytes]:
    from serving_api.app import create_app

    app = create_app(settings.model_copy(update={"database_url": url}))
    answers = {}
    with TestClient(app) as client:
        token = client.post("/api/v1/auth/token", data={"username": EMAIL, "password": PASSWORD})
        assert token.status_code == 200, token.text
        headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
        paths = ["/api/v1/uploads?limit=100", *(f"/api/v1/uploads/{u}" for u in upload_ids)]
        paths += [f"/api/v1/ingestion/dead-letters?topic={t}" for t in topics]
        paths += ["/api/v1/zones", "/api/v1/nodes", "/api/v1/assets"]
        for path in paths:
            response = client.get(path, headers=headers)
            assert response.status_code in (200, 404), (path, response.status_code, response.text)
            answers[path] = response.content
    return answers


def test_destroy_the_home_restore_it_and_serve_the_same_answers(
    tmp_path: Path, broker_bootstrap: str, settings: Settings
) -> None:
    from infra.services import kafka_security_config
    from ingestion.reference import seed_reference_data
    from serving_api.cli import create_user

    client_config = {"bootstrap_servers": broker_bootstrap, **kafka_security_config(settings)}
    backups = tmp_path / "backups"  # outside the home that is destroyed
    first = _home(tmp_path, "home_a", backups)
    url_a = embedded_postgres_url(first)
    try:
        db.migrate(url_a)
        with db.connect(url_a) as conn:
            seed_reference_data(conn, nodes_per_zone=1)
        create_user(url_a, "acme", EMAIL, "admin", PASSWORD)
        lake_a = Lake(str(first.home_dir / "lake"))
        prefix = f"drill{uuid.uuid4().hex[:8]}.public"
        before = _produce_trading(broker_bootstrap, prefix, 1500, seed=3)
        topics = sorted({t for t, _, _ in before})
        assert _drain(lake_a, client_config, topics) == len(before)
        uploads = [_upload_day(first, url_a, lake_a, date(2026, 11, 2))]
        at_backup = _api_answers(first, url_a, uploads, topics)
        assert f'"id":{uploads[0]},"org_id":"acme"'.encode() in at_backup["/api/v1/uploads?limit=100"]

        backup = create_backup(first, url_a, lake_a)
        print(
            f"\nbackup {backup.backup_id}: {backup.size_bytes / 1e6:.2f} MB encrypted, "
            f"{backup.manifest['seconds']:.1f} s "
            f"(dump {backup.manifest['parts']['postgres.dump']['plain_bytes'] / 1e6:.2f} MB, lake "
            f"{backup.manifest['parts']['lake.tar']['plain_bytes'] / 1e6:.2f} MB); load {os.getloadavg()}"
        )

        # the platform keeps going: more trading events and another file after the backup
        after = _produce_trading(broker_bootstrap, prefix, 700, seed=4)
        assert _drain(lake_a, client_config, topics) == len(after)
        _upload_day(first, url_a, lake_a, date(2026, 11, 3))
        last_write = datetime.now(UTC)
    finally:
        stop_embedded_postgres(first)
    shutil.rmtree(first.home_dir)  # the disaster
    failed_at = datetime.now(UTC)

    second = _home(tmp_path, "home_b", backups)
    recovery_started = time.perf_counter()
    url_b = embedded_postgres_url(second)
    try:
        lake_b = Lake(str(second.home_dir / "lake"))
        report = restore_backup(second, "latest", url_b, lake_b)
        rto = time.perf_counter() - recovery_started
        rpo = (last_write - backup.created_at).total_seconds()
        print(
            f"RTO {rto:.1f} s (fresh Postgres up, restore {report.seconds:.1f} s, verified); RPO for uploads "
            f"{rpo:.1f} s (backup age when the last write before the failure landed, {failed_at:%H:%M:%S}); "
            f"RPO for CDC 0 (replayed from Kafka); load {os.getloadavg()}"
        )

        # every answer of the API about the data up to the backup is byte-identical
        assert _api_answers(second, url_b, uploads, topics) == at_backup

        # CDC resumes from the restored offsets: what Kafka holds past them lands once
        assert _drain(lake_b, client_config, topics) == len(after)
        assert _landed_coordinates(lake_b, topics) == sorted(before + after)
        assert _drain(lake_b, client_config, topics) == 0
    finally:
        stop_embedded_postgres(second)
