"""The simulated trading system's change stream: Debezium envelopes for bids, trades, assets, market orders.

The trading system is a Postgres database captured by Debezium; this module plays both parts. Assets are
snapshotted first (`op=r`), then bids are submitted (`c`) and move through their lifecycle (`u` to
accepted / partially_accepted / rejected / cancelled), accepted bids produce trades, market orders are
placed and filled, and some cancelled bids are deleted (`d` followed by a tombstone). Every change carries
a `source` block with a monotonically increasing LSN and transaction id, and its key is the primary key
as JSON, exactly like the Debezium Postgres connector (with or without the `schema` wrapper).

Generation is deterministic for a seed. `produce_events` writes any event iterable to Kafka with
kafka-python (the product dependency) and `market_tick_events` produces plain-JSON price ticks for
`optibid.market.ticks`.
"""

from __future__ import annotations

import contextlib
import itertools
import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from ingestion.cdc.topics import CDC_TOPIC_PREFIX, TICKS_TOPIC
from ingestion.reference import ASSETS, ZONES_BY_CODE

_DEBEZIUM_SOURCE_BASE = {
    "version": "2.7.3.Final",
    "connector": "postgresql",
    "name": "optibid",
    "db": "trading",
    "schema": "public",
}
_COUNTERPARTIES = ("exchange", "NEXTERA-TRD", "CONSTELLATION", "TATA-POWER-TRD", "ADANI-TRD", "VITOL", "SHELL-EM")
# Debezium connect schemas of each table's row, used when the `schema` wrapper is requested.
_ROW_FIELDS: dict[str, list[tuple[str, str, bool]]] = {
    "bids": [
        ("bid_id", "string", False), ("org_id", "string", False), ("asset_id", "string", True),
        ("zone", "string", False), ("delivery_start", "string", False), ("side", "string", False),
        ("price", "double", False), ("quantity_mw", "double", False), ("status", "string", False),
        ("cleared_quantity_mw", "double", True), ("cleared_price", "double", True),
        ("updated_at", "string", False),
    ],
    "trades": [
        ("trade_id", "string", False), ("org_id", "string", False), ("bid_id", "string", True),
        ("zone", "string", False), ("delivery_start", "string", False), ("side", "string", False),
        ("price", "double", False), ("quantity_mw", "double", False), ("counterparty", "string", False),
        ("traded_at", "string", False),
    ],
    "assets": [
        ("asset_id", "string", False), ("org_id", "string", False), ("zone", "string", False),
        ("name", "string", False), ("technology", "string", False), ("capacity_mw", "double", False),
        ("energy_mwh", "double", True), ("marginal_cost", "double", True), ("status", "string", False),
        ("updated_at", "string", False),
    ],
    "market_orders": [
        ("order_id", "string", False), ("org_id", "string", False), ("zone", "string", False),
        ("delivery_start", "string", False), ("side", "string", False), ("order_type", "string", False),
        ("price", "double", True), ("quantity_mw", "double", False), ("status", "string", False),
        ("updated_at", "string", False),
    ],
}
_PRIMARY_KEYS = {"bids": "bid_id", "trades": "trade_id", "assets": "asset_id", "market_orders": "order_id"}
# Zones whose real-time market publishes 5-minute price ticks on `optibid.market.ticks`.
TICK_ZONES = ("PJM", "NYISO", "ERCOT", "CAISO", "IEX_N", "IEX_S", "IEX_W")
TICK_NODES_PER_ZONE = 4


@dataclass(frozen=True, slots=True)
class KafkaEvent:
    """One message as it goes to Kafka: topic, key and value bytes (value None = tombstone)."""

    topic: str
    key: bytes | None
    value: bytes | None


def cdc_topic(table: str, prefix: str = CDC_TOPIC_PREFIX) -> str:
    """The Debezium topic of a trading-system table."""
    return f"{prefix}.{table}"


def trading_events(
    n_events: int,
    *,
    seed: int = 0,
    start: datetime = datetime(2025, 1, 1, tzinfo=UTC),
    with_schema: bool = False,
    topic_prefix: str = CDC_TOPIC_PREFIX,
) -> Iterator[KafkaEvent]:
    """`n_events` deterministic Debezium change events of the trading system (tombstones included).

    With `with_schema`, key and value carry the Kafka Connect `schema` wrapper (JsonConverter with
    `schemas.enable=true`); otherwise they are bare payloads.
    """
    sim = _TradingSystem(random.Random(seed), start, with_schema, topic_prefix)
    yield from itertools.islice(sim.run(), n_events)


def market_tick_events(
    n_events: int, *, seed: int = 0, start: datetime = datetime(2025, 1, 1, tzinfo=UTC), topic: str = TICKS_TOPIC
) -> Iterator[KafkaEvent]:
    """`n_events` plain-JSON real-time price ticks (5-minute, zone level and nodal), keyed by zone/node.

    Round-robin over every zone and its `TICK_NODES_PER_ZONE` nodes, so each series has a tick in every
    interval it spans, as a real-time feed publishes them (silver's continuity check expects that).
    """
    rng = random.Random(seed)
    zones = list(TICK_ZONES)
    series_per_zone = TICK_NODES_PER_ZONE + 1
    level = {z: (4200.0 if ZONES_BY_CODE[z].currency == "INR" else 42.0) for z in zones}
    for i in range(n_events):
        zone = zones[i % len(zones)]
        series = (i // len(zones)) % series_per_zone
        node = None if series == 0 else f"{zone}_N{series}"
        ts = start + timedelta(minutes=5 * (i // (len(zones) * series_per_zone)))
        market = ZONES_BY_CODE[zone]
        level[zone] = min(market.price_cap, max(market.price_floor, level[zone] * (1 + rng.gauss(0, 0.02))))
        tick = {
            "zone": zone,
            "node": node,
            "ts_utc": ts.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "market": "RT",
            "interval_minutes": 5,
            "price": round(level[zone], 2),
            "currency": ZONES_BY_CODE[zone].currency,
        }
        yield KafkaEvent(topic, f"{zone}|{node or ''}".encode(), orjson.dumps(tick))


def live_trading_events(
    *,
    seed: int = 0,
    clock: Callable[[], float] = time.time,
    with_schema: bool = False,
    topic_prefix: str = CDC_TOPIC_PREFIX,
) -> Iterator[KafkaEvent]:
    """The trading system's change stream, endless and stamped with `clock` (epoch seconds) as it is pulled.

    Ids, LSNs and transaction ids start from the wall clock, so a new live session never reuses a key or an
    LSN of an earlier session or of a `trading_events` backfill (a reused bid id would rewrite history).
    """
    now_ms = int(clock() * 1000)
    sim = _TradingSystem(random.Random(seed), datetime.fromtimestamp(now_ms / 1000, UTC), with_schema, topic_prefix)
    sim.lsn = sim.tx_id = now_ms * 1000
    sim.counters = dict.fromkeys(sim.counters, now_ms)
    for event in sim.run():
        yield event
        sim.clock_ms = max(sim.clock_ms, int(clock() * 1000))


def live_market_ticks(
    *, seed: int = 0, clock: Callable[[], float] = time.time, topic: str = TICKS_TOPIC
) -> Iterator[KafkaEvent]:
    """Endless real-time price ticks, round-robin over `TICK_ZONES`, for the 5-minute interval `clock` is in.

    Several ticks of one zone (or node) and interval are revisions of its provisional price: silver keeps
    the latest, as it does for a republished real-time price.
    """
    rng = random.Random(seed)
    level = {z: (4200.0 if ZONES_BY_CODE[z].currency == "INR" else 42.0) for z in TICK_ZONES}
    for zone in itertools.cycle(TICK_ZONES):
        market = ZONES_BY_CODE[zone]
        level[zone] = min(market.price_cap, max(market.price_floor, level[zone] * (1 + rng.gauss(0, 0.01))))
        now = clock()
        interval = datetime.fromtimestamp(now - now % 300, UTC)
        node = None if rng.random() < 0.3 else f"{zone}_N{rng.randint(1, TICK_NODES_PER_ZONE)}"
        tick = {
            "zone": zone,
            "node": node,
            "ts_utc": interval.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "market": "RT",
            "interval_minutes": 5,
            "price": round(level[zone], 2),
            "currency": market.currency,
        }
        yield KafkaEvent(topic, f"{zone}|{node or ''}".encode(), orjson.dumps(tick))


def ensure_topics(
    bootstrap: str, topics: Iterable[str], partitions: int = 6, security: dict[str, object] | None = None
) -> list[str]:
    """Create the topics that do not exist yet (with `partitions` partitions); names of those created."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, **(security or {}))
    try:
        existing = set(admin.list_topics())
        missing = sorted(set(topics) - existing)
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):  # created concurrently by another producer
                admin.create_topics([NewTopic(t, partitions, 1) for t in missing])
        return missing
    finally:
        admin.close()


def produce_events(
    bootstrap: str,
    events: Iterable[KafkaEvent],
    *,
    partitions: int = 6,
    security: dict[str, object] | None = None,
    linger_ms: int = 5,
    batch_size: int = 512 * 1024,
) -> dict[str, int]:
    """Send events to Kafka (creating missing topics with `partitions` partitions); count per topic.

    Messages are partitioned by key (murmur2, like every Kafka client), so a row's changes stay in order.
    Returns after every message is acknowledged.
    """
    from kafka import KafkaProducer

    producer = KafkaProducer(
        bootstrap_servers=bootstrap,
        linger_ms=linger_ms,
        batch_size=batch_size,
        max_request_size=16 * 1024 * 1024,
        acks=1,
        **(security or {}),
    )
    counts: dict[str, int] = {}
    failures: list[BaseException] = []
    try:
        for event in events:
            if event.topic not in counts:
                ensure_topics(bootstrap, [event.topic], partitions, security)
                counts[event.topic] = 0
            producer.send(event.topic, key=event.key, value=event.value).add_errback(failures.append)
            counts[event.topic] += 1
        producer.flush()
    finally:
        producer.close()
    if failures:
        raise RuntimeError(f"{len(failures)} of {sum(counts.values())} events were not delivered: {failures[0]!r}")
    return counts


class _TradingSystem:
    """State of the simulated trading database; `run` yields its change stream forever."""

    def __init__(self, rng: random.Random, start: datetime, with_schema: bool, topic_prefix: str) -> None:
        self.rng = rng
        self.clock_ms = int(start.timestamp() * 1000)
        self.with_schema = with_schema
        self.prefix = topic_prefix
        self.lsn = 24_023_128
        self.tx_id = 5_000
        self.assets: dict[str, dict[str, Any]] = {}
        self.open_bids: dict[str, dict[str, Any]] = {}
        self.closed_bids: list[dict[str, Any]] = []
        self.open_orders: dict[str, dict[str, Any]] = {}
        self.counters = {"bid": 0, "trade": 0, "order": 0}

    def run(self) -> Iterator[KafkaEvent]:
        for asset in ASSETS:
            row = {
                "asset_id": asset.asset_id, "org_id": asset.org_id, "zone": asset.zone, "name": asset.name,
                "technology": asset.technology, "capacity_mw": asset.capacity_mw, "energy_mwh": asset.energy_mwh,
                "marginal_cost": asset.marginal_cost, "status": "active", "updated_at": self._now_iso(),
            }
            self.assets[asset.asset_id] = row
            yield self._change("assets", "r", None, row, snapshot="true" if asset != ASSETS[-1] else "last")
        while True:
            self._tick()
            roll = self.rng.random()
            if roll < 0.40 or not self.open_bids:
                yield from self._submit_bid()
            elif roll < 0.75:
                yield from self._settle_bid()
            elif roll < 0.88:
                yield from self._order_change()
            elif roll < 0.90:
                yield from self._asset_update()
            elif roll < 0.93 and self.closed_bids:
                yield from self._delete_cancelled_bid()
            else:
                yield from self._submit_bid()

    # --- lifecycle steps ------------------------------------------------------------------------

    def _submit_bid(self) -> Iterator[KafkaEvent]:
        asset = self.assets[self.rng.choice(list(self.assets))]
        self.counters["bid"] += 1
        price = self._price_for(asset["zone"])
        row = {
            "bid_id": f"bid-{self.counters['bid']:09d}", "org_id": asset["org_id"], "asset_id": asset["asset_id"],
            "zone": asset["zone"], "delivery_start": self._delivery_start(),
            "side": "sell" if asset["technology"] != "battery" or self.rng.random() < 0.5 else "buy",
            "price": price, "quantity_mw": round(self.rng.uniform(1, asset["capacity_mw"] / 4), 1),
            "status": "submitted", "cleared_quantity_mw": None, "cleared_price": None,
            "updated_at": self._now_iso(),
        }
        self.open_bids[row["bid_id"]] = row
        yield self._change("bids", "c", None, row)

    def _settle_bid(self) -> Iterator[KafkaEvent]:
        bid_id = self.rng.choice(list(self.open_bids)) if len(self.open_bids) < 64 else next(iter(self.open_bids))
        before = self.open_bids.pop(bid_id)
        after = dict(before, updated_at=self._now_iso())
        outcome = self.rng.random()
        if outcome < 0.55:
            after.update(status="accepted", cleared_quantity_mw=before["quantity_mw"],
                         cleared_price=round(before["price"] * self.rng.uniform(0.9, 1.0), 2))
        elif outcome < 0.75:
            after.update(status="partially_accepted",
                         cleared_quantity_mw=round(before["quantity_mw"] * self.rng.uniform(0.1, 0.9), 1),
                         cleared_price=round(before["price"] * self.rng.uniform(0.95, 1.0), 2))
        elif outcome < 0.9:
            after.update(status="rejected", cleared_quantity_mw=0.0)
        else:
            after.update(status="cancelled")
        txn_events = [self._change("bids", "u", before, after)]
        if after["status"] in ("accepted", "partially_accepted"):
            self.counters["trade"] += 1
            trade = {
                "trade_id": f"trd-{self.counters['trade']:09d}", "org_id": after["org_id"], "bid_id": bid_id,
                "zone": after["zone"], "delivery_start": after["delivery_start"], "side": after["side"],
                "price": after["cleared_price"], "quantity_mw": after["cleared_quantity_mw"],
                "counterparty": self.rng.choice(_COUNTERPARTIES), "traded_at": self._now_iso(),
            }
            txn_events.append(self._change("trades", "c", None, trade, same_tx=True))
        if after["status"] == "cancelled":
            self.closed_bids.append(after)
        yield from txn_events

    def _order_change(self) -> Iterator[KafkaEvent]:
        if self.open_orders and self.rng.random() < 0.5:
            order_id = next(iter(self.open_orders))
            before = self.open_orders.pop(order_id)
            after = dict(before, status=self.rng.choice(["filled", "filled", "partially_filled", "cancelled"]),
                         updated_at=self._now_iso())
            yield self._change("market_orders", "u", before, after)
            return
        asset = self.assets[self.rng.choice(list(self.assets))]
        self.counters["order"] += 1
        order_type = self.rng.choice(["limit", "limit", "market"])
        row = {
            "order_id": f"ord-{self.counters['order']:09d}", "org_id": asset["org_id"], "zone": asset["zone"],
            "delivery_start": self._delivery_start(), "side": self.rng.choice(["buy", "sell"]),
            "order_type": order_type, "price": None if order_type == "market" else self._price_for(asset["zone"]),
            "quantity_mw": round(self.rng.uniform(1, 50), 1), "status": "open", "updated_at": self._now_iso(),
        }
        self.open_orders[row["order_id"]] = row
        yield self._change("market_orders", "c", None, row)

    def _asset_update(self) -> Iterator[KafkaEvent]:
        asset_id = self.rng.choice(list(self.assets))
        before = self.assets[asset_id]
        after = dict(before, status=self.rng.choice(["active", "active", "maintenance", "derated"]),
                     updated_at=self._now_iso())
        self.assets[asset_id] = after
        yield self._change("assets", "u", before, after)

    def _delete_cancelled_bid(self) -> Iterator[KafkaEvent]:
        before = self.closed_bids.pop(0)
        yield self._change("bids", "d", before, None)
        yield KafkaEvent(cdc_topic("bids", self.prefix), self._key("bids", before), None)

    # --- envelope -------------------------------------------------------------------------------

    def _change(
        self, table: str, op: str, before: dict | None, after: dict | None, *, snapshot: str = "false",
        same_tx: bool = False,
    ) -> KafkaEvent:
        if not same_tx:
            self.tx_id += 1
        self.lsn += self.rng.randint(80, 600)
        payload = {
            "before": before,
            "after": after,
            "source": {
                **_DEBEZIUM_SOURCE_BASE, "ts_ms": self.clock_ms, "snapshot": snapshot,
                "sequence": f'["{self.lsn - 312}","{self.lsn}"]', "table": table,
                "txId": self.tx_id, "lsn": self.lsn, "xmin": None,
            },
            "transaction": None,
            "op": op,
            "ts_ms": self.clock_ms + self.rng.randint(3, 40),
            "ts_us": (self.clock_ms + 41) * 1000,
            "ts_ns": (self.clock_ms + 41) * 1_000_000,
        }
        row = before if after is None else after
        key = self._key(table, row)
        if self.with_schema:
            value = {"schema": _envelope_schema(table), "payload": payload}
            return KafkaEvent(cdc_topic(table, self.prefix), key, orjson.dumps(value))
        return KafkaEvent(cdc_topic(table, self.prefix), key, orjson.dumps(payload))

    def _key(self, table: str, row: dict[str, Any]) -> bytes:
        pk = _PRIMARY_KEYS[table]
        if self.with_schema:
            schema = {"type": "struct", "optional": False, "name": f"optibid.public.{table}.Key",
                      "fields": [{"type": "string", "optional": False, "field": pk}]}
            return orjson.dumps({"schema": schema, "payload": {pk: row[pk]}})
        return orjson.dumps({pk: row[pk]})

    def _tick(self) -> None:
        self.clock_ms += self.rng.randint(1, 250)

    def _now_iso(self) -> str:
        return datetime.fromtimestamp(self.clock_ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    def _delivery_start(self) -> str:
        now = datetime.fromtimestamp(self.clock_ms / 1000, UTC).replace(minute=0, second=0, microsecond=0)
        return (now + timedelta(hours=self.rng.randint(12, 36))).strftime("%Y-%m-%dT%H:%M:%SZ")

    def _price_for(self, zone: str) -> float:
        """A limit price the zone's exchange accepts: within its floor and cap (silver's checks enforce both)."""
        market = ZONES_BY_CODE[zone]
        base = 4200.0 if market.currency == "INR" else 42.0
        return round(min(market.price_cap, max(market.price_floor, base * self.rng.lognormvariate(0, 0.25))), 2)


_SCHEMA_CACHE: dict[str, dict[str, Any]] = {}


def _envelope_schema(table: str) -> dict[str, Any]:
    """The Kafka Connect schema of a Debezium envelope for `table` (cached: it never changes)."""
    if table not in _SCHEMA_CACHE:
        row = {
            "type": "struct",
            "fields": [{"type": t, "optional": opt, "field": f} for f, t, opt in _ROW_FIELDS[table]],
            "optional": True,
            "name": f"optibid.public.{table}.Value",
        }
        _SCHEMA_CACHE[table] = {
            "type": "struct",
            "fields": [
                {**row, "field": "before"},
                {**row, "field": "after"},
                {"type": "struct", "optional": False, "name": "io.debezium.connector.postgresql.Source",
                 "field": "source", "fields": [
                     {"type": "string", "optional": False, "field": "version"},
                     {"type": "string", "optional": False, "field": "connector"},
                     {"type": "string", "optional": False, "field": "name"},
                     {"type": "int64", "optional": False, "field": "ts_ms"},
                     {"type": "string", "optional": True, "field": "snapshot"},
                     {"type": "string", "optional": False, "field": "db"},
                     {"type": "string", "optional": True, "field": "sequence"},
                     {"type": "string", "optional": False, "field": "schema"},
                     {"type": "string", "optional": False, "field": "table"},
                     {"type": "int64", "optional": True, "field": "txId"},
                     {"type": "int64", "optional": True, "field": "lsn"},
                     {"type": "int64", "optional": True, "field": "xmin"},
                 ]},
                {"type": "string", "optional": False, "field": "op"},
                {"type": "int64", "optional": True, "field": "ts_ms"},
            ],
            "optional": False,
            "name": f"optibid.public.{table}.Envelope",
            "version": 2,
        }
    return _SCHEMA_CACHE[table]
