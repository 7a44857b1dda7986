"""The platform running itself: a bounded soak test with the Dagster daemon, the API and the follow-mode CDC
consumer as separate processes on the test services, and no manual materialization.

What a user drops or produces must reach the API and the WebSocket by itself: files in the landing folder
(a new day, then a corrected past day, which must invalidate the API's cache), price ticks on Kafka (the
minute KPI pushed to a subscriber), and a trading change that breaks a blocking check (an alert at the
webhook and the SMTP receivers). Freshness must be recorded by the daemon. Each stage is bounded by
`SOAK_SECONDS`, the issue's five minutes: the first landed day is served within it of the platform's start, and
the files landed later (and the alert and freshness that follow) within it of their landing. Each wait names
what it was waiting for when it gives up.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import httpx
import orjson
import pandas as pd
import psycopg
import pytest

from tests.alerting.conftest import SmtpInbox, WebhookReceiver

REPO = Path(__file__).resolve().parents[2]
# The bound per stage; a slower or shared machine may allow itself more (the waits then say what was late).
SOAK_SECONDS = int(os.environ.get("OPTIBID_SOAK_SECONDS", "300"))
ZONES = ("PJM", "ERCOT")
ORG = "acme"
PRICE_CORRECTION = 7.25  # added to every DA price of the corrected day
KPI_PUSH_TARGET_S = 30.0


@pytest.fixture(scope="module")
def database_url(database_url: str) -> Iterator[str]:
    """The soak test's own warehouse: its gold is exactly what the platform builds."""
    from tests.conftest import private_database

    yield from private_database(database_url, "optibid_test_soak")


@dataclass
class Platform:
    api_url: str
    dagster_home: Path
    landing: Path
    database_url: str
    bootstrap: str
    api_key: str
    webhook: WebhookReceiver
    inbox: SmtpInbox
    first: date
    started: float
    stage_started: float = 0.0  # when the current stage's bound started to count
    corrections: list[Callable[[], None]] = field(default_factory=list)  # run after the test

    def left(self) -> float:
        return SOAK_SECONDS - (time.monotonic() - (self.stage_started or self.started))

    def since_start(self) -> float:
        return time.monotonic() - self.started


@pytest.fixture(scope="module")
def platform(settings, database_url: str, broker_bootstrap: str, tmp_path_factory) -> Iterator[Platform]:
    from aiosmtpd.controller import Controller

    from app.platform import PlatformProcesses
    from infra import db
    from infra.dagster_instance import write_dagster_home
    from infra.processes import free_port
    from ingestion.reference import seed_reference_data
    from ingestion.simulator.files import write_landing_files
    from ingestion.simulator.market import iter_market_days, simulated_zones
    from ingestion.simulator.trading import ensure_topics
    from serving_api import cli

    root = tmp_path_factory.mktemp("soak")
    landing = root / "landing"
    first = date.today() - timedelta(days=2)
    with db.connect(database_url) as conn:
        seed_reference_data(conn)
    api_key = cli.create_api_key(database_url, ORG, "soak", "analyst", rate_limit_per_minute=100_000)
    # The first market day is waiting in the landing folder when the platform starts.
    zones = [z for z in simulated_zones() if z.zone in ZONES]
    for day in iter_market_days(first, 1, zones=zones, nodes_per_zone=1, seed=11):
        write_landing_files(day, landing)
    from ingestion.cdc.topics import default_topics

    ensure_topics(broker_bootstrap, default_topics())

    webhook = WebhookReceiver()
    inbox = SmtpInbox()
    smtp_port = free_port()
    smtp = Controller(inbox, hostname="127.0.0.1", port=smtp_port)
    smtp.start()
    dagster_home = write_dagster_home(settings.model_copy(update={"dagster_home_override": root / "dagster_home"}))
    env = {
        **os.environ,
        "OPTIBID_DATABASE_URL": database_url,
        "KAFKA_BOOTSTRAP_SERVERS": broker_bootstrap,
        "DAGSTER_HOME": str(dagster_home),
        "OPTIBID_LANDING_DIR": str(landing),
        "OPTIBID_LAKE_URI": str(root / "lake"),
        "OPTIBID_UPLOADS_DIR": str(root / "uploads"),
        "OPTIBID_PARTITION_START": first.isoformat(),
        "OPTIBID_SENSOR_INTERVAL_SECONDS": "5",
        "OPTIBID_NEW_DATA_POLL_SECONDS": "5",
        "OPTIBID_ALERT_WEBHOOK_URLS": json.dumps([webhook.url]),
        "OPTIBID_ALERT_SMTP_HOST": "127.0.0.1",
        "OPTIBID_ALERT_SMTP_PORT": str(smtp_port),
        "OPTIBID_ALERT_EMAIL_FROM": "optibid-alerts@example.test",
        "OPTIBID_ALERT_EMAIL_TO": json.dumps(["oncall@example.test"]),
    }
    processes = PlatformProcesses(
        env=env,
        dagster_home=dagster_home,
        log_dir=root / "logs",
        dagster_port=free_port(),
        api_port=free_port(),
        cwd=REPO,
    )
    started = time.monotonic()
    with processes:
        processes.wait_until_serving()
        running = Platform(
            processes.api_url,
            dagster_home,
            landing,
            database_url,
            broker_bootstrap,
            api_key,
            webhook,
            inbox,
            first,
            started,
        )
        try:
            yield running
        finally:
            print_run_timeline(dagster_home, database_url, started)
            for correction in running.corrections:
                correction()
    smtp.stop()
    webhook.close()


def platform_instance(dagster_home: Path, database_url: str):
    """The platform's Dagster instance, as its processes see it: its storage is the soak test's warehouse, which
    the instance's dagster.yaml names by environment variable."""
    import dagster as dg

    os.environ["OPTIBID_DATABASE_URL"] = database_url
    os.environ["DAGSTER_HOME"] = str(dagster_home)
    return dg.DagsterInstance.from_config(str(dagster_home))


def print_run_timeline(dagster_home: Path, database_url: str, started: float) -> None:
    """Every run the platform made, in seconds since it started: created, started, ended, status, partitions and
    assets. What a late wait was stuck behind is read here, not guessed."""
    import dagster as dg

    offset = time.time() - time.monotonic() + started  # epoch seconds of the platform's start

    def at(timestamp: float | None) -> str:
        return f"{timestamp - offset:7.1f}" if timestamp else "      -"

    STEP_EVENTS = {
        dg.DagsterEventType.STEP_START,
        dg.DagsterEventType.STEP_SUCCESS,
        dg.DagsterEventType.STEP_FAILURE,
        dg.DagsterEventType.STEP_SKIPPED,
    }
    LAUNCH_EVENTS = {dg.DagsterEventType.RUN_DEQUEUED, dg.DagsterEventType.ENGINE_EVENT}
    with platform_instance(dagster_home, database_url) as instance:
        records = sorted(instance.get_run_records(limit=500), key=lambda r: r.create_timestamp)
        print(f"\n{len(records)} runs (seconds since the platform started: created, started, ended)")
        for record in records:
            run = record.dagster_run
            tags = run.tags
            span = (tags.get("dagster/asset_partition_range_start"), tags.get("dagster/asset_partition_range_end"))
            partitions = tags.get("dagster/partition") or "..".join(filter(None, span))
            assets = ",".join(sorted(k.path[-1] for k in run.asset_selection or [])) or run.job_name
            print(
                f"{at(record.create_timestamp.timestamp())} {at(record.start_time)} {at(record.end_time)} "
                f"{run.status.value:<9} p{tags.get('dagster/priority', '0'):<3} {partitions:<23} {assets[:90]}"
            )
            # Where a run's own time went: left the queue, its process started (then imports the code location until
            # the run starts), and each step's start and end (checks and dbt models share steps).
            steps: dict[str, list[float]] = {}
            launch = []
            for entry in instance.all_logs(run.run_id, of_type=STEP_EVENTS | LAUNCH_EVENTS):
                if entry.dagster_event_type in STEP_EVENTS:
                    steps.setdefault(entry.step_key or "?", []).append(entry.timestamp)
                elif entry.dagster_event_type == dg.DagsterEventType.RUN_DEQUEUED or "Started process" in (
                    entry.message or ""
                ):
                    launch.append(f"{entry.dagster_event_type.value.lower()} {at(entry.timestamp).strip()}")
            if launch:
                print(f"{'':16}{', '.join(launch)}")
            for step, (begin, *rest) in steps.items():
                print(f"{'':16}{at(begin)} {at(rest[-1] if rest else None)} {step[:80]}")


def wait_for(platform: Platform, what: str, probe: Callable[[], object], interval: float = 2.0) -> object:
    """Poll `probe` until it returns something truthy, within the soak test's remaining time."""
    while True:
        value = probe()
        if value:
            print(f"[soak {platform.since_start():6.1f} s] {what}", flush=True)
            return value
        if platform.left() <= 0:
            pytest.fail(f"not within the stage's {SOAK_SECONDS} s: {what}")
        time.sleep(interval)


def served_prices(platform: Platform, zone: str, day: date) -> tuple[dict[pd.Timestamp, float], str]:
    """DA hourly prices the API serves for the zone's UTC day, and the response's cache verdict."""
    response = httpx.get(
        f"{platform.api_url}/api/v1/prices",
        params={"zone": zone, "market": "DA", "from": f"{day}T00:00:00Z", "to": f"{day + timedelta(days=1)}T00:00:00Z"},
        headers={"X-API-Key": platform.api_key},
        timeout=30,
    )
    if response.status_code == 503:  # gold not built yet
        return {}, "none"
    assert response.status_code == 200, response.text
    rows = {pd.Timestamp(r["ts_utc"]): r["price_avg"] for r in response.json()["data"]}
    return rows, response.headers.get("x-cache", "")


def matches(served: dict[pd.Timestamp, float], expected: dict[pd.Timestamp, float]) -> bool:
    """The served hours (the zone's market days that fall in the UTC day) hold the expected prices."""
    return len(served) >= 19 and served == pytest.approx({ts: expected.get(ts) for ts in served})


def table_version(database_url: str, table: str, day: date) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT version FROM ops.table_versions WHERE table_name = %s AND market_date = %s", (table, day)
        ).fetchone()
    return int(row[0]) if row else 0


def simulated_prices(first: date, day: date, zone: str) -> dict[pd.Timestamp, float]:
    from ingestion.simulator.market import iter_market_days, simulated_zones

    zones = [z for z in simulated_zones() if z.zone in ZONES]
    days = (day - first).days + 1
    market = list(iter_market_days(first, days, zones=zones, nodes_per_zone=1, seed=11))[-1]
    prices = market.prices_hourly
    prices = prices[(prices.zone == zone) & (prices.market == "DA") & prices.node.isna()]
    ts = pd.to_datetime(prices.ts_utc, utc=True)
    return {t: float(p) for t, p in zip(ts, prices.price, strict=True) if t.date() == day}


def write_corrected_prices(first: date, folder: Path) -> None:
    """A corrected day-ahead price file for `first`: every price moved by `PRICE_CORRECTION`."""
    from ingestion.simulator.market import iter_market_days, simulated_zones

    zones = [z for z in simulated_zones() if z.zone in ZONES]
    day = next(iter(iter_market_days(first, 1, zones=zones, nodes_per_zone=1, seed=11)))
    corrected = day.prices_hourly.copy()
    corrected.loc[corrected.market == "DA", "price"] += PRICE_CORRECTION
    corrected["ts_utc"] = pd.to_datetime(corrected.ts_utc, utc=True).dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    corrected.to_csv(folder / f"prices_hourly_{first}_corrected.csv", index=False)


def produce_invalid_bid(bootstrap: str) -> dict:
    """A trading-system change that silver's blocking bids check must stop: a bid of negative volume,
    delivered now. Its topic and Debezium payload."""
    from ingestion.simulator.trading import KafkaEvent, produce_events, trading_events

    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    for event in trading_events(200, seed=99, start=now):
        envelope = orjson.loads(event.value)
        payload = envelope.get("payload", envelope)
        if event.topic.endswith(".bids") and payload.get("op") == "c":
            bid_id = f"soak-negative-{int(time.time())}"
            payload["after"].update(bid_id=bid_id, quantity_mw=-3.0)
            bad = KafkaEvent(event.topic, orjson.dumps({"bid_id": bid_id}), orjson.dumps(payload))
            produce_events(bootstrap, iter([bad]), security={})
            return {"topic": event.topic, "payload": payload}
    raise AssertionError("the simulator produced no bid")


def correct_invalid_bid(bootstrap: str, bad: dict) -> None:
    """The trading system's correction of the invalid bid: the broker is shared with later tests, whose
    drains must find a valid current state."""
    from ingestion.simulator.trading import KafkaEvent, produce_events

    payload = json.loads(json.dumps(bad["payload"]))
    before = dict(payload["after"])
    source = payload["source"]
    payload.update(
        op="u",
        before=before,
        after={**before, "quantity_mw": 3.0},
        ts_ms=payload["ts_ms"] + 1000,
        source={**source, "lsn": source["lsn"] + 1, "ts_ms": source["ts_ms"] + 1000},
    )
    key = orjson.dumps({"bid_id": before["bid_id"]})
    produce_events(bootstrap, iter([KafkaEvent(bad["topic"], key, orjson.dumps(payload))]), security={})


@pytest.mark.soak
@pytest.mark.timeout(2 * SOAK_SECONDS + 300)  # two stages; the platform's start and stop come on top
def test_the_platform_follows_files_ticks_and_bad_data_by_itself(platform: Platform) -> None:
    first, second = platform.first, platform.first + timedelta(days=1)
    zone = "PJM"
    expected_first = simulated_prices(first, first, zone)

    # 1. The day waiting at start reaches gold and the API by itself.
    wait_for(platform, f"{first} served by the API", lambda: served_prices(platform, zone, first)[0])
    served, _ = served_prices(platform, zone, first)
    assert matches(served, expected_first), served
    # Read it once more: now it is a cache hit, the entry the correction must invalidate.
    assert served_prices(platform, zone, first)[1] == "hit"
    # The version is bumped as dbt reports the model done, a moment after its rows are readable.
    version_before = wait_for(
        platform,
        f"{first}'s version bumped by the gold run",
        lambda: table_version(platform.database_url, "gold.fct_prices_hourly", first),
        interval=0.5,
    )

    # 2. A new day and a correction of the first one land together; a bad bid arrives on Kafka.
    from ingestion.simulator.files import write_landing_files
    from ingestion.simulator.market import iter_market_days, simulated_zones

    zones = [z for z in simulated_zones() if z.zone in ZONES]
    # Written aside and moved in together, as an upload tool drops a batch: one landing run takes them all.
    batch = platform.landing.parent / "batch"
    for day in list(iter_market_days(first, 2, zones=zones, nodes_per_zone=1, seed=11))[1:]:
        write_landing_files(day, batch)
    write_corrected_prices(first, batch)
    for path in sorted(batch.iterdir()):
        os.replace(path, platform.landing / path.name)
    platform.stage_started = time.monotonic()
    print(f"[soak {platform.since_start():6.1f} s] a new day and a correction landed", flush=True)
    bad_bid = produce_invalid_bid(platform.bootstrap)
    platform.corrections.append(lambda: correct_invalid_bid(platform.bootstrap, bad_bid))

    # 3. Meanwhile, ticks produced now are pushed to a minute-KPI subscriber within the target: the hot path
    # does not wait for the batch runs that the files and the bad bid started.
    latency = asyncio.run(kpi_push_latency(platform, zone))
    print(f"[soak {platform.since_start():6.1f} s] minute KPI pushed {latency:.1f} s after its tick")
    assert latency <= KPI_PUSH_TARGET_S, f"minute KPI pushed after {latency:.1f} s"

    # 2 (continued). The correction and the new day reach the API.
    corrected = {ts: price + PRICE_CORRECTION for ts, price in expected_first.items()}
    wait_for(
        platform,
        f"the corrected {first} served",
        lambda: matches(served_prices(platform, zone, first)[0], corrected),
    )
    assert table_version(platform.database_url, "gold.fct_prices_hourly", first) > version_before
    expected_second = simulated_prices(first, second, zone)
    wait_for(
        platform,
        f"the new day {second} served",
        lambda: matches(served_prices(platform, zone, second)[0], expected_second),
    )

    # 4. The blocking bids check failed on the bad bid: its alert reached both channels, once.
    wait_for(platform, "the bids check alert at the webhook", lambda: platform.webhook.about("trading__bids"), 1)
    wait_for(platform, "the bids check alert by e-mail", lambda: platform.inbox.about("trading__bids"), 1)
    with psycopg.connect(platform.database_url) as conn:
        alert = conn.execute(
            """SELECT kind, severity, resolved_at FROM ops.alerts
               WHERE kind = 'check_failure' AND dedup_key LIKE '%%trading__bids%%'"""
        ).fetchone()
    assert alert is not None and alert[2] is None, f"open check alert for the bad bid {bad_bid['payload']['after']}"
    # Nothing else failed: a blocking check that fails on good data (a row-count bound measured against a partial
    # first day, say) halts its downstream as surely as a bug.
    with psycopg.connect(platform.database_url) as conn:
        failures = conn.execute(
            "SELECT kind, title, detail::text FROM ops.alerts WHERE kind IN ('check_failure', 'run_failure')"
        ).fetchall()
    unexpected = [(kind, title) for kind, title, detail in failures if "trading__bids" not in title + detail]
    assert not unexpected, f"failures besides the bad bid's: {unexpected}"

    # 5. The daemon recorded freshness for the gold facts.
    import dagster as dg

    key = dg.AssetKey(["gold", "fct_prices_hourly"])

    def evaluated(instance: dg.DagsterInstance) -> str | None:
        record = instance.get_freshness_state_records([key]).get(key)
        return None if record is None else str(getattr(record.freshness_state, "value", record.freshness_state))

    with platform_instance(platform.dagster_home, platform.database_url) as instance:
        state = wait_for(
            platform, "a freshness evaluation of gold/fct_prices_hourly by the daemon", lambda: evaluated(instance)
        )
    assert state in {"PASS", "UNKNOWN"}, f"gold/fct_prices_hourly was just rebuilt, yet its freshness is {state}"


async def kpi_push_latency(platform: Platform, zone: str) -> float:
    """Seconds from producing a zone tick for the current 5-minute interval to its minute KPI arriving."""
    import websockets

    from ingestion.simulator.trading import TICKS_TOPIC, ZONES_BY_CODE, KafkaEvent, produce_events

    interval = datetime.now(UTC).replace(second=0, microsecond=0)
    interval -= timedelta(minutes=interval.minute % 5)
    price = 55.5
    url = (
        f"ws://{platform.api_url.removeprefix('http://')}/api/v1/ws/kpis/price_avg"
        f"?zone={zone}&grain=minute&api_key={quote(platform.api_key)}"
    )
    async with websockets.connect(url) as ws:
        tick = {
            "zone": zone,
            "node": None,
            "ts_utc": interval.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "market": "RT",
            "interval_minutes": 5,
            "price": price,
            "currency": ZONES_BY_CODE[zone].currency,
        }
        sent = time.monotonic()
        await asyncio.to_thread(
            produce_events,
            platform.bootstrap,
            iter([KafkaEvent(TICKS_TOPIC, f"{zone}|".encode(), orjson.dumps(tick))]),
            security={},
        )
        while time.monotonic() - sent < min(KPI_PUSH_TARGET_S * 2, max(platform.left(), 1)):
            try:
                message = json.loads(await asyncio.wait_for(ws.recv(), timeout=5))
            except TimeoutError:
                continue
            if message.get("type") != "kpi_values":
                continue
            values = {pd.Timestamp(v["period_start"]): v["value"] for v in message["values"]}
            if values.get(pd.Timestamp(interval)) == pytest.approx(price):
                return time.monotonic() - sent
    pytest.fail("no minute KPI pushed for the produced tick")
