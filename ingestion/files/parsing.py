"""Vectorised value parsing for uploaded files: numbers with units and local conventions, timestamps.

Detection functions look at a small sample of strings and return a format; parse functions apply it to
whole Arrow arrays (no Python per-row loops on the hot path), returning nulls where a non-empty value
does not parse so the caller can quarantine the row with a reason. Local wall-clock times are turned into
UTC here too, including the two DST cases: nonexistent (spring-forward gap) and ambiguous (fall-back).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

MISSING_TOKENS = ("", "na", "n/a", "nan", "null", "none", "-", "--", "#n/a", "nil")

_NUM_TOKEN = "[-+−]?(?:\\d[\\d.,\\s\u00a0\u202f']*\\d|\\d)(?:[eE][-+]?\\d+)?"  # literal NBSPs: RE2 has no \\u
_COMMA_DECIMAL = re.compile("^[-+]?(\\d{1,3}([.\\s\u00a0']\\d{3})+|\\d+),\\d+$")
_DOT_DECIMAL = re.compile(r"^[-+]?(\d{1,3}([,\s\u00a0']\d{3})+|\d+)\.\d+$")
_PLAIN_NUMBER = r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$"
# A second number after the first: a digit at the start of what is left, or after a space, dash, slash or tilde;
# not one within a unit's name (W/m2, tCO2) or a clock time's minutes (02:00, an hour label).
_ANOTHER_NUMBER = r"(?:^|[\s/~\x{2013}\x{2014}-])\d"

# Tried in this order; day-first and month-first slash formats compete on the sample (see detect).
TIMESTAMP_FORMATS: tuple[str, ...] = (
    "%Y-%m-%dT%H:%M:%S%z",
    "%Y-%m-%d %H:%M:%S%z",
    "%Y-%m-%dT%H:%M%z",
    "%Y-%m-%d %H:%M%z",
    "%Y-%m-%dT%H:%M:%S",
    "%Y-%m-%d %H:%M:%S",
    "%Y-%m-%dT%H:%M",
    "%Y-%m-%d %H:%M",
    "%Y-%m-%d",
    "%Y/%m/%d %H:%M:%S",
    "%Y/%m/%d %H:%M",
    "%Y/%m/%d",
    "%d.%m.%Y %H:%M:%S",
    "%d.%m.%Y %H:%M",
    "%d.%m.%Y",
    "%d/%m/%Y %H:%M:%S",
    "%d/%m/%Y %H:%M",
    "%d/%m/%Y",
    "%m/%d/%Y %H:%M:%S",
    "%m/%d/%Y %H:%M",
    "%m/%d/%Y",
    "%m/%d/%Y %I:%M:%S %p",
    "%m/%d/%Y %I:%M %p",
    "%d-%m-%Y %H:%M:%S",
    "%d-%m-%Y %H:%M",
    "%d-%m-%Y",
    "%Y%m%d%H%M",
    "%Y%m%d",
)
EXCEL_SERIAL = "excel_serial"
EPOCH_SECONDS = "epoch_s"
EPOCH_MILLIS = "epoch_ms"
_EXCEL_EPOCH = np.datetime64("1899-12-30T00:00:00", "us")
_SWAPPED = {"%d": "%m", "%m": "%d"}


def _swap_day_month(fmt: str) -> str:
    return re.sub(r"%[dm]", lambda m: _SWAPPED[m.group(0)], fmt)


def as_strings(arr: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Any Arrow array as trimmed strings (nulls kept)."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if not pa.types.is_string(arr.type) and not pa.types.is_large_string(arr.type):
        arr = pc.cast(arr, pa.string())
    if _edges_trimmed(arr):
        return arr  # the usual column, and one trimmed before: no copy of every value
    # ASCII trimming is twice as fast on big columns; NBSPs inside numbers are handled by the number parser.
    return pc.ascii_trim_whitespace(arr)


def _edges_trimmed(arr: pa.Array) -> bool:
    """Whether no value of a string array starts or ends with ASCII whitespace, read from two bytes per value in
    the array's own buffers. Any byte up to 0x20 counts: a control character, an empty value (its neighbour's
    byte is read) or a value under a null can only make it answer False, which costs a trim, never a miss."""
    if len(arr) == 0:
        return True
    width = np.int64 if pa.types.is_large_string(arr.type) else np.int32
    _, offsets_buffer, data_buffer = arr.buffers()
    offsets = np.frombuffer(offsets_buffer, dtype=width)[arr.offset : arr.offset + len(arr) + 1]
    if data_buffer is None or offsets[-1] == offsets[0]:
        return True  # every value is empty
    data = np.frombuffer(data_buffer, dtype=np.uint8)[: offsets[-1]]
    # `take` and `min`: no index or boolean array is allocated per check, which runs on every string column.
    if np.take(data, offsets[:-1], mode="clip").min() <= 0x20:  # clip: an empty last value reads the last byte
        return False
    # An empty first value reads index -1: the last byte, at worst a needless trim.
    return bool(np.take(data, offsets[1:] - 1).min() > 0x20)


_MISSING_VARIANTS = pa.array(
    sorted({v for t in MISSING_TOKENS for v in (t, t.upper(), t.capitalize(), t.title())}), pa.string()
)


_LONGEST_MISSING = max(len(t.encode()) for t in MISSING_TOKENS)


def missing_mask(arr: pa.Array) -> pa.Array:
    """True where a value is absent: null, empty or a conventional missing token (NA, n/a, -, ...).

    Values are expected trimmed (`as_strings`); matching the usual spellings with one hash lookup avoids
    lower-casing every value of big files.
    """
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        return pc.is_null(arr)
    if arr.null_count == 0 and len(arr) and pc.min(pc.binary_length(arr)).as_py() > _LONGEST_MISSING:
        return pa.repeat(pa.scalar(False), len(arr))  # long values (node names, ids) cannot be a token
    # is_in says False (not null) for nulls: they are added explicitly.
    return pc.or_kleene(pc.is_null(arr), pc.is_in(arr, value_set=_MISSING_VARIANTS))


# --- numbers --------------------------------------------------------------------------------------


def detect_decimal(sample: Sequence[str]) -> str:
    """'comma' when the sample is written with a decimal comma (1.234,5), else 'dot'."""
    comma = dot = 0
    for raw in sample:
        m = re.search(_NUM_TOKEN, raw or "")
        if not m:
            continue
        token = m.group(0).replace("−", "-")
        # "12,400" / "12.400" (one separator, three digits after it) fit both styles: no evidence.
        if re.fullmatch(r"[-+]?\d{1,3}[.,]\d{3}", token):
            continue
        comma += bool(_COMMA_DECIMAL.match(token))
        dot += bool(_DOT_DECIMAL.match(token))
    return "comma" if comma > dot else "dot"


def parse_numbers(arr: pa.Array, decimal: str = "dot") -> pa.Array:
    """float64 values; null where missing or unparseable (the caller tells the two apart)."""
    if pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type) or pa.types.is_decimal(arr.type):
        return pc.cast(arr, pa.float64())
    if pa.types.is_boolean(arr.type):
        return pc.cast(pc.cast(arr, pa.int8()), pa.float64())
    text = as_strings(arr)
    if decimal == "dot":
        # Fast path: Arrow's float parser handles clean columns (the bulk of big files) in one pass.
        try:
            return pc.cast(text, pa.float64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
    text = pc.if_else(missing_mask(text), pa.scalar(None, pa.string()), text)
    token = pc.struct_field(pc.extract_regex(text, f"(?P<n>{_NUM_TOKEN})"), [0])
    token = pc.replace_substring(token, "−", "-")
    if decimal == "comma":
        token = pc.replace_substring_regex(token, r"[.\s\x{00a0}\x{202f}']", "")
        token = pc.replace_substring(token, ",", ".")
    else:
        token = pc.replace_substring_regex(token, r"[,\s\x{00a0}\x{202f}']", "")
    valid = pc.fill_null(pc.match_substring_regex(token, _PLAIN_NUMBER), False)
    # A value with text that is not a unit is unparseable, not a number: "1.2.3", and a second number beside the
    # first ("12 to 15", "12-15", "12/15").
    rest = pc.replace_substring_regex(text, _NUM_TOKEN, "", max_replacements=1)
    valid = pc.and_(valid, pc.invert(pc.fill_null(pc.match_substring_regex(rest, _ANOTHER_NUMBER), False)))
    return pc.cast(pc.if_else(valid, token, pa.scalar(None, pa.string())), pa.float64())


# --- timestamps -----------------------------------------------------------------------------------


def _parse_fmt(text: pa.Array, fmt: str) -> pa.Array:
    if fmt == EXCEL_SERIAL:
        days = parse_numbers(text)
        ok = pc.and_(pc.greater_equal(days, 1.0), pc.less(days, 2_958_466.0))
        # Serial day fractions carry float noise (1:00 is 0.041666667): round to the second.
        secs = pc.round(pc.multiply(pc.if_else(ok, days, None), 86_400.0))
        micros = pc.multiply(pc.cast(secs, pa.int64()), 1_000_000)
        base = int(_EXCEL_EPOCH.astype("int64"))
        return pc.cast(pc.add(micros, base), pa.timestamp("us"))
    if fmt in (EPOCH_SECONDS, EPOCH_MILLIS):
        scale = 1_000_000 if fmt == EPOCH_SECONDS else 1_000
        n = pc.cast(pc.round(parse_numbers(text)), pa.int64())
        return pc.cast(pc.multiply(n, scale), pa.timestamp("us", tz="UTC"))
    if fmt in ("%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S"):
        # Arrow's ISO-8601 cast is ~3x faster than strptime; it raises on any bad value -> strptime. It also
        # reads a bare date ("2024-11-03") as midnight: such values are not this format (a date column
        # beside an hour column would otherwise be taken for the timestamps).
        try:
            parsed = pc.cast(text, pa.timestamp("us"))
            shortest = pc.min(pc.utf8_length(text)).as_py()
            if shortest is None or shortest > len("2024-11-03"):
                return parsed
        except pa.ArrowInvalid:
            pass
    cleaned = text
    if pc.any(pc.match_substring(text, ".")).as_py():
        # Arrow's %S takes no fraction: fractional seconds are dropped (bronze keeps second resolution).
        cleaned = pc.replace_substring_regex(text, r"(:\d\d)\.\d+(Z|[+-]\d\d:?\d\d)?$", r"\1\2")
    return _strict(cleaned, pc.strptime(cleaned, format=fmt, unit="us", error_is_null=True), fmt)


_FIELD_RE = {"%Y": r"(\d{4})", "%m": r"(\d{1,2})", "%d": r"(\d{1,2})", "%H": r"(\d{1,2})"}


def _strict(text: pa.Array, parsed: pa.Array, fmt: str) -> pa.Array:
    """Null out values Arrow's lenient strptime rolled over (31.02. -> 02.03., 24:00 -> next day).

    A rolled-over value always lands on day 1-3 or hour 0, so only those rows are re-read field by field.
    """
    fields = [f for f in re.findall(r"%[a-zA-Z]", fmt) if f in ("%m", "%d", "%H")]
    if not fields or not len(parsed):
        return parsed
    if "%z" in fmt:
        # The parsed instant is UTC; the written fields are local: check the text without its offset.
        naive_fmt = fmt.replace("%z", "")
        naive_text = pc.replace_substring_regex(text, r"(Z|[+-]\d\d:?\d\d)$", "")
        naive = pc.strptime(naive_text, format=naive_fmt, unit="us", error_is_null=True)
        naive = _strict(naive_text, naive, naive_fmt)
        return pc.if_else(pc.is_null(naive), pa.scalar(None, parsed.type), parsed)
    suspect = pc.fill_null(pc.or_(pc.less_equal(pc.day(parsed), 3), pc.equal(pc.hour(parsed), 0)), False)
    idx = np.flatnonzero(suspect.to_numpy(zero_copy_only=False))
    if not len(idx):
        return parsed
    pattern = "^\\s*"
    names = []
    for token in re.split(r"(%[a-zA-Z])", fmt):
        if token in _FIELD_RE and token not in names:
            pattern += f"(?P<{token[1]}>{_FIELD_RE[token][1:-1]})"
            names.append(token)
        elif token.startswith("%"):
            pattern += ".*?"
        else:
            pattern += re.escape(token)
    sub_text = text.take(pa.array(idx))
    sub = parsed.take(pa.array(idx))
    found = pc.extract_regex(sub_text, pattern)
    bad = pa.array(np.zeros(len(idx), bool))
    for token, getter in (("%m", pc.month), ("%d", pc.day), ("%H", pc.hour)):
        if token in names:
            written = pc.cast(pc.struct_field(found, [names.index(token)]), pa.int64())
            bad = pc.or_(bad, pc.not_equal(written, getter(sub)))
    bad_idx = idx[np.asarray(pc.fill_null(bad, False).to_numpy(zero_copy_only=False), dtype=bool)]
    if not len(bad_idx):
        return parsed
    mask = np.zeros(len(parsed), bool)
    mask[bad_idx] = True
    return pc.if_else(pa.array(mask), pa.scalar(None, parsed.type), parsed)


def detect_timestamp_format(
    sample: Sequence[str], *, allow_numeric: bool = False
) -> tuple[str | None, float, bool]:
    """(format, share of the non-empty sample it parses, day/month order ambiguous) for a column sample."""
    values = [s.strip() for s in sample if s is not None and s.strip().lower() not in MISSING_TOKENS]
    if not values:
        return None, 0.0, False
    arr = pa.array(values, pa.string())
    numeric = pc.cast(pc.match_substring_regex(arr, _PLAIN_NUMBER), pa.int64())
    if pc.sum(numeric).as_py() == len(values):
        if not allow_numeric:
            return None, 0.0, False
        nums = parse_numbers(arr).to_numpy(zero_copy_only=False)
        if np.all((nums >= 20_000) & (nums < 80_000)):
            return EXCEL_SERIAL, 1.0, False
        if np.all((nums >= 9e8) & (nums < 4.2e9)):
            return EPOCH_SECONDS, 1.0, False
        if np.all((nums >= 9e11) & (nums < 4.2e12)):
            return EPOCH_MILLIS, 1.0, False
        return None, 0.0, False
    scores: dict[str, float] = {}
    parsed_by: dict[str, pa.Array] = {}
    for fmt in TIMESTAMP_FORMATS:
        parsed = _parse_fmt(arr, fmt)
        share = 1.0 - parsed.null_count / len(values)
        if share > 0:
            scores[fmt] = share
            parsed_by[fmt] = parsed
    if not scores:
        return None, 0.0, False
    best = max(scores, key=lambda f: (scores[f], -TIMESTAMP_FORMATS.index(f)))
    # A column mixing formats counts as parsed when the fallbacks read the rest (see parse_timestamps).
    mixed_share = 1.0 - parse_timestamps(arr, best).null_count / len(values)
    swapped = _swap_day_month(best)
    ambiguous = False
    if swapped != best and scores.get(swapped, 0) == scores[best]:
        # Both orders parse everything: the one giving the shorter path through the rows wins (hourly data
        # read month-first jumps a month between days; read day-first it advances a day).
        irregular = {f: _irregularity(parsed_by[f]) for f in (best, swapped)}
        if irregular[best] == irregular[swapped]:
            ambiguous = True
            best = min(best, swapped, key=lambda f: f.index("%d"))  # day-first by default, flagged ambiguous
        else:
            best = min(irregular, key=lambda f: irregular[f])
    return best, max(scores[best], mixed_share), ambiguous


def _irregularity(parsed: pa.Array) -> int:
    ts = parsed.drop_null().cast(pa.int64()).to_numpy()
    if len(ts) < 2:
        return 0
    return int(np.abs(np.diff(ts)).sum())


def fallback_formats(primary: str) -> list[str]:
    """Formats tried on values the primary format rejects (mixed-format columns), minus the swapped order."""
    swapped = _swap_day_month(primary)
    return [f for f in TIMESTAMP_FORMATS if f not in (primary, swapped)]


def parse_timestamps(arr: pa.Array, fmt: str) -> pa.Array:
    """Timestamps (naive = local wall clock, UTC-aware when the text has an offset); null if unparseable.

    Values the primary format rejects are retried with the other known formats, so a column that mixes
    e.g. ISO and day-first European dates parses fully; the conflicting month/day order is never tried.
    """
    if pa.types.is_timestamp(arr.type):
        return arr.cast(pa.timestamp("us", tz=arr.type.tz)) if arr.type.unit != "us" else arr
    if pa.types.is_date(arr.type):
        return pc.cast(pc.cast(arr, pa.date32()), pa.timestamp("us"))
    text = as_strings(arr)
    text = pc.if_else(missing_mask(text), pa.scalar(None, pa.string()), text)
    parsed = _to_utc_if_aware(_parse_fmt(text, fmt))
    if fmt in (EXCEL_SERIAL, EPOCH_SECONDS, EPOCH_MILLIS):
        return parsed
    todo = pc.and_(pc.is_null(parsed), pc.is_valid(text))
    if pc.any(todo).as_py():
        aware_wanted = pa.types.is_timestamp(parsed.type) and parsed.type.tz is not None
        for other in fallback_formats(fmt):
            if ("%z" in other) != aware_wanted:
                continue
            attempt = _to_utc_if_aware(_parse_fmt(text, other))
            parsed = pc.if_else(todo, attempt, parsed)
            todo = pc.and_(pc.is_null(parsed), pc.is_valid(text))
            if not pc.any(todo).as_py():
                break
    return parsed


def _to_utc_if_aware(parsed: pa.Array) -> pa.Array:
    if parsed.type.tz is not None:
        return parsed.cast(pa.timestamp("us", tz="UTC"))
    return parsed


def offsets_in_text(arr: pa.Array) -> pa.Array:
    """The UTC offset written in each timestamp string ('+01:00', 'UTC' for Z), or null."""
    text = as_strings(arr)
    found = pc.struct_field(pc.extract_regex(text, r"(?P<o>Z|[+-]\d\d:?\d\d)$"), [0])
    return pc.if_else(pc.equal(found, "Z"), pa.scalar("UTC"), found)


def localize(naive: pa.Array, tz: str) -> tuple[pa.Array, pa.Array, pa.Array, pa.Array]:
    """(utc_earliest, utc_latest, nonexistent, ambiguous) for naive local wall-clock times in `tz`.

    Ambiguous (fall-back) times have two valid instants; the caller picks by order in the file.
    Nonexistent (spring-forward) times have none and must be quarantined.
    """
    utc = pa.timestamp("us", tz="UTC")
    if tz in ("UTC", "Etc/UTC", "GMT"):
        aware = naive.view(utc)  # naive values are already UTC wall-clock: zero-copy
        false = pc.is_null(aware)
        return aware, aware, pc.and_(false, pa.scalar(False)), pc.and_(false, pa.scalar(False))
    earliest = pc.assume_timezone(naive, timezone=tz, ambiguous="earliest", nonexistent="earliest").cast(utc)
    latest = pc.assume_timezone(naive, timezone=tz, ambiguous="latest", nonexistent="latest").cast(utc)
    round_trip = pc.local_timestamp(earliest.cast(pa.timestamp("us", tz=tz)))
    nonexistent = pc.fill_null(pc.not_equal(round_trip, naive), False)
    ambiguous = pc.and_(pc.fill_null(pc.not_equal(earliest, latest), False), pc.invert(nonexistent))
    return earliest, latest, nonexistent, ambiguous


def local_midnight_utc(dates: pa.Array, tz: str) -> tuple[pa.Array, pa.Array]:
    """(UTC instant of local midnight, length of that local day in hours) for dates (naive timestamps)."""
    day = pc.floor_temporal(dates, unit="day")
    next_day = pc.add(day, pa.scalar(86_400_000_000, pa.duration("us")))
    start, _, _, _ = localize(day, tz)
    end, _, _, _ = localize(next_day.cast(pa.timestamp("us")), tz)
    hours = pc.divide(pc.subtract(end.cast(pa.int64()), start.cast(pa.int64())), 3_600_000_000)
    return start, hours


def now_utc() -> datetime:
    """The current instant (timezone-aware UTC)."""
    from datetime import UTC

    return datetime.now(UTC)
