"""The real-time hot path of the minute-grain KPIs: price ticks to `gold.kpi_values` in about a second.

Belongs here: `MinuteKpiWriter`, the row sink the CDC consumer calls with each micro-batch's decoded tick
rows, and the SQL that turns staged ticks into minute KPI rows. No Dagster; the batch path (Spark silver,
then dbt `kpi_values`) stays the authority and replaces whole market dates (see docs/realtime.md).

For every batch, in ONE Postgres transaction:
1. the zone-level five-minute ticks (node NULL, interval 5: all that dbt's `price_minute` reads) are upserted
   into `ops.realtime_price_ticks`, keyed by their Kafka coordinates, so a replayed batch changes nothing;
2. each (zone, minute) the batch touched is recomputed from ALL its staged deliveries with silver's rules
   (the latest delivery per (zone, market, minute) wins: ingested_at, then partition, offset, source_ref;
   per-kWh quotes scaled by 1000; zones unknown to `silver.ref__zones` dropped; the market date is the
   zone-local date) and dbt's `price_minute` rule (mean over markets, org_id NULL). A 5-minute zone price
   delivered by a file is taken from silver's latest revision when it is newer than the ticks;
3. rows whose value changed replace theirs in `gold.kpi_values`, and the same transaction sends
   `notify_kpi_update` per zone and `bump_table_version` per market date, so WebSocket subscribers and the
   API cache see the rows exactly at commit.

`gold.kpi_values` is written under `SHARE ROW EXCLUSIVE`, which conflicts with the row-exclusive lock of
dbt's delete+insert: the two writers never interleave, so no minute is ever held twice. A dbt run whose
silver snapshot predates a tick would drop that minute's newer value when it replaces the day; the writer
notices dates bumped by someone else in `ops.table_versions` and re-asserts the staged minutes of those
dates (`repair`), which equal what the next batch run will compute. Before the first batch build of
`gold.kpi_values` the ticks are staged only; once the table appears, every staged minute is written. Both
checks run in a background thread every few seconds, so they do not wait for the next tick.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import psycopg
import pyarrow as pa
import pyarrow.compute as pc

from infra.signals import bump_table_version, notify_kpi_update
from ingestion.cdc.decode import TS_TYPE
from ingestion.cdc.topics import TopicRoute

_log = logging.getLogger(__name__)

KPI_TABLE = "gold.kpi_values"
KPI_CODE = "price_avg"
GRAIN = "minute"
STAGING_TABLE = "ops.realtime_price_ticks"
_STAGED_COLUMNS = ("topic", "kafka_partition", "kafka_offset", "zone", "market", "ts_utc", "price", "currency",
                   "ingested_at")

# Latest delivery per (zone, market, minute), then the mean over markets: silver's `with_revisions` order
# and dbt's `price_minute`. Spark compares strings bytewise, hence COLLATE "C" on source_ref.
_RECOMPUTE_SQL = f"""
CREATE TEMP TABLE rt_computed ON COMMIT DROP AS
WITH deliveries AS (
    SELECT t.zone, t.market, t.ts_utc, t.price, t.ingested_at,
           t.kafka_partition::bigint AS order_a, t.kafka_offset AS order_b,
           t.topic || '/' || t.kafka_partition || '@' || t.kafka_offset AS source_ref
    FROM {STAGING_TABLE} AS t
    JOIN rt_keys AS k ON k.zone = t.zone AND k.ts_utc = t.ts_utc
    UNION ALL
    SELECT r.zone, r.market, r.ts_utc, r.price, r.ingested_at, NULL, NULL, r.source_ref
    FROM silver.market__price_revisions AS r
    JOIN rt_keys AS k ON k.zone = r.zone AND k.ts_utc = r.ts_utc
    WHERE r.is_latest AND r.source = 'file' AND r.node IS NULL AND r.interval_minutes = 5 AND r.org_id IS NULL
),
latest AS (
    SELECT DISTINCT ON (zone, market, ts_utc) zone, market, ts_utc, price
    FROM deliveries
    ORDER BY zone, market, ts_utc, ingested_at DESC, order_a DESC NULLS LAST, order_b DESC NULLS LAST,
             source_ref COLLATE "C" DESC
)
SELECT l.zone, l.ts_utc, (l.ts_utc AT TIME ZONE z.timezone)::date AS market_date, avg(l.price) AS value
FROM latest AS l
JOIN silver.ref__zones AS z ON z.zone = l.zone
GROUP BY l.zone, l.ts_utc, z.timezone
"""
_CHANGED_SQL = f"""
CREATE TEMP TABLE rt_changed ON COMMIT DROP AS
SELECT c.* FROM rt_computed AS c
WHERE c.value IS NOT NULL AND NOT EXISTS (
    SELECT 1 FROM {KPI_TABLE} AS v
    WHERE v.kpi_code = %(code)s AND v.grain = %(grain)s AND v.zone = c.zone AND v.period_start = c.ts_utc
      AND v.org_id IS NULL AND v.market_date = c.market_date AND v.value = c.value
)
"""
_REPLACE_SQL = (
    f"""DELETE FROM {KPI_TABLE} AS v USING rt_changed AS c
        WHERE v.kpi_code = %(code)s AND v.grain = %(grain)s AND v.zone = c.zone AND v.period_start = c.ts_utc
          AND v.org_id IS NULL""",
    f"""INSERT INTO {KPI_TABLE} (kpi_code, grain, zone, org_id, period_start, market_date, value)
        SELECT %(code)s, %(grain)s, zone, NULL, ts_utc, market_date, value FROM rt_changed""",
)


@dataclass
class MinuteKpiUpdate:
    """What one call wrote: ticks staged, KPI rows replaced, and the zones and market dates signalled."""

    staged: int = 0
    skipped_old: int = 0
    changed: int = 0
    zones: dict[str, tuple[datetime, datetime]] = field(default_factory=dict)
    market_dates: list[date] = field(default_factory=list)


class MinuteKpiWriter:
    """Keeps the zone `price_avg` minute KPIs of `gold.kpi_values` current from tick batches.

    Use it as the consumer's `row_sink` (`CdcConsumer(..., row_sink=writer)`); call `close()` when done.
    `database_url` may be a function, called at the first write (so a run that sees no tick never connects).
    Ticks older than `retention` (by their own time) are left to the batch path and pruned from staging.
    From the first write on, a daemon thread checks every `repair_check_seconds` for dates that a batch
    run rewrote (`repair`) and for the first build of the KPI table, while the consumer waits for ticks.
    """

    def __init__(
        self,
        database_url: str | Callable[[], str],
        *,
        retention: timedelta = timedelta(days=14),
        repair_check_seconds: float = 5.0,
        attempts: int = 3,
        log: logging.Logger | logging.LoggerAdapter | None = None,
    ) -> None:
        self.database_url = database_url
        self.retention = retention
        self.repair_check_seconds = repair_check_seconds
        self.attempts = attempts
        self.log = log or _log
        self._conn: psycopg.Connection | None = None
        self._versions: dict[date, int] = {}  # gold.kpi_values versions as last written or repaired here
        self._versions_loaded = False
        self._next_prune = 0.0
        self._warned_missing = False
        self._awaiting_table = False  # ticks were staged while the KPI table did not exist
        self._lock = threading.RLock()  # one connection, used by the consumer's thread and the upkeep thread
        self._stopping = threading.Event()
        self._upkeep: threading.Thread | None = None

    # --- the consumer's hook ----------------------------------------------------------------------
    def __call__(self, route: TopicRoute, rows: pa.Table) -> None:
        if route.kind == "ticks":
            self.apply(rows)

    def close(self) -> None:
        self._stopping.set()
        if self._upkeep is not None and self._upkeep is not threading.current_thread():
            self._upkeep.join()
        self._upkeep = None
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> MinuteKpiWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- writes -----------------------------------------------------------------------------------
    def apply(self, rows: pa.Table) -> MinuteKpiUpdate:
        """Stage a batch of bronze tick rows and rewrite the minute KPIs it touched, in one transaction.

        Retried on connection errors (the upsert is idempotent); raises after `attempts`, so the consumer
        does not commit bronze past ticks the hot path never saw.
        """
        staged = _zone_ticks(rows)
        horizon = pa.scalar(datetime.now(UTC) - self.retention, TS_TYPE)
        fresh = staged.filter(pc.greater_equal(staged["ts_utc"], horizon))
        update = self._with_retries(lambda conn: self._apply(conn, fresh))
        update.skipped_old = staged.num_rows - fresh.num_rows
        if self._upkeep is None and not self._stopping.is_set():
            self._upkeep = threading.Thread(target=self._run_upkeep, name="kpi-writer-upkeep", daemon=True)
            self._upkeep.start()
        return update

    def repair(self, market_dates: Iterable[date] | None) -> MinuteKpiUpdate:
        """Re-assert every staged minute of `market_dates` (None: of every date) whose row in gold differs from
        its staged value."""
        dates = None if market_dates is None else sorted(set(market_dates))
        if dates == []:
            return MinuteKpiUpdate()
        return self._with_retries(lambda conn: self._repair(conn, dates))

    def _apply(self, conn: psycopg.Connection, ticks: pa.Table) -> MinuteKpiUpdate:
        update = MinuteKpiUpdate(staged=ticks.num_rows)
        if not ticks.num_rows:
            return update
        conn.execute(
            """CREATE TEMP TABLE rt_batch (topic text, kafka_partition integer, kafka_offset bigint, zone text,
               market text, ts_utc timestamptz, price double precision, currency text, ingested_at timestamptz)
               ON COMMIT DROP"""
        )
        with conn.cursor() as cur, cur.copy(f"COPY rt_batch ({', '.join(_STAGED_COLUMNS)}) FROM STDIN") as copy:
            for row in zip(*(ticks[c].to_pylist() for c in _STAGED_COLUMNS), strict=True):
                copy.write_row(row)
        # Silver's unit rule: trimmed, upper-cased currency ending in "/kWh" means a price per kWh.
        conn.execute(
            f"""INSERT INTO {STAGING_TABLE} AS s
                    (topic, kafka_partition, kafka_offset, zone, market, ts_utc, price, ingested_at)
                SELECT topic, kafka_partition, kafka_offset, zone, market, ts_utc,
                       price * CASE WHEN upper(btrim(currency, ' ')) ~ '/\\s*KWH$' THEN 1000.0 ELSE 1.0 END,
                       ingested_at
                FROM rt_batch
                ON CONFLICT (topic, kafka_partition, kafka_offset) DO UPDATE
                SET zone = excluded.zone, market = excluded.market, ts_utc = excluded.ts_utc,
                    price = excluded.price, ingested_at = excluded.ingested_at"""
        )
        conn.execute("CREATE TEMP TABLE rt_keys ON COMMIT DROP AS SELECT DISTINCT zone, ts_utc FROM rt_batch")
        return self._rewrite(conn, update)

    def _repair(self, conn: psycopg.Connection, dates: Sequence[date] | None) -> MinuteKpiUpdate:
        if dates is None:
            conn.execute(
                f"""CREATE TEMP TABLE rt_keys ON COMMIT DROP AS
                    SELECT DISTINCT t.zone, t.ts_utc FROM {STAGING_TABLE} AS t"""
            )
            update = self._rewrite(conn, MinuteKpiUpdate())
            if update.changed:
                self.log.info("%s exists now: wrote %d staged minute KPI rows", KPI_TABLE, update.changed)
            return update
        # Zones sit within UTC-12..UTC+14: one day either side holds every minute of those market dates.
        conn.execute(
            f"""CREATE TEMP TABLE rt_keys ON COMMIT DROP AS
                SELECT DISTINCT t.zone, t.ts_utc FROM {STAGING_TABLE} AS t
                JOIN silver.ref__zones AS z ON z.zone = t.zone
                WHERE t.ts_utc >= %(lo)s AND t.ts_utc < %(hi)s
                  AND (t.ts_utc AT TIME ZONE z.timezone)::date = ANY(%(dates)s)""",
            {
                "lo": datetime.combine(min(dates) - timedelta(days=1), datetime.min.time(), UTC),
                "hi": datetime.combine(max(dates) + timedelta(days=2), datetime.min.time(), UTC),
                "dates": list(dates),
            },
        )
        update = self._rewrite(conn, MinuteKpiUpdate())
        if update.changed:
            self.log.info("re-asserted %d real-time minute KPI rows on %s", update.changed, dates)
        return update

    def _rewrite(self, conn: psycopg.Connection, update: MinuteKpiUpdate) -> MinuteKpiUpdate:
        """Recompute the minutes in `rt_keys` and replace the changed ones in gold, with the signals."""
        if not _table_exists(conn, KPI_TABLE):
            if not self._warned_missing:
                self.log.warning("%s does not exist yet (gold not built): ticks are staged only", KPI_TABLE)
                self._warned_missing = True
            self._awaiting_table = True
            return update
        conn.execute(f"LOCK TABLE {KPI_TABLE} IN SHARE ROW EXCLUSIVE MODE")
        params = {"code": KPI_CODE, "grain": GRAIN}
        conn.execute(_RECOMPUTE_SQL)
        conn.execute(_CHANGED_SQL, params)
        changed = conn.execute("SELECT zone, ts_utc, market_date FROM rt_changed").fetchall()
        if not changed:
            return update
        for statement in _REPLACE_SQL:
            conn.execute(statement, params)
        ranges: dict[str, list[datetime]] = defaultdict(list)
        dates: set[date] = set()
        for zone, ts_utc, market_date in changed:
            ranges[zone].append(ts_utc)
            dates.add(market_date)
        for zone, stamps in sorted(ranges.items()):
            notify_kpi_update(conn, KPI_CODE, GRAIN, zone, min(stamps), max(stamps), None)
            update.zones[zone] = (min(stamps), max(stamps))
        for market_date in sorted(dates):
            self._versions[market_date] = bump_table_version(conn, KPI_TABLE, market_date)
        update.changed = len(changed)
        update.market_dates = sorted(dates)
        return update

    # --- upkeep -----------------------------------------------------------------------------------
    def _run_upkeep(self) -> None:
        # The first round at once: it records the versions this writer starts from.
        while not self._stopping.is_set():
            try:
                self._repair_and_prune()
            except Exception:  # the next round retries; the consumer's own writes raise for themselves
                self.log.warning("real-time KPI upkeep failed", exc_info=True)
            self._stopping.wait(self.repair_check_seconds)

    def _repair_and_prune(self) -> None:
        if self._awaiting_table:
            exists = self._with_retries(lambda conn: _table_exists(conn, KPI_TABLE))
            if exists:
                self._awaiting_table = False
                self.repair(None)
        foreign = self._with_retries(self._dates_written_elsewhere)
        if foreign:
            self.repair(foreign)
        now = time.monotonic()
        if now >= self._next_prune:
            self._next_prune = now + 600
            self._with_retries(
                lambda conn: conn.execute(
                    f"DELETE FROM {STAGING_TABLE} WHERE ts_utc < %s", (datetime.now(UTC) - self.retention,)
                )
            )

    def _dates_written_elsewhere(self, conn: psycopg.Connection) -> list[date]:
        """Market dates of gold.kpi_values whose version moved since this writer last wrote or checked them."""
        rows = conn.execute(
            "SELECT market_date, version FROM ops.table_versions WHERE table_name = %s", (KPI_TABLE,)
        ).fetchall()
        current = {d: int(v) for d, v in rows}
        if not self._versions_loaded:  # the state before this writer started is not ours to repair
            self._versions, self._versions_loaded = current, True
            return []
        foreign = [d for d, v in current.items() if self._versions.get(d) != v]
        self._versions.update(current)
        return foreign

    def _with_retries(self, work):
        delay = 0.5
        for attempt in range(1, self.attempts + 1):
            try:
                with self._lock:
                    if self._conn is None or self._conn.closed:
                        if callable(self.database_url):
                            self.database_url = self.database_url()
                        self._conn = psycopg.connect(self.database_url, autocommit=True)
                    with self._conn.transaction():
                        return work(self._conn)
            except psycopg.OperationalError:
                with self._lock:
                    if self._conn is not None:
                        self._conn.close()
                        self._conn = None
                if attempt == self.attempts:
                    raise
                self.log.warning("real-time KPI write failed (attempt %d), retrying", attempt, exc_info=True)
                time.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")


def _table_exists(conn: psycopg.Connection, table: str) -> bool:
    return conn.execute("SELECT to_regclass(%s)", (table,)).fetchone()[0] is not None


def _zone_ticks(rows: pa.Table) -> pa.Table:
    """The rows dbt's `price_minute` reads (zone level, five-minute), renamed to the staging columns."""
    mask = pc.and_(pc.is_null(rows["node"]), pc.equal(rows["interval_minutes"], 5))
    picked = rows.filter(pc.fill_null(mask, False))
    return pa.table(
        {
            "topic": picked["_topic"],
            "kafka_partition": picked["_partition"],
            "kafka_offset": picked["_offset"],
            "zone": picked["zone"],
            "market": picked["market"],
            "ts_utc": picked["ts_utc"],
            "price": picked["price"],
            "currency": picked["currency"],
            "ingested_at": picked["_ingested_at"],
        }
    )
