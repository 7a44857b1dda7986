"""Schema detection and column mapping: which canonical dataset a file is, and how its columns fill it.

`detected_columns` profiles each raw column (kind, unit, decimal style, timestamp format);
`proposed_mapping` scores every dataset by header names/synonyms, units and value profiles and returns a
`Mapping` with a confidence and the reasons. A mapping below `AUTO_LAND_CONFIDENCE`, or with an unresolved
required field, is held for an explicit mapping instead of being guessed.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa

from ingestion.files import parsing
from ingestion.files.canonical import CANONICAL_DATASETS, MARKET_ALIASES, PRICE_UNITS, SYNONYMS

AUTO_LAND_CONFIDENCE = 0.7
# An hour column's name without spaces/punctuation: HE07, Hour 7, H7, 7, hour_ending_07, HB00, and the
# fall-back day's repeated hour as US ISOs and exchanges write it: HE02*, HE02X, HE02DST, Hour 3B (3A = first).
_HOUR_COL = re.compile(r"^(?:h|he|hr|hour|hourending|hourbeginning|hb)?0*(\d{1,2})(a|b|x|\*|dst)?$")
_REPEATED_SUFFIXES = ("b", "x", "*", "dst")
_UNIT = re.compile(
    r"[\(\[]([^\)\]]*)[\)\]]|((?:€|\$|£|₹|rs|eur|usd|inr|gbp)\s*/\s*mwh)|\b(mw|°c|m/s|w/m2|w/m²)\b", re.I
)
FUELS = (
    "solar",
    "wind",
    "gas",
    "coal",
    "nuclear",
    "hydro",
    "biomass",
    "lignite",
    "oil",
    "wind_onshore",
    "wind_offshore",
    "battery",
    "geothermal",
    "other",
)


@dataclass
class Mapping:
    """How a file (or one sheet) fills a canonical dataset; JSON-serialisable via `as_json`."""

    dataset: str
    columns: dict[str, str] = field(default_factory=dict)  # canonical field -> source column
    constants: dict[str, Any] = field(default_factory=dict)  # canonical field -> value for every row
    timezone: str = "UTC"  # zone of naive local timestamps
    layout: str = "long"  # long | wide_hours | wide_columns
    date_column: str | None = None  # wide_hours / hour_column layouts: the date
    hour_column: str | None = None  # long files with a separate hour number
    hour_convention: str = "ending"  # ending (1..24/25) | beginning (0..23)
    # How hours count on DST days: clock (wall-clock hours, the repeated one marked, e.g. HE02*), elapsed
    # (hours since local midnight: 1..25 / 1..23) or auto (told by the file's columns and each day's cells).
    hour_numbering: str = "auto"
    wide_columns: dict[str, str] = field(
        default_factory=dict
    )  # source column -> label (hour/zone/market/fuel)
    wide_field: str | None = None  # hour | zone | market | fuel
    value_field: str | None = None  # canonical field the wide cells fill
    ts_format: str | None = None
    decimal: dict[str, str] = field(default_factory=dict)  # source column -> dot | comma
    confidence: float = 1.0
    reasons: list[str] = field(default_factory=list)
    source: str = "auto"  # auto | explicit

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Mapping:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        if "dataset" not in known or known["dataset"] not in CANONICAL_DATASETS:
            raise ValueError(f"mapping needs 'dataset', one of {sorted(CANONICAL_DATASETS)}")
        return cls(**known)


@dataclass
class ColumnProfile:
    name: str
    norm: str
    unit: str | None
    kind: str  # empty | numeric | timestamp | date | text
    ts_format: str | None = None
    ts_ambiguous: bool = False
    decimal: str = "dot"
    min: float | None = None
    max: float | None = None
    numbers: list[float] = field(default_factory=list)  # the parsed sample (value-profile checks)


def hour_label(name: str) -> str | None:
    """The hour a column of a wide hourly layout holds ("7"; "2*" for the repeated fall-back hour), or None."""
    m = _HOUR_COL.match(re.sub(r"[\s_\-.:()\[\]]+", "", name.lower()))
    if not m or int(m.group(1)) > 25:
        return None
    return str(int(m.group(1))) + ("*" if m.group(2) in _REPEATED_SUFFIXES else "")


def normalised_name(name: str) -> tuple[str, str | None]:
    """(header as snake_case words without its unit, the unit found in it or None)."""
    unit = None
    m = _UNIT.search(name)
    if m:
        unit = next(g for g in m.groups() if g is not None).strip().lower().replace(" ", "")
        name = name[: m.start()] + " " + name[m.end() :]
    norm = re.sub(r"[^0-9a-z]+", "_", name.lower()).strip("_")
    return norm, unit


def detected_columns(sample: pa.Table) -> list[ColumnProfile]:
    """A profile of every column of a sample of raw rows."""
    out = []
    for name in sample.column_names:
        norm, unit = normalised_name(name)
        col = sample.column(name).combine_chunks()
        if pa.types.is_timestamp(col.type) or pa.types.is_date(col.type):
            out.append(ColumnProfile(name, norm, unit, "timestamp"))
            continue
        text = parsing.as_strings(col)
        values = [v for v in text.to_pylist() if v and v.lower() not in parsing.MISSING_TOKENS]
        if not values:
            out.append(ColumnProfile(name, norm, unit, "empty"))
            continue
        timey = any(
            w in norm.split("_")
            for w in (
                "date",
                "time",
                "datetime",
                "timestamp",
                "ts",
                "day",
                "mtu",
                "datum",
                "zeit",
                "fecha",
                "heure",
                "uhrzeit",
            )
        )
        fmt, share, ambiguous = parsing.detect_timestamp_format(values, allow_numeric=timey)
        # Footers and notes rows weigh a lot in small samples: a time-like header lowers the bar.
        if fmt and (share >= 0.9 or (timey and share >= 0.5)):
            kind = (
                "date"
                if fmt in ("%Y-%m-%d", "%d.%m.%Y", "%d/%m/%Y", "%m/%d/%Y", "%Y/%m/%d", "%d-%m-%Y", "%Y%m%d")
                else "timestamp"
            )
            out.append(ColumnProfile(name, norm, unit, kind, fmt, ambiguous))
            continue
        decimal = parsing.detect_decimal(values)
        nums = parsing.parse_numbers(pa.array(values, pa.string()), decimal)
        # Junk cells ("n.v.", footers) weigh a lot in small samples; a unit in the header lowers the bar.
        if nums.null_count <= (0.5 if unit else 0.2) * len(values):
            valid = nums.drop_null().to_pylist()
            out.append(
                ColumnProfile(
                    name,
                    norm,
                    unit,
                    "numeric",
                    decimal=decimal,
                    min=min(valid),
                    max=max(valid),
                    numbers=valid,
                )
            )
        else:
            out.append(ColumnProfile(name, norm, unit, "text"))
    return out


def _name_score(field_name: str, prof: ColumnProfile) -> float:
    syns = SYNONYMS.get(field_name, ())
    if prof.norm in syns:
        return 1.0
    words = set(prof.norm.split("_"))
    if any(set(s.split("_")) <= words for s in syns if len(s) > 2):
        return 0.7
    if field_name == "price" and prof.unit in PRICE_UNITS:
        return 0.8
    return 0.0


_NUMERIC_FIELDS = {
    "price",
    "load_mw",
    "generation_mw",
    "temperature_c",
    "wind_speed_ms",
    "irradiance_wm2",
    "quantity_mw",
    "interval_minutes",
}


def _fits(field_name: str, prof: ColumnProfile) -> bool:
    if field_name in _NUMERIC_FIELDS:
        return prof.kind == "numeric"
    return prof.kind in ("text", "numeric")


def _market_of(text: str) -> str | None:
    words = re.sub(r"[^0-9a-z]+", "_", text.lower()).strip("_").split("_")
    joined = "_".join(words)
    for alias, market in MARKET_ALIASES.items():
        a = alias.replace("-", "_").replace(" ", "_")
        if a in words or f"_{a}_" in f"_{joined}_":
            return market
    return None


def _currency_of(profiles: list[ColumnProfile]) -> str | None:
    for p in profiles:
        if p.unit and p.unit in PRICE_UNITS:
            return PRICE_UNITS[p.unit]
        for unit, ccy in PRICE_UNITS.items():
            if unit.split("/")[0] in p.norm.split("_") and unit.split("/")[0].isalpha():
                return ccy
    return None


def proposed_mapping(
    sample: pa.Table,
    *,
    file_name: str,
    sheet: str | None = None,
    default_tz: str = "UTC",
    defaults: dict[str, Any] | None = None,
) -> Mapping:
    """The best dataset mapping of a sample with its confidence; `defaults` fill file-wide fields
    (zone, currency, market) the file does not state."""
    defaults = dict(defaults or {})
    profiles = detected_columns(sample)
    by_name = {p.name: p for p in profiles}
    context = f"{file_name} {sheet or ''}".lower()
    decimal = {p.name: p.decimal for p in profiles if p.kind == "numeric"}
    reasons: list[str] = []

    # --- time axis ---------------------------------------------------------------------------------
    labelled = {
        p.name: label
        for p in profiles
        if (label := hour_label(p.name)) is not None and p.kind not in ("date", "timestamp")
    }
    hour_cols = {name: label for name, label in labelled.items() if by_name[name].kind in ("numeric", "empty")}
    ts_candidates = [p for p in profiles if p.kind == "timestamp"]
    date_candidates = [p for p in profiles if p.kind == "date"]
    layout, date_col, hour_col, ts_col, ts_format, ambiguous = "long", None, None, None, None, False
    wide: dict[str, str] = {}
    wide_field = None
    convention = "ending"
    if len(hour_cols) >= 20 and (date_candidates or ts_candidates):
        day = (date_candidates or ts_candidates)[0]  # Excel dates arrive as midnight datetimes
        layout, date_col, wide_field = "wide_hours", day.name, "hour"
        convention = "beginning" if "0" in hour_cols.values() else "ending"
        # An hour column whose sample reads as text (#VALUE!, "err") is still an hour: its cells are checked
        # and quarantined, not skipped.
        wide = dict(labelled)
        ts_format, ambiguous = day.ts_format, day.ts_ambiguous
    elif ts_candidates:
        best = max(ts_candidates, key=lambda p: _name_score("ts_utc", p))
        ts_col, ts_format, ambiguous = best.name, best.ts_format, best.ts_ambiguous
    elif date_candidates:
        hours = [
            p
            for p in profiles
            if p.kind == "numeric" and p.norm in ("hour", "he", "hour_ending", "hr", "hour_beginning", "hb")
        ]
        if hours:
            date_col, hour_col = date_candidates[0].name, hours[0].name
            convention = (
                "beginning" if hours[0].norm in ("hour_beginning", "hb") or hours[0].min == 0 else "ending"
            )
            ts_format, ambiguous = date_candidates[0].ts_format, date_candidates[0].ts_ambiguous
        else:
            ts_col, ts_format, ambiguous = date_candidates[0].name, date_candidates[0].ts_format, False
    if ambiguous:
        reasons.append("day/month order of the dates is ambiguous")
    used = {c for c in (ts_col, date_col, hour_col) if c} | set(wide)

    # --- score each dataset --------------------------------------------------------------------------
    scored: list[tuple[float, Mapping]] = []
    for ds in CANONICAL_DATASETS.values():
        m = Mapping(
            ds.name,
            timezone=default_tz,
            layout=layout,
            date_column=date_col,
            hour_column=hour_col,
            hour_convention=convention,
            wide_columns=dict(wide),
            wide_field=wide_field,
            ts_format=ts_format,
            decimal=decimal,
        )
        if ts_col:
            m.columns["ts_utc"] = ts_col
        taken = set(used)
        scores: dict[str, float] = {}
        for f in ds.schema.names:
            if f == "ts_utc":
                continue
            cands = [(_name_score(f, p), p) for p in profiles if p.name not in taken and _fits(f, p)]
            cands = [c for c in cands if c[0] > 0]
            if not cands:
                continue
            cands.sort(key=lambda c: -c[0])
            if len(cands) > 1 and cands[0][0] == cands[1][0] and f in ds.value_fields and layout == "long":
                # Two equally good value columns (e.g. "DA price" and "RT price"): one per market?
                mk = {c[1].name: _market_of(c[1].name) for c in cands if c[0] == cands[0][0]}
                if f == "price" and all(mk.values()) and len(set(mk.values())) == len(mk):
                    m.layout, m.wide_field, m.value_field, m.wide_columns = "wide_columns", "market", f, mk
                    taken |= set(mk)
                    scores[f] = cands[0][0]
                    continue
            score, prof = cands[0]
            rule = next((r for r in ds.rules if r.column == f), None)
            if rule and prof.numbers:
                # Value profile: the share of sample values the field allows (negative "load" scores 0).
                lo = rule.min if rule.min is not None else float("-inf")
                hi = rule.max if rule.max is not None else float("inf")
                score *= sum(lo <= v <= hi for v in prof.numbers) / len(prof.numbers)
            m.columns[f] = prof.name
            taken.add(prof.name)
            scores[f] = score
        # Wide files: the cells are the dataset's value, told by the file name or a unit.
        if m.layout == "wide_hours" or (m.layout == "long" and not any(f in scores for f in ds.value_fields)):
            leftovers = [p for p in profiles if p.name not in taken and p.kind in ("numeric", "empty")]
            hinted = any(h in re.split(r"[^a-z]+", context) for h in ds.name_hints) or (
                ds.name == "prices" and _currency_of(profiles) is not None
            )
            if m.layout == "wide_hours" and hinted:
                m.value_field = ds.value_fields[0]
                scores[m.value_field] = 0.9
            elif m.layout == "long" and len(leftovers) >= 2 and hinted and (ts_col or date_col):
                labels = {p.name: p.norm for p in leftovers}
                fuelish = sum(p.norm in FUELS for p in leftovers)
                m.layout, m.value_field = "wide_columns", ds.value_fields[0]
                if ds.name == "generation" and fuelish:
                    m.wide_field = "fuel"
                else:
                    m.wide_field = "zone"
                    labels = {p.name: p.name.strip() for p in leftovers}
                m.wide_columns = labels
                scores[m.value_field] = 0.8
        # File-wide constants
        if "currency" in ds.schema.names and "currency" not in m.columns:
            ccy = _currency_of(profiles) or defaults.get("currency")
            if ccy:
                m.constants["currency"] = ccy
                scores["currency"] = 1.0 if _currency_of(profiles) else 0.9
        if "market" in ds.schema.names and "market" not in m.columns and m.wide_field != "market":
            mk = _market_of(" ".join(by_name[c].name for c in m.columns.values())) or _market_of(context)
            mk = mk or defaults.get("market")
            if mk:
                m.constants["market"] = mk
                scores["market"] = 1.0
        for f in ("zone", "fuel", "asset_id"):
            if f in ds.schema.names and f not in m.columns and m.wide_field != f and defaults.get(f):
                m.constants[f] = defaults[f]
                scores[f] = 0.9
        for f, v in defaults.items():
            if f in ds.schema.names and f not in m.columns and f not in m.constants and f != m.wide_field:
                m.constants[f] = v
        has_time = bool(ts_col or date_col)
        required = [f for f in ds.required if f != "ts_utc" and f != m.wide_field and f != m.value_field]
        missing = [f for f in required if f not in scores]
        if m.value_field:
            scores.setdefault(m.value_field, 0.8)
        req_scores = [scores.get(f, 0.0) for f in required] + ([1.0] if has_time else [0.0])
        # A dataset is only this file if the file carries one of its measured values.
        req_scores.append(max([scores.get(f, 0.0) for f in ds.value_fields]))
        conf = sum(req_scores) / len(req_scores)
        if missing:
            m.reasons = [f"no column or default for required field(s) {', '.join(missing)}"]
            conf = min(conf, 0.6)
        if not any(scores.get(f, 0.0) > 0 for f in ds.value_fields):
            conf = min(conf, 0.3)  # none of the dataset's measured values is in the file: not this dataset
        if not has_time:
            m.reasons.append("no timestamp column found")
        if ambiguous:
            conf -= 0.3
        m.reasons += reasons
        m.confidence = round(max(conf, 0.0), 3)
        scored.append((m.confidence, m))
    hinted = {
        n for n, ds in CANONICAL_DATASETS.items() if any(h in re.split(r"[^a-z]+", context) for h in ds.name_hints)
    }
    if hinted:
        # The file or sheet name says what it is ("generation_by_fuel.json"): other readings lose weight.
        for i, (conf, m) in enumerate(scored):
            if m.dataset not in hinted:
                m.confidence = round(conf * 0.8, 3)
                scored[i] = (m.confidence, m)
    scored.sort(key=lambda s: -s[0])
    best = scored[0][1]
    if len(scored) > 1 and scored[1][0] >= best.confidence - 0.05 and best.confidence >= AUTO_LAND_CONFIDENCE:
        best.reasons.append(f"dataset is ambiguous: {scored[1][1].dataset} scores {scored[1][0]:.2f}")
        best.confidence = round(best.confidence - 0.3, 3)
    return best


def validated_mapping(data: dict[str, Any], columns: list[str]) -> Mapping:
    """An explicit mapping checked against the file's columns (ValueError names what is wrong)."""
    m = Mapping.from_json({**data, "source": "explicit", "confidence": 1.0, "reasons": []})
    ds = CANONICAL_DATASETS[m.dataset]
    unknown = [
        c
        for c in [*m.columns.values(), *m.wide_columns, m.date_column, m.hour_column]
        if c and c not in columns
    ]
    if unknown:
        raise ValueError(f"mapping names columns not in the file: {unknown}; file columns: {columns}")
    bad_fields = [f for f in [*m.columns, *m.constants] if f not in ds.schema.names]
    if bad_fields:
        raise ValueError(f"fields {bad_fields} are not in dataset {m.dataset}: {ds.schema.names}")
    if m.hour_numbering not in ("auto", "clock", "elapsed"):
        raise ValueError(f"hour_numbering must be auto, clock or elapsed, not {m.hour_numbering!r}")
    have = set(m.columns) | set(m.constants) | {m.wide_field, m.value_field}
    if m.date_column:
        have.add("ts_utc")
    missing = [f for f in ds.required if f not in have]
    if missing:
        raise ValueError(
            f"mapping leaves required field(s) {missing} of {m.dataset} without a column or constant"
        )
    return m
