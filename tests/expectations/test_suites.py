"""Great Expectations suites on small DataFrames: each promise passes on good data and fails on bad data."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from expectations.runner import validate_frame, write_data_docs
from expectations.suites import SUITES, SuiteParameters, suite_for


def failing(outcome) -> dict[str, int | None]:
    return {f"{f.expectation}({f.column or ''})": f.unexpected_count for f in outcome.failures}


def test_good_prices_pass_including_negative_and_cap(prices: pd.DataFrame, zones: pd.DataFrame) -> None:
    outcome = validate_frame(prices, suite_for("silver.market__prices"), SuiteParameters(zones=zones))
    assert outcome.success, outcome.summary()
    assert outcome.evaluated >= 12 and outcome.row_count == 6


def test_price_bounds_come_from_the_zone_not_from_normal_looking_values(prices: pd.DataFrame, zones) -> None:
    # 4000 is fine in NYISO (cap 5000) but above PJM's cap 3700; -1001 is below the -1000 floor
    prices.loc[0, "price"] = 4000.0
    prices.loc[1, "price"] = -1001.0
    outcome = validate_frame(prices, suite_for("silver.market__prices"), SuiteParameters(zones=zones))
    assert not outcome.success
    fails = failing(outcome)
    assert fails["expect_column_pair_values_a_to_be_greater_than_b(_gx_price_cap,price)"] == 1
    assert fails["expect_column_pair_values_a_to_be_greater_than_b(price,_gx_price_floor)"] == 1
    cap_failure = next(f for f in outcome.failures if f.column == "_gx_price_cap,price")
    assert cap_failure.sample == [(3700.0, 4000.0)]
    nyiso = prices.assign(zone="NYISO")
    nyiso.loc[1, "price"] = -50.0
    assert validate_frame(nyiso, suite_for("silver.market__prices"), SuiteParameters(zones=zones)).success


def test_duplicate_keys_and_gaps_fail(prices: pd.DataFrame, zones: pd.DataFrame) -> None:
    broken = pd.concat([prices, prices.iloc[[2]]], ignore_index=True).drop(index=4)
    outcome = validate_frame(broken, suite_for("silver.market__prices"), SuiteParameters(zones=zones))
    fails = failing(outcome)
    # the duplicated hour shows twice; the series steps 0 min (duplicate) and 120 min (missing hour)
    assert fails["expect_compound_columns_to_be_unique()"] == 2
    assert fails["expect_column_pair_values_to_be_equal(_gx_step_minutes,interval_minutes)"] == 2


def test_unknown_zone_and_missing_column(prices: pd.DataFrame, zones: pd.DataFrame) -> None:
    outcome = validate_frame(
        prices.assign(zone="ATLANTIS"), suite_for("silver.market__prices"), SuiteParameters(zones=zones)
    )
    assert failing(outcome)["expect_column_values_to_be_in_set(zone)"] == 6
    schema = validate_frame(prices.drop(columns=["currency"]), suite_for("silver.market__prices"))
    assert "expect_table_columns_to_match_set()" in failing(schema)


def test_row_count_change_and_freshness(prices: pd.DataFrame) -> None:
    suite = suite_for("silver.market__prices")

    def vs_previous(rows: int, min_previous_rows: int = 1) -> SuiteParameters:
        return SuiteParameters(previous_row_count=rows, min_previous_rows=min_previous_rows)

    assert validate_frame(prices, suite, vs_previous(8)).success  # 6 vs 8: within 50 %
    assert "expect_table_row_count_to_be_between()" in failing(validate_frame(prices, suite, vs_previous(24)))
    assert "expect_table_row_count_to_be_between()" in failing(validate_frame(prices, suite, vs_previous(3)))
    # a tiny previous partition (a first, partial day) is no yardstick
    assert validate_frame(prices, suite, vs_previous(3, min_previous_rows=100)).success
    # a day under way (today's first ticks) is not short of rows, but may not grow past the bound either
    in_progress = SuiteParameters(previous_row_count=24, min_previous_rows=1, day_in_progress=True)
    assert validate_frame(prices, suite, in_progress).success
    grown = SuiteParameters(previous_row_count=3, min_previous_rows=1, day_in_progress=True)
    assert "expect_table_row_count_to_be_between()" in failing(validate_frame(prices, suite, grown))
    newest = prices["ts_utc"].max().to_pydatetime()
    fresh = SuiteParameters(now=newest + timedelta(hours=1), max_age=timedelta(hours=3))
    stale = SuiteParameters(now=newest + timedelta(hours=5), max_age=timedelta(hours=3))
    assert validate_frame(prices, suite, fresh).success
    assert "expect_column_max_to_be_between(ts_utc)" in failing(validate_frame(prices, suite, stale))


def test_a_market_day_is_over_once_it_is_over_in_the_westernmost_zone() -> None:
    from expectations.warehouse import last_complete_market_date

    day = date(2024, 7, 10)
    assert last_complete_market_date(datetime(2024, 7, 11, 11, 59, tzinfo=UTC)) == day - timedelta(days=1)
    assert last_complete_market_date(datetime(2024, 7, 11, 12, 0, tzinfo=UTC)) == day


def test_negative_load_fails() -> None:
    ts = pd.date_range("2024-07-10 04:00", periods=4, freq="15min", tz="UTC")
    load = pd.DataFrame(
        {
            "ts_utc": ts,
            "market_date": ts.date,
            "zone": "ERCOT",
            "interval_minutes": 15,
            "load_mw": [100.0, -3.0, 120.0, 110.0],
            "org_id": None,
            "revision": 0,
            "is_gap_filled": False,
            "source": "t",
        }
    )
    outcome = validate_frame(load, suite_for("silver.market__load"))
    assert failing(outcome) == {"expect_column_values_to_be_between(load_mw)": 1}
    assert outcome.failures[0].sample == [-3.0]


def test_storage_may_generate_negative_but_wind_may_not() -> None:
    ts = pd.Timestamp("2024-07-10 04:00", tz="UTC")
    gen = pd.DataFrame(
        {
            "ts_utc": [ts, ts],
            "market_date": ts.date(),
            "zone": "CAISO",
            "fuel": ["battery", "wind"],
            "interval_minutes": 60,
            "generation_mw": [-40.0, -1.0],
            "org_id": None,
            "revision": 0,
            "is_gap_filled": False,
            "source": "t",
        }
    )
    outcome = validate_frame(gen, suite_for("silver.market__generation"))
    assert failing(outcome) == {"expect_column_values_to_be_between(_gx_non_storage_generation_mw)": 1}


def test_bronze_cdc_and_gold_kpi_suites() -> None:
    cdc = pd.DataFrame(
        {
            "op": ["c", "x"],
            "key": ['{"bid_id": "b1"}'] * 2,
            "source_ts_ms": [1, 2],
            "source_table": "bids",
            "after_json": "{}",
            "_ingested_at": datetime.now(UTC),
            "_batch_id": "b",
            "_topic": "t",
            "_partition": 0,
            "_offset": [1, 1],
        }
    )
    fails = failing(validate_frame(cdc, suite_for("bronze.cdc__bids")))
    assert fails["expect_column_values_to_be_in_set(op)"] == 1
    assert fails["expect_compound_columns_to_be_unique()"] == 2
    kpis = pd.DataFrame(
        {
            "kpi_code": ["load_factor", "price_avg", "made_up"],
            "grain": ["day", "hour", "day"],
            "zone": "PJM",
            "org_id": None,
            "period_start": pd.to_datetime(["2024-07-10 04:00", "2024-07-10 05:00", "2024-07-10 04:00"], utc=True),
            "market_date": pd.Timestamp("2024-07-10").date(),
            "value": [1.2, 4000.0, 1.0],
        }
    )
    fails = failing(
        validate_frame(kpis, suite_for("gold.kpi_values"), SuiteParameters(kpi_codes=["load_factor", "price_avg"]))
    )
    # a ratio above 1 fails; a large price is not a ratio; the uncatalogued code fails
    assert fails == {
        "expect_column_values_to_be_between(_gx_ratio_value)": 1,
        "expect_column_values_to_be_in_set(kpi_code)": 1,
    }


def test_bronze_cdc_suites_cover_exactly_the_captured_trading_tables() -> None:
    from ingestion.cdc.topics import CDC_SOURCE_TABLES

    cdc_suites = {name.removeprefix("bronze.cdc__") for name in SUITES if name.startswith("bronze.cdc__")}
    assert cdc_suites - {"dead_letters", "schema_changes"} == set(CDC_SOURCE_TABLES)


def test_every_layer_has_suites() -> None:
    layers = {name.split(".")[0] for name in SUITES}
    assert layers == {"bronze", "silver", "gold"}


def test_data_docs_written_to_the_given_folder(prices: pd.DataFrame, zones, tmp_path: Path) -> None:
    prices.loc[0, "price"] = 9999.0
    outcome = validate_frame(prices, suite_for("silver.market__prices"), SuiteParameters(zones=zones))
    docs = write_data_docs([outcome], tmp_path / "gx_docs")
    pages = list((tmp_path / "gx_docs" / "validations").glob("*.html"))
    assert docs.index.exists() and len(pages) == 1 and docs.pages == pages
    page = pages[0].read_text()
    assert "silver__market__prices" in page and "9999" in page
    assert pages[0].name in docs.index.read_text()
    # Nothing is loaded from outside the docs folder (air-gapped networks); the local assets are there.
    assert not re.search(r"<(script|link|img)\b[^>]*\b(src|href)=\"https?://", page)
    for asset in re.findall(r"\b(?:src|href)=\"(\.\./_static/[^\"]+)\"", page):
        assert (pages[0].parent / asset).resolve().is_file(), asset
    # Validating with a docs folder names the outcome's own page (what a Dagster check links to).
    again = validate_frame(
        prices, suite_for("silver.market__prices"), SuiteParameters(zones=zones), docs_dir=tmp_path / "gx_docs"
    )
    assert again.docs_page is not None and again.docs_page.parent == pages[0].parent
    assert again.docs_page != pages[0] and "9999" in again.docs_page.read_text()


def test_validate_partition_from_the_warehouse(database_url: str, tmp_path: Path) -> None:
    from datetime import date

    from expectations.warehouse import validate_partition
    from tests.gold.silver_fixture import load_fixture

    load_fixture(database_url)
    day = date(2024, 7, 10)
    outcome = validate_partition(database_url, "silver.market__prices", day, day, docs_dir=tmp_path)
    assert outcome.success, outcome.summary()
    assert outcome.row_count == 24 + 23 + 3 + 1 + 1  # PJM DA, COMED DA (07-10 local), PJM RT, nodal, acme
    load = validate_partition(database_url, "silver.market__load", day, day)
    assert load.success and load.row_count == 24
    assert (tmp_path / "index.html").exists()


@pytest.fixture
def trading_database(database_url: str) -> Iterator[str]:
    """A database of its own: other areas' tests write bids into the shared one."""
    from tests.conftest import private_database

    yield from private_database(database_url, "optibid_test_trading_check")


def test_trading_check_validates_the_delivery_window_of_current_bids(trading_database: str, tmp_path: Path) -> None:
    from datetime import date

    from expectations.warehouse import validate_deliveries
    from infra import db
    from tests.gold.silver_fixture import load_fixture

    url = trading_database
    load_fixture(url)  # zones with their price floors and caps
    first, last = date(2031, 3, 10), date(2031, 3, 11)  # the fixture has bids in 2024
    empty = validate_deliveries(url, "silver.trading__bids", first, last)
    assert empty.success and empty.row_count == 0, empty.summary()

    rows = [  # bid_id, delivery_start, quantity_mw, cleared_quantity_mw
        ("t1", "2031-03-10T10:00Z", 10.0, 10.0),
        ("t2", "2031-03-11T23:00Z", 5.0, None),
        ("t3", "2031-03-10T11:00Z", -3.0, None),  # impossible: a bid of negative volume
        ("t4", "2031-03-10T12:00Z", 4.0, 6.0),  # impossible: cleared more than offered
        ("t5", "2031-02-01T10:00Z", -1.0, None),  # outside the window: not this check's business
    ]
    with db.connect(url) as conn:
        for bid_id, start, qty, cleared in rows:
            conn.execute(
                """INSERT INTO silver.trading__bids (bid_id, org_id, asset_id, zone, delivery_start, side,
                   price, quantity_mw, status, cleared_quantity_mw, cleared_price, updated_at, op, valid_from)
                   VALUES (%s, 'acme', 'a1', 'PJM', %s, 'sell', 42.0, %s, 'submitted', %s, NULL, now(), 'c',
                   now())""",
                (bid_id, start, qty, cleared),
            )
    outcome = validate_deliveries(url, "silver.trading__bids", first, last, docs_dir=tmp_path)
    assert not outcome.success and outcome.row_count == 4
    failing = {(f["expectation"], f["column"]): f["unexpected_count"] for f in outcome.as_metadata()["failures"]}
    assert failing[("expect_column_values_to_be_between", "quantity_mw")] == 1
    assert sum(n for (name, _), n in failing.items() if "pair" in name) == 1


def test_row_count_baseline_is_per_day_held_so_the_first_full_window_passes(trading_database: str) -> None:
    """The window before the first days of data is partly empty: its rows per day, not its total, set what
    the next window may hold (a demo's first three days once failed against the two days before them)."""
    from datetime import date, timedelta

    from expectations.warehouse import previous_row_count
    from infra import db

    first = date(2024, 7, 1)
    with db.connect(trading_database) as conn:
        conn.execute("CREATE TABLE public.daily_rows (market_date date NOT NULL)")
        for offset in range(5):  # ten rows a day from the first day of data on
            conn.execute(
                "INSERT INTO public.daily_rows SELECT %s FROM generate_series(1, 10)", (first + timedelta(offset),)
            )
    window = (first + timedelta(days=2), first + timedelta(days=4))  # three days, after two days of data
    assert previous_row_count(trading_database, "public.daily_rows", *window) == 30
    assert previous_row_count(trading_database, "public.daily_rows", first, first) is None


def test_row_count_baseline_leaves_out_the_partial_first_day(trading_database: str, tmp_path: Path) -> None:
    """Data starts at some hour of its first day: that day is no yardstick for the full days after it, while a
    spike after full days still fails."""
    from expectations.suites import TableSuite
    from expectations.warehouse import partition_frame, previous_row_count
    from infra import db

    first = date(2024, 7, 1)
    with db.connect(trading_database) as conn:
        conn.execute("CREATE TABLE public.partial_start (market_date date NOT NULL)")
        conn.execute("INSERT INTO public.partial_start SELECT %s FROM generate_series(1, 150)", (first,))
        for offset in range(1, 9):  # full days of 1,200 rows, and one day of 4,000 on the ninth day
            rows = 4_000 if offset == 8 else 1_200
            conn.execute(
                "INSERT INTO public.partial_start SELECT %s FROM generate_series(1, %s)",
                (first + timedelta(offset), rows),
            )
    table = "public.partial_start"
    second, week_end = first + timedelta(days=1), first + timedelta(days=7)
    assert previous_row_count(trading_database, table, second, second) is None
    assert previous_row_count(trading_database, table, second, week_end) is None
    assert previous_row_count(trading_database, table, second + timedelta(1), second + timedelta(1)) == 1_200

    suite = TableSuite(table, ("market_date",))
    for window, passes in [((second, week_end), True), ((week_end + timedelta(1),) * 2, False)]:
        params = SuiteParameters(previous_row_count=previous_row_count(trading_database, table, *window))
        outcome = validate_frame(partition_frame(trading_database, table, *window), suite, params, docs_dir=tmp_path)
        assert outcome.success is passes, outcome.as_metadata()["failures"]
