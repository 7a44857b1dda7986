-- Real-time minute KPIs (ingestion/cdc/realtime.py, docs/realtime.md).
-- The zone-level five-minute price ticks the CDC consumer has seen, one row per Kafka record, so that a
-- minute touched by a new tick is recomputed from every delivery of that minute (late, corrected and
-- replayed ticks included) exactly as silver (latest delivery per key) and dbt (`price_minute`) will.
-- Prices are per MWh (per-kWh quotes scaled like silver); rows older than the retention are pruned.
CREATE TABLE IF NOT EXISTS ops.realtime_price_ticks (
    topic            text NOT NULL,
    kafka_partition  integer NOT NULL,
    kafka_offset     bigint NOT NULL,
    zone             text NOT NULL,
    market           text NOT NULL,
    ts_utc           timestamptz NOT NULL,
    price            double precision NOT NULL,
    ingested_at      timestamptz NOT NULL,
    PRIMARY KEY (topic, kafka_partition, kafka_offset)
);
CREATE INDEX IF NOT EXISTS realtime_price_ticks_minute ON ops.realtime_price_ticks (zone, ts_utc);
CREATE INDEX IF NOT EXISTS realtime_price_ticks_ingested ON ops.realtime_price_ticks (ingested_at);
