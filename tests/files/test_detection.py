"""Schema detection on its own: units, synonyms, number and date conventions, confidence."""

from __future__ import annotations

import pyarrow as pa
import pytest

from ingestion.files import parsing
from ingestion.files.mapping import hour_label, normalised_name, proposed_mapping


@pytest.mark.parametrize(
    ("header", "norm", "unit"),
    [
        ("Price (€/MWh)", "price", "€/mwh"),
        ("Rs/MWh", "", "rs/mwh"),
        ("Load [MW]", "load", "mw"),
        ("DA price", "da_price", None),
        ("LMP", "lmp", None),
    ],
)
def test_header_units_are_split_from_names(header: str, norm: str, unit: str | None):
    assert normalised_name(header) == (norm, unit)


@pytest.mark.parametrize(
    ("price_header", "currency"),
    [("LMP ($/MWh)", "USD"), ("Rs/MWh", "INR"), ("price_mwh", None), ("Preis (€/MWh)", "EUR")],
)
def test_price_synonyms_and_currency_from_units(price_header: str, currency: str | None):
    sample = pa.table(
        {
            "Delivery Start": ["2024-04-01 00:00", "2024-04-01 00:15", "2024-04-01 00:30"],
            "Bidding Zone": ["IN-N", "IN-N", "IN-N"],
            price_header: ["3,500.25", "3,601.00", "2,999.90"],
        }
    )
    m = proposed_mapping(sample, file_name="dam_results.csv", defaults={"market": "DA"})
    assert m.dataset == "prices"
    assert m.columns == {"ts_utc": "Delivery Start", "zone": "Bidding Zone", "price": price_header}
    if currency:
        assert m.constants["currency"] == currency and m.confidence >= 0.9
    else:  # nothing says which currency: required field unresolved -> held
        assert "currency" not in m.constants and m.confidence < 0.7


def test_market_read_from_column_name():
    sample = pa.table(
        {
            "timestamp": ["2024-04-01 00:00", "2024-04-01 01:00"],
            "zone": ["FR", "FR"],
            "DA price": ["10.5", "11"],
            "currency": ["EUR", "EUR"],
        }
    )
    m = proposed_mapping(sample, file_name="x.csv")
    assert (m.dataset, m.constants.get("market"), m.columns["price"]) == ("prices", "DA", "DA price")


def test_negative_values_argue_against_load():
    sample = pa.table(
        {"time": ["2024-01-01 00:00", "2024-01-01 01:00"], "zone": ["A", "A"], "load": ["-5", "-7"]}
    )
    assert proposed_mapping(sample, file_name="x.csv").confidence < 0.7


@pytest.mark.parametrize(
    ("values", "fmt"),
    [
        (["2024/3/5 1:00", "2024/3/5 2:00"], "%Y/%m/%d %H:%M"),
        (["13/03/2024 01:00", "14/03/2024 01:00"], "%d/%m/%Y %H:%M"),
        (["03/13/2024 01:00", "03/14/2024 01:00"], "%m/%d/%Y %H:%M"),
        (["01/03/2024 00:00", "01/03/2024 01:00", "02/03/2024 00:00"], "%d/%m/%Y %H:%M"),
        (["2024-03-05T01:00:00+01:00"], "%Y-%m-%dT%H:%M:%S%z"),
        (["45352", "45352.5"], parsing.EXCEL_SERIAL),
    ],
)
def test_timestamp_formats(values: list[str], fmt: str):
    assert parsing.detect_timestamp_format(values, allow_numeric=True)[0] == fmt


def test_day_month_order_that_nothing_decides_is_flagged():
    _, _, ambiguous = parsing.detect_timestamp_format(["01/02/2024 00:00"])
    assert ambiguous


def test_numbers_with_units_separators_and_decimal_comma():
    assert parsing.detect_decimal(["1.234,5", "12,5"]) == "comma"
    assert parsing.detect_decimal(["12,400", "12,300"]) == "dot"  # no evidence either way
    got = parsing.parse_numbers(pa.array(["1.234,5 €/MWh", "−3,2", "Rs 4.500,00", "", "abc"]), "comma")
    assert got.to_pylist() == [1234.5, -3.2, 4500.0, None, None]
    got = parsing.parse_numbers(pa.array(["1,234.5 MW", "$ -12.75", "1e3", "1.2.3"]), "dot")
    assert got.to_pylist() == [1234.5, -12.75, 1000.0, None]
    # two numbers are a range or a typo, not the first of them; digits within a unit are part of the unit
    got = parsing.parse_numbers(
        pa.array(["12 to 15", "12-15", "12/15", "12 – 15", "450 W/m2", "3.5 tCO2", "12 (est.)", "02:00"])
    )
    assert got.to_pylist() == [None, None, None, None, 450.0, 3.5, 12.0, 2.0]
    got = parsing.parse_numbers(pa.array(["12,5 bis 15,0", "12,5 €/MWh"]), "comma")
    assert got.to_pylist() == [None, 12.5]


def test_lenient_rollover_dates_are_rejected():
    got = parsing.parse_timestamps(
        pa.array(["31.02.2024 03:00", "29.02.2024 24:00", "29.02.2024 23:00"]), "%d.%m.%Y %H:%M"
    )
    assert got.null_count == 2 and got[2].as_py().day == 29


@pytest.mark.parametrize(
    ("name", "label"),
    [
        ("HE01", "1"),
        ("HE24", "24"),
        ("HE25", "25"),
        ("Hour 7", "7"),
        ("hour_ending_07", "7"),
        ("HB00", "0"),
        ("HE02*", "2*"),
        ("HE02X", "2*"),
        ("HE02DST", "2*"),
        ("HE 2 (DST)", "2*"),
        ("Hour 3A", "3"),
        ("Hour 3B", "3*"),
        ("HE26", None),
        ("Zone", None),
        ("hex", None),
    ],
)
def test_hour_column_labels_and_repeated_hour_markers(name: str, label: str | None):
    assert hour_label(name) == label


def test_a_bare_iso_date_is_a_date_not_a_midnight_timestamp():
    # Otherwise a "Delivery Date" column beside "Hour Ending" is taken for the timestamps.
    assert parsing.detect_timestamp_format(["2024-11-03", "2024-11-04"])[0] == "%Y-%m-%d"


@pytest.mark.parametrize("string_type", [pa.string(), pa.large_string()])
def test_as_strings_trims_exactly_the_values_with_whitespace_at_an_edge(string_type):
    values = ["a", " b", "c ", "\td\n", "", None, "e f", "", "g"]
    arr = pa.array(values, string_type)
    assert parsing.as_strings(arr).to_pylist() == [None if v is None else v.strip() for v in values]
    for start in range(len(values)):
        for length in range(len(values) - start + 1):
            piece = arr.slice(start, length)  # a slice reads its values at an offset into shared buffers
            expected = [None if v is None else v.strip() for v in values[start : start + length]]
            assert parsing.as_strings(piece).to_pylist() == expected
    clean = pa.array(["x", "", None, "y z"], string_type)
    assert parsing.as_strings(clean) is clean, "a column with nothing to trim is not copied"


def test_market_and_side_spellings_map_to_their_codes_and_unknown_ones_to_null():
    from ingestion.files.canonical import MARKET_ALIASES, SIDE_ALIASES
    from ingestion.files.transform import CanonicalBuilder

    text = pa.array(["DA", "day-ahead", None, "Real Time", "rtm", "forward", "DA", "", "dam"])
    assert CanonicalBuilder._aliased(text, MARKET_ALIASES).to_pylist() == [
        "DA", "DA", None, "RT", "RT", None, "DA", None, "DA"
    ]
    assert CanonicalBuilder._aliased(pa.array(["Sell", "BUY", "hold"]), SIDE_ALIASES).to_pylist() == [
        "sell", "buy", None
    ]
    assert CanonicalBuilder._aliased(pa.array([], pa.string()), MARKET_ALIASES).to_pylist() == []
