-- Silver tables written by Spark (ingestion/silver/): typed, deduplicated market data partitioned by the zone's
-- market-local day, CDC current state + SCD-2 history of the trading system, and data-quality flags.
-- Uniqueness treats NULL node/org_id as a value (public market data has org_id NULL; zone prices have node NULL).
CREATE SCHEMA IF NOT EXISTS silver;
-- Unlogged staging tables that Spark partitions COPY into before one set-based merge (ingestion/silver/pg_writer.py).
CREATE SCHEMA IF NOT EXISTS stage;

-- Market data -------------------------------------------------------------------------------------------
CREATE TABLE IF NOT EXISTS silver.market__prices (
    ts_utc            timestamptz NOT NULL,
    market_date       date NOT NULL,
    zone              text NOT NULL,
    node              text,
    market            text NOT NULL,
    interval_minutes  integer NOT NULL,
    price             double precision NOT NULL,
    currency          text NOT NULL,
    org_id            text,
    revision          integer NOT NULL,
    is_gap_filled     boolean NOT NULL DEFAULT false,
    source            text NOT NULL,
    ingested_at       timestamptz NOT NULL,
    CONSTRAINT market__prices_key UNIQUE NULLS NOT DISTINCT (zone, node, market, interval_minutes, ts_utc, org_id)
);
CREATE INDEX IF NOT EXISTS market__prices_market_date ON silver.market__prices (market_date);

CREATE TABLE IF NOT EXISTS silver.market__price_revisions (
    ts_utc            timestamptz NOT NULL,
    market_date       date NOT NULL,
    zone              text NOT NULL,
    node              text,
    market            text NOT NULL,
    interval_minutes  integer NOT NULL,
    org_id            text,
    revision          integer NOT NULL,
    price             double precision NOT NULL,
    currency          text NOT NULL,
    is_latest         boolean NOT NULL,
    source            text NOT NULL,
    source_ref        text NOT NULL,
    batch_id          text,
    ingested_at       timestamptz NOT NULL,
    CONSTRAINT market__price_revisions_key
        UNIQUE NULLS NOT DISTINCT (zone, node, market, interval_minutes, ts_utc, org_id, revision)
);
CREATE INDEX IF NOT EXISTS market__price_revisions_market_date ON silver.market__price_revisions (market_date);

CREATE TABLE IF NOT EXISTS silver.market__load (
    ts_utc            timestamptz NOT NULL,
    market_date       date NOT NULL,
    zone              text NOT NULL,
    interval_minutes  integer NOT NULL,
    load_mw           double precision NOT NULL,
    org_id            text,
    revision          integer NOT NULL,
    is_gap_filled     boolean NOT NULL DEFAULT false,
    source            text NOT NULL,
    ingested_at       timestamptz NOT NULL,
    CONSTRAINT market__load_key UNIQUE NULLS NOT DISTINCT (zone, interval_minutes, ts_utc, org_id)
);
CREATE INDEX IF NOT EXISTS market__load_market_date ON silver.market__load (market_date);

CREATE TABLE IF NOT EXISTS silver.market__generation (
    ts_utc            timestamptz NOT NULL,
    market_date       date NOT NULL,
    zone              text NOT NULL,
    fuel              text NOT NULL,
    interval_minutes  integer NOT NULL,
    generation_mw     double precision NOT NULL,
    org_id            text,
    revision          integer NOT NULL,
    is_gap_filled     boolean NOT NULL DEFAULT false,
    source            text NOT NULL,
    ingested_at       timestamptz NOT NULL,
    CONSTRAINT market__generation_key UNIQUE NULLS NOT DISTINCT (zone, fuel, interval_minutes, ts_utc, org_id)
);
CREATE INDEX IF NOT EXISTS market__generation_market_date ON silver.market__generation (market_date);

-- Weather feeds carry no interval column; silver records them as hourly (interval_minutes = 60).
CREATE TABLE IF NOT EXISTS silver.market__weather (
    ts_utc            timestamptz NOT NULL,
    market_date       date NOT NULL,
    zone              text NOT NULL,
    interval_minutes  integer NOT NULL,
    temperature_c     double precision,
    wind_speed_ms     double precision,
    irradiance_wm2    double precision,
    org_id            text,
    revision          integer NOT NULL,
    is_gap_filled     boolean NOT NULL DEFAULT false,
    source            text NOT NULL,
    ingested_at       timestamptz NOT NULL,
    CONSTRAINT market__weather_key UNIQUE NULLS NOT DISTINCT (zone, ts_utc, org_id)
);
CREATE INDEX IF NOT EXISTS market__weather_market_date ON silver.market__weather (market_date);

-- One row per series, market-local day and issue: 'gap' (missing intervals), 'duplicate' (a key delivered more
-- than once), 'unknown_zone' (rows whose zone is not in ref__zones; market_date is then the UTC date).
CREATE TABLE IF NOT EXISTS silver.quality__gaps (
    dataset           text NOT NULL,
    zone              text NOT NULL,
    series_key        text NOT NULL,
    org_id            text,
    market_date       date NOT NULL,
    issue             text NOT NULL CHECK (issue IN ('gap', 'duplicate', 'unknown_zone')),
    interval_minutes  integer,
    expected_points   integer,
    observed_points   integer NOT NULL,
    affected_points   integer NOT NULL,
    first_ts          timestamptz,
    last_ts           timestamptz,
    CONSTRAINT quality__gaps_key UNIQUE NULLS NOT DISTINCT (dataset, series_key, org_id, market_date, issue)
);
CREATE INDEX IF NOT EXISTS quality__gaps_market_date ON silver.quality__gaps (market_date);

-- Trading system (CDC) ----------------------------------------------------------------------------------
-- Current state: one row per live key (deleted keys are absent). History: SCD-2, one row per change; a delete
-- is a zero-length version (valid_to = valid_from, is_current false) carrying the last known values.
CREATE TABLE IF NOT EXISTS silver.trading__bids (
    bid_id               text PRIMARY KEY,
    org_id               text NOT NULL,
    asset_id             text,
    zone                 text,
    delivery_start       timestamptz,
    side                 text,
    price                double precision,
    quantity_mw          double precision,
    status               text,
    cleared_quantity_mw  double precision,
    cleared_price        double precision,
    updated_at           timestamptz,
    op                   text NOT NULL,
    valid_from           timestamptz NOT NULL,
    source_lsn           bigint
);
CREATE TABLE IF NOT EXISTS silver.trading__bids_history (
    bid_id               text NOT NULL,
    version              integer NOT NULL,
    org_id               text NOT NULL,
    asset_id             text,
    zone                 text,
    delivery_start       timestamptz,
    side                 text,
    price                double precision,
    quantity_mw          double precision,
    status               text,
    cleared_quantity_mw  double precision,
    cleared_price        double precision,
    updated_at           timestamptz,
    op                   text NOT NULL CHECK (op IN ('c', 'u', 'd', 'r')),
    valid_from           timestamptz NOT NULL,
    valid_to             timestamptz,
    is_current           boolean NOT NULL,
    source_lsn           bigint,
    PRIMARY KEY (bid_id, version)
);

CREATE TABLE IF NOT EXISTS silver.trading__trades (
    trade_id       text PRIMARY KEY,
    org_id         text NOT NULL,
    bid_id         text,
    zone           text,
    delivery_start timestamptz,
    side           text,
    price          double precision,
    quantity_mw    double precision,
    counterparty   text,
    traded_at      timestamptz,
    op             text NOT NULL,
    valid_from     timestamptz NOT NULL,
    source_lsn     bigint
);
CREATE TABLE IF NOT EXISTS silver.trading__trades_history (
    trade_id       text NOT NULL,
    version        integer NOT NULL,
    org_id         text NOT NULL,
    bid_id         text,
    zone           text,
    delivery_start timestamptz,
    side           text,
    price          double precision,
    quantity_mw    double precision,
    counterparty   text,
    traded_at      timestamptz,
    op             text NOT NULL CHECK (op IN ('c', 'u', 'd', 'r')),
    valid_from     timestamptz NOT NULL,
    valid_to       timestamptz,
    is_current     boolean NOT NULL,
    source_lsn     bigint,
    PRIMARY KEY (trade_id, version)
);

CREATE TABLE IF NOT EXISTS silver.trading__assets (
    asset_id       text PRIMARY KEY,
    org_id         text NOT NULL,
    zone           text,
    name           text,
    technology     text,
    capacity_mw    double precision,
    energy_mwh     double precision,
    marginal_cost  double precision,
    status         text,
    updated_at     timestamptz,
    op             text NOT NULL,
    valid_from     timestamptz NOT NULL,
    source_lsn     bigint
);
CREATE TABLE IF NOT EXISTS silver.trading__assets_history (
    asset_id       text NOT NULL,
    version        integer NOT NULL,
    org_id         text NOT NULL,
    zone           text,
    name           text,
    technology     text,
    capacity_mw    double precision,
    energy_mwh     double precision,
    marginal_cost  double precision,
    status         text,
    updated_at     timestamptz,
    op             text NOT NULL CHECK (op IN ('c', 'u', 'd', 'r')),
    valid_from     timestamptz NOT NULL,
    valid_to       timestamptz,
    is_current     boolean NOT NULL,
    source_lsn     bigint,
    PRIMARY KEY (asset_id, version)
);

CREATE TABLE IF NOT EXISTS silver.trading__market_orders (
    order_id       text PRIMARY KEY,
    org_id         text NOT NULL,
    zone           text,
    delivery_start timestamptz,
    side           text,
    order_type     text,
    price          double precision,
    quantity_mw    double precision,
    status         text,
    updated_at     timestamptz,
    op             text NOT NULL,
    valid_from     timestamptz NOT NULL,
    source_lsn     bigint
);
CREATE TABLE IF NOT EXISTS silver.trading__market_orders_history (
    order_id       text NOT NULL,
    version        integer NOT NULL,
    org_id         text NOT NULL,
    zone           text,
    delivery_start timestamptz,
    side           text,
    order_type     text,
    price          double precision,
    quantity_mw    double precision,
    status         text,
    updated_at     timestamptz,
    op             text NOT NULL CHECK (op IN ('c', 'u', 'd', 'r')),
    valid_from     timestamptz NOT NULL,
    valid_to       timestamptz,
    is_current     boolean NOT NULL,
    source_lsn     bigint,
    PRIMARY KEY (order_id, version)
);

-- Tenancy: every silver table with org_id is row-level secured (docs/data_contracts.md#tenancy).
DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY[
        'market__prices', 'market__price_revisions', 'market__load', 'market__generation', 'market__weather',
        'quality__gaps', 'trading__bids', 'trading__bids_history', 'trading__trades', 'trading__trades_history',
        'trading__assets', 'trading__assets_history', 'trading__market_orders', 'trading__market_orders_history'
    ] LOOP
        EXECUTE format('ALTER TABLE silver.%I ENABLE ROW LEVEL SECURITY', t);
        IF NOT EXISTS (SELECT 1 FROM pg_policies WHERE schemaname = 'silver' AND tablename = t
                       AND policyname = 'org_isolation') THEN
            EXECUTE format(
                'CREATE POLICY org_isolation ON silver.%I USING '
                '(org_id IS NULL OR org_id = current_setting(''optibid.org_id'', true))', t);
        END IF;
    END LOOP;
END $$;

-- Last bronze Delta version each incremental silver build has consumed.
CREATE TABLE IF NOT EXISTS ops.silver_watermarks (
    source          text PRIMARY KEY,
    bronze_version  bigint NOT NULL,
    rows_read       bigint NOT NULL DEFAULT 0,
    keys_touched    bigint NOT NULL DEFAULT 0,
    processed_at    timestamptz NOT NULL DEFAULT now()
);
