"""Raw chunks -> canonical rows to land + quarantined rows with reasons, under a `Mapping`.

`CanonicalBuilder` is fed the chunks of one file in order and keeps the state that spans chunks:
duplicate keys seen so far (exact, in sorted uint64 runs: bounded memory, no per-row Python), the order
of repeated DST fall-back hours per series, and the data-quality profile. Every raw row ends up either
in the landed table or in the quarantine list — never both, never neither.

Building a chunk has two halves: `parse` needs only the mapping (trimming, numbers, texts, timestamps) and may
run ahead on another thread; `build` then finishes the chunks in file order with the state above.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ingestion.files import parsing
from ingestion.files.canonical import CANONICAL_DATASETS, MARKET_ALIASES, SIDE_ALIASES, TS
from ingestion.files.mapping import Mapping
from ingestion.files.readers import RawChunk

_TS_OFFSET_S = 2_208_988_800  # seconds from 1900-01-01 to the Unix epoch: keys stay non-negative
_MIN_TS = np.datetime64("1950-01-01", "us").astype(np.int64)
_MAX_TS = np.datetime64("2150-01-01", "us").astype(np.int64)
_HOUR_US = 3_600_000_000
# An hour label marking the fall-back day's repeated hour: 2*, 02X, 02DST, 3B, 02:00 DST (see mapping).
_REPEATED_HOUR = r"(?i)^\D{0,12}\d{1,2}(?::00)?[\s_-]*(?:\*|x|b|dst)$"
_NUMERIC = {
    "price",
    "load_mw",
    "generation_mw",
    "temperature_c",
    "wind_speed_ms",
    "irradiance_wm2",
    "quantity_mw",
}


@dataclass
class QuarantineRow:
    row_number: int | None
    sheet: str | None
    raw_text: str | None
    raw_json: str | None
    reason: str


@dataclass
class _Stamps:
    """A chunk's timestamps as parsed, before a repeated fall-back hour's second occurrence per series is moved
    to its later instant (`latest`, where `ambiguous`; `local` holds the wall-clock values)."""

    ts: pa.Array
    source_tz: pa.Array
    reason: pa.Array
    local: pa.Array | None = None
    latest: pa.Array | None = None
    ambiguous: pa.Array | None = None


@dataclass
class ParsedChunk:
    """A chunk after `CanonicalBuilder.parse`: the rows that hold values, their trimmed cells, the records
    (`t`, with `src_idx` their row in `raw`), what every row already fails, and the parsed fields."""

    sheet: str | None
    raw: pa.Table
    rows: np.ndarray  # source row number of each row of `raw`
    t: pa.Table
    src_idx: np.ndarray
    quarantine: list[QuarantineRow]
    cols: dict[str, pa.Array] | None = None
    reason: pa.Array | None = None
    stamps: _Stamps | None = None


# Runs stop merging at this size: merging two big runs needs 3x their memory at once, while probing a
# few more sorted runs with sorted keys costs little.
MAX_RUN_KEYS = 4_000_000


class KeySet:
    """Exact set of uint64 keys as sorted runs merged like a binary counter (O(n log n) total, 8 B/key)."""

    def __init__(self) -> None:
        self.runs: list[np.ndarray] = []

    def seen(self, ordered: np.ndarray) -> np.ndarray:
        """True where a key of the sorted array `ordered` is already in the set."""
        out = np.zeros(len(ordered), dtype=bool)
        for run in self.runs:
            # Only keys within the run's range can be in it. Keys lead with the time, so the chunks of a
            # time-ordered file miss every earlier run without a probe.
            lo = np.searchsorted(ordered, run[0], side="left")
            hi = np.searchsorted(ordered, run[-1], side="right")
            if lo == hi:
                continue
            inside = ordered[lo:hi]
            pos = np.minimum(np.searchsorted(run, inside), len(run) - 1)
            out[lo:hi] |= run[pos] == inside
        return out

    def add(self, ordered: np.ndarray) -> None:
        """Add sorted, distinct keys not yet in the set."""
        run = ordered
        if not len(run):
            return
        while self.runs and len(self.runs[-1]) <= len(run) and len(self.runs[-1]) + len(run) <= MAX_RUN_KEYS:
            # Concatenated sorted runs: the stable sort (timsort) merges them in linear time.
            run = np.sort(np.concatenate([self.runs.pop(), run]), kind="stable")
        self.runs.append(run)


def _repeat(value: Any, n: int, type_: pa.DataType) -> pa.Array:
    return pa.repeat(pa.scalar(value, type_), n)


def _set_reason(reason: pa.Array, mask: pa.Array, message: Callable[[], pa.Array] | str) -> pa.Array:
    """Keep the first reason a row got; give `message` to rows in `mask` that have none yet.

    `message` may be a callable so per-row texts are only built when some row actually fails.
    """
    mask = pc.and_(pc.fill_null(mask, False), pc.is_null(reason))
    if not pc.any(mask).as_py():
        return reason
    text = pa.scalar(message) if isinstance(message, str) else message()
    return pc.if_else(mask, text, reason)


def _quoted(prefix: str, values: pa.Array, suffix: str = "'") -> Callable[[], pa.Array]:
    return lambda: pc.binary_join_element_wise(
        pa.scalar(prefix), pc.fill_null(parsing.as_strings(values), ""), pa.scalar(suffix), ""
    )


class AmbiguousHours(ValueError):
    """A DST day's hours fit both the clock and the elapsed numbering: the upload needs `hour_numbering`."""


class CanonicalBuilder:
    """Turns one file's raw chunks into canonical rows under a mapping, chunk by chunk."""

    def __init__(
        self,
        mapping: Mapping,
        *,
        upload_id: int,
        file_name: str,
        org_id: str,
        batch_id: str,
        ingested_at: datetime,
        interval_minutes: int | None = None,
    ) -> None:
        self.m = mapping
        self.ds = CANONICAL_DATASETS[mapping.dataset]
        self.upload_id, self.file_name, self.org_id, self.batch_id = upload_id, file_name, org_id, batch_id
        self.ingested_at = ingested_at
        self.interval = interval_minutes
        self.keys = KeySet()
        self.series: dict[int, int] = {}
        self.vocab: dict[int, dict[str, int]] = {}
        self.ambiguous_seen: dict[tuple[int, int], int] = {}
        self.held: RawChunk | None = None
        self.rows_read = self.rows_landed = self.rows_quarantined = self.duplicates = 0
        self.nulls: dict[str, int] = {}
        self.ranges: dict[str, list[Any]] = {}
        # Per series id: first and last landed instant and row count (for gaps in the profile).
        self.span_lo = np.zeros(0, np.int64)
        self.span_hi = np.zeros(0, np.int64)
        self.span_n = np.zeros(0, np.int64)

    # --- public --------------------------------------------------------------------------------------
    def fits(self, columns: list[str]) -> bool:
        """Whether a sheet with these columns has every source column the mapping reads."""
        needed = [*self.m.columns.values(), *self.m.wide_columns, self.m.date_column, self.m.hour_column]
        return all(c in columns for c in needed if c)

    @property
    def parses_ahead(self) -> bool:
        """Whether `parse` may run ahead of `build`, on another thread: always, except for files with a date
        and an hour column, whose DST days cut by a chunk's end are held back and built with the next chunk."""
        return not (self.m.hour_column and self.m.date_column)

    def parse(self, chunk: RawChunk) -> ParsedChunk:
        """The part of building a chunk that needs nothing from earlier chunks: empty rows dropped, cells
        trimmed, wide layouts unpivoted, numbers, texts and (without an hour column) timestamps parsed.

        It reads only the mapping and the dataset: when `parses_ahead`, it can run on another thread, in file
        order, while `build` finishes the chunks before it.
        """
        quarantine = [QuarantineRow(n, chunk.sheet, text, None, why) for n, text, why in chunk.malformed]
        raw = chunk.table
        rows = chunk.row_numbers
        if raw.num_rows:
            keep = self._non_empty(raw)
            if not pc.all(keep).as_py():
                raw = raw.filter(keep)
                rows = rows[np.asarray(keep.to_numpy(zero_copy_only=False), dtype=bool)]
        raw = pa.table(
            {
                c: parsing.as_strings(raw.column(c))
                if pa.types.is_string(raw.column(c).type)
                else raw.column(c).combine_chunks()
                for c in raw.column_names
            }
        )
        t, src_idx = self._unpivoted(raw)
        if self.m.layout != "long" and self.m.wide_columns:
            # A wide row whose value cells are all empty yields no record: it is reported, not lost.
            empty = np.setdiff1d(np.arange(raw.num_rows), src_idx)
            why = f"no value in any of the {len(self.m.wide_columns)} {self.m.wide_field} columns"
            for i, rec in zip(empty, raw.take(pa.array(empty)).to_pylist(), strict=True):
                quarantine.append(QuarantineRow(int(rows[i]), chunk.sheet, None, json.dumps(rec, default=str), why))
        parsed = ParsedChunk(chunk.sheet, raw, rows, t, src_idx, quarantine)
        if t.num_rows:
            parsed.cols, parsed.reason = self._field_columns(t)
            parsed.stamps = self._parsed_timestamps(t)
        return parsed

    def build(self, chunk: RawChunk | ParsedChunk) -> tuple[pa.Table, list[QuarantineRow]]:
        """(canonical rows with lineage to land, quarantined rows) of one chunk, raw or already `parse`d.

        Long files with an hour column may have a DST day cut by the chunk's end; its rows are held back
        and built with the next chunk (or by `flush`), so the whole day tells how its hours are numbered.
        """
        if isinstance(chunk, ParsedChunk):
            return self._finish(chunk)
        out: list[tuple[pa.Table, list[QuarantineRow]]] = []
        held, self.held = self.held, None
        if held is not None and held.sheet != chunk.sheet:
            out.append(self._build(held))
        elif held is not None:
            chunk = RawChunk(
                chunk.sheet,
                pa.concat_tables([held.table, chunk.table.cast(held.table.schema)]),
                np.concatenate([held.row_numbers, chunk.row_numbers]),
                held.malformed + chunk.malformed,
            )
        chunk, self.held = self._split_dst_tail(chunk)
        out.append(self._build(chunk))
        return _joined(out)

    def flush(self) -> tuple[pa.Table, list[QuarantineRow]]:
        """Build the rows `build` held back (call once after the last chunk)."""
        held, self.held = self.held, None
        return self._build(held) if held is not None else (self._empty_landed(), [])

    def _split_dst_tail(self, chunk: RawChunk) -> tuple[RawChunk, RawChunk | None]:
        """(rows to build now, rows of the chunk's last day when that day is a DST day of a long hour file)."""
        m, raw = self.m, chunk.table
        if not (m.hour_column and m.date_column and raw.num_rows) or m.date_column not in raw.column_names:
            return chunk, None
        fmt = m.ts_format or "%Y-%m-%d"
        last = _local(parsing.parse_timestamps(raw.column(m.date_column).slice(raw.num_rows - 1).combine_chunks(), fmt))
        if last.null_count:
            return chunk, None
        _, day_hours = parsing.local_midnight_utc(last, m.timezone)
        if day_hours[0].as_py() == 24:  # the usual case: one date parsed per chunk
            return chunk, None
        dates = _local(parsing.parse_timestamps(raw.column(m.date_column).combine_chunks(), fmt))
        same = pc.fill_null(
            pc.equal(pc.floor_temporal(dates, unit="day"), pc.floor_temporal(last, unit="day")[0]), False
        )
        mask = np.asarray(same.to_numpy(zero_copy_only=False), bool)
        now = RawChunk(chunk.sheet, raw.filter(pa.array(~mask)), chunk.row_numbers[~mask], chunk.malformed)
        return now, RawChunk(chunk.sheet, raw.filter(pa.array(mask)), chunk.row_numbers[mask])

    def _build(self, chunk: RawChunk) -> tuple[pa.Table, list[QuarantineRow]]:
        return self._finish(self.parse(chunk))

    def _finish(self, parsed: ParsedChunk) -> tuple[pa.Table, list[QuarantineRow]]:
        """The part of building that follows the file's order: series ids, repeated hours, duplicate keys,
        the profile and the counts."""
        quarantine = list(parsed.quarantine)
        t, raw, rows, src_idx = parsed.t, parsed.raw, parsed.rows, parsed.src_idx
        n = t.num_rows
        landed = self._empty_landed()
        if n:
            assert parsed.cols is not None and parsed.reason is not None
            cols, reason, series = self._canonical_columns(t, dict(parsed.cols), parsed.reason, parsed.stamps)
            ok = pc.is_null(reason).to_numpy(zero_copy_only=False)
            ok_idx = np.flatnonzero(ok)
            dup = self._duplicates(cols, series, ok_idx)
            if dup.any():
                reason_np = np.array(reason.to_pylist(), dtype=object)
                reason_np[ok_idx[dup]] = (
                    "duplicate key " + ", ".join(self.ds.key) + " already seen in this file"
                )
                reason = pa.array(reason_np, pa.string())
                self.duplicates += int(dup.sum())
                ok_idx = ok_idx[~dup]
            landed = self._landed(cols, rows[src_idx], parsed.sheet, ok_idx)
            self._profile(landed, series.take(pa.array(ok_idx)) if len(ok_idx) else pa.array([], pa.int64()))
            bad_idx = np.setdiff1d(np.arange(n), ok_idx, assume_unique=True)
            if len(bad_idx):
                reasons = reason.take(pa.array(bad_idx)).to_pylist()
                raw_rows = raw.take(pa.array(src_idx[bad_idx])).to_pylist()
                for i, why, rec in zip(bad_idx, reasons, raw_rows, strict=True):
                    quarantine.append(
                        QuarantineRow(
                            int(rows[src_idx[i]]), parsed.sheet, None, json.dumps(rec, default=str), why
                        )
                    )
        self.rows_read += landed.num_rows + len(quarantine)
        self.rows_landed += landed.num_rows
        self.rows_quarantined += len(quarantine)
        return landed, quarantine

    def profile(self) -> dict[str, Any]:
        """Data-quality profile of what landed: null rates, ranges, duplicates and time-series gaps."""
        landed = max(self.rows_landed, 1)
        step = (self.interval or 60) * 60_000_000
        codes = {v: k for k, v in self.series.items()}
        present = np.flatnonzero(self.span_n)
        missing = (self.span_hi[present] - self.span_lo[present]) // step + 1 - self.span_n[present]
        missing = np.maximum(missing, 0)
        gaps = int(missing.sum())
        top = np.argsort(-missing, kind="stable")[:10]
        worst = [(int(missing[k]), int(present[k])) for k in top if missing[k] > 0]
        return {
            "rows_read": self.rows_read,
            "rows_landed": self.rows_landed,
            "rows_quarantined": self.rows_quarantined,
            "duplicates": self.duplicates,
            "null_rate": {k: round(v / landed, 6) for k, v in self.nulls.items()},
            "ranges": {k: [str(v[0]), str(v[1])] if k == "ts_utc" else v for k, v in self.ranges.items()},
            "series": len(present),
            "interval_minutes": self.interval,
            "missing_intervals": gaps,
            "series_with_gaps": [
                {"series": self._series_name(codes[s]), "missing_intervals": g} for g, s in worst[:10]
            ],
        }

    def _series_name(self, code: int) -> str:
        key_cols = [k for k in self.ds.key if k != "ts_utc"]
        names = []
        for i in reversed(range(len(key_cols))):
            gid = code % (1 << 21)
            code //= 1 << 21
            reverse = {v: k for k, v in self.vocab.get(i, {}).items()}
            names.append(f"{key_cols[i]}={reverse.get(gid, '?').replace(chr(0), '')}")
        return ", ".join(reversed(names))

    # --- steps ---------------------------------------------------------------------------------------
    def _non_empty(self, raw: pa.Table) -> pa.Array:
        # Byte lengths are free to compute (offsets): a row whose cells are all empty is not a row.
        total = None
        for col in raw.columns:
            col = col.combine_chunks()
            if pa.types.is_string(col.type) or pa.types.is_binary(col.type):
                width = pc.fill_null(pc.binary_length(col), 0)
            else:
                width = pc.cast(col.is_valid(), pa.int32())
            total = width if total is None else pc.add(total, width)
        return pc.greater(total, 0)

    def _unpivoted(self, raw: pa.Table) -> tuple[pa.Table, np.ndarray]:
        idx = np.arange(raw.num_rows, dtype=np.int64)
        if self.m.layout == "long" or not self.m.wide_columns:
            return raw, idx
        base = raw.drop_columns([c for c in self.m.wide_columns if c in raw.column_names])
        parts, idxs = [], []
        for col, label in self.m.wide_columns.items():
            values = raw.column(col).combine_chunks()
            present = pc.invert(parsing.missing_mask(values))  # an empty cell is not a record (e.g. HE25)
            part = (
                base.append_column("__value", values)
                .append_column("__label", _repeat(label, raw.num_rows, pa.string()))
                .filter(present)
            )
            parts.append(part)
            idxs.append(idx[np.asarray(present.to_numpy(zero_copy_only=False), dtype=bool)])
        if not parts:
            return raw, idx
        table = pa.concat_tables([p.cast(parts[0].schema) for p in parts])
        src = np.concatenate(idxs)
        order = np.lexsort((np.repeat(np.arange(len(parts)), [len(i) for i in idxs]), src))
        return table.take(pa.array(order)), src[order]

    def _source(self, t: pa.Table, f: str) -> pa.Array | None:
        if f == self.m.value_field:
            return t.column("__value").combine_chunks()
        if f == self.m.wide_field:
            return t.column("__label").combine_chunks()
        if f in self.m.columns:
            return t.column(self.m.columns[f]).combine_chunks()
        return None

    def _field_columns(self, t: pa.Table) -> tuple[dict[str, pa.Array], pa.Array]:
        """(each field's values but the timestamps and interval, the first reason each row fails them)."""
        n = t.num_rows
        reason = pa.nulls(n, pa.string())
        cols: dict[str, pa.Array] = {}
        for fld in self.ds.schema:
            f = fld.name
            if f in ("ts_utc", "interval_minutes"):
                continue
            src = self._source(t, f)
            if src is None:
                const = self.m.constants.get(f)
                cols[f] = _repeat(const, n, fld.type)
                if const is None and not fld.nullable:
                    reason = _set_reason(
                        reason, pa.array(np.ones(n, bool)), f"no value for required field {f}"
                    )
                continue
            if f in _NUMERIC:
                decimal = self.m.decimal.get(self.m.columns.get(f, ""), "dot")
                if f == self.m.value_field and self.m.wide_columns:
                    decimal = self.m.decimal.get(next(iter(self.m.wide_columns)), "dot")
                values = parsing.parse_numbers(src, decimal)
                if values.null_count == 0:  # every cell parsed: nothing missing, nothing to explain
                    cols[f] = values
                    continue
                absent = parsing.missing_mask(src) if pa.types.is_string(src.type) else pc.is_null(src)
                reason = _set_reason(
                    reason,
                    pc.and_(pc.is_null(values), pc.invert(absent)),
                    _quoted(f"unparseable number in {f}: '", src),
                )
                if not fld.nullable:
                    reason = _set_reason(reason, absent, f"missing {f}")
                cols[f] = values
                continue
            text = parsing.as_strings(src)
            absent = parsing.missing_mask(text)
            text = pc.if_else(absent, pa.scalar(None, pa.string()), text)
            if f == "market":
                text = self._aliased(text, MARKET_ALIASES)
                reason = _set_reason(
                    reason,
                    pc.and_(pc.is_null(text), pc.invert(absent)),
                    _quoted("unknown market '", src, "' (expected DA or RT)"),
                )
            elif f == "side":
                text = self._aliased(text, SIDE_ALIASES)
                reason = _set_reason(
                    reason,
                    pc.and_(pc.is_null(text), pc.invert(absent)),
                    _quoted("unknown side '", src, "' (expected buy or sell)"),
                )
            if not fld.nullable:
                reason = _set_reason(reason, absent, f"missing {f}")
            cols[f] = text
        return cols, reason

    def _canonical_columns(
        self, t: pa.Table, cols: dict[str, pa.Array], reason: pa.Array, stamps: _Stamps | None
    ) -> tuple[dict[str, pa.Array], pa.Array, pa.Array]:
        """(every field's values, each row's first reason, series ids): `cols` and `reason` from
        `_field_columns` completed with what depends on the file so far (series ids, repeated hours by order,
        the interval), then the value rules."""
        n = t.num_rows
        series = self._series_ids(cols)
        ts, source_tz, reason = self._timestamps(t, series, reason, stamps)
        reason = _set_reason(reason, plausible_timestamps_reason(ts), "timestamp outside 1950..2150")
        cols["ts_utc"] = ts
        cols["source_tz"] = source_tz
        if "interval_minutes" in self.ds.schema.names:
            if self.interval is None:
                self.interval = int(
                    self.m.constants.get("interval_minutes") or self._inferred_interval(ts, series)
                )
            cols["interval_minutes"] = pa.array(np.full(n, self.interval, np.int32))
        for rule in self.ds.rules:
            v = cols[rule.column]
            bad = pc.or_(pc.less(v, rule.min), pc.greater(v, rule.max))
            reason = _set_reason(reason, bad, rule.reason)
        return cols, reason, series

    @staticmethod
    def _aliased(text: pa.Array, aliases: dict[str, str]) -> pa.Array:
        # Spellings are few (DA, da, Day-Ahead...): each distinct one is lower-cased and looked up once.
        distinct = pc.dictionary_encode(text)
        idx = pc.index_in(pc.utf8_lower(distinct.dictionary), value_set=pa.array(list(aliases)))
        return pc.take(pc.take(pa.array(list(aliases.values())), idx), distinct.indices)

    def _series_ids(self, cols: dict[str, pa.Array]) -> pa.Array:
        # Each key column is dictionary-encoded (hashing, no string building); the small per-chunk
        # dictionaries map to global ids, and the id tuples to one series id.
        parts = [cols[k] for k in self.ds.key if k != "ts_utc"]
        codes = np.zeros(len(parts[0]), np.int64)
        for i, part in enumerate(parts):
            enc = pc.dictionary_encode(pc.fill_null(part, "\x00") if part.null_count else part)
            vocab = self.vocab.setdefault(i, {})
            gids = np.array([vocab.setdefault(v, len(vocab)) for v in enc.dictionary.to_pylist()], np.int64)
            codes = codes * (1 << 21) + gids[enc.indices.to_numpy(zero_copy_only=False)]
        enc = pc.dictionary_encode(pa.array(codes))  # hashing: O(n), unlike np.unique's sort
        ids = np.array(
            [self.series.setdefault(u, len(self.series)) for u in enc.dictionary.to_pylist()], np.int64
        )
        return pa.array(ids[enc.indices.to_numpy(zero_copy_only=False)])

    def _parsed_timestamps(self, t: pa.Table) -> _Stamps | None:
        """The timestamps of a chunk with a timestamp column, before repeated hours are told apart; None for
        date and hour-number layouts, whose instants depend on the series (`_hour_timestamps`)."""
        m = self.m
        tz = m.timezone
        n = t.num_rows
        if m.date_column and (m.hour_column or m.wide_field == "hour"):
            return None
        src = t.column(m.columns["ts_utc"]).combine_chunks()
        fmt = m.ts_format
        if fmt is None:
            fmt = parsing.detect_timestamp_format(
                parsing.as_strings(src).to_pylist()[:500], allow_numeric=True
            )[0]
            fmt = m.ts_format = fmt or "%Y-%m-%d %H:%M:%S"
        parsed = parsing.parse_timestamps(src, fmt)
        reason = _set_reason(pa.nulls(n, pa.string()), pc.is_null(parsed), _quoted("unparseable timestamp '", src))
        if parsed.type.tz is not None:
            src_tz = (
                parsing.offsets_in_text(src)
                if pa.types.is_string(src.type)
                else pa.array([parsed.type.tz] * n, pa.string())
            )
            return _Stamps(parsed.cast(TS), pc.fill_null(src_tz, tz), reason)
        earliest, latest, nonexistent, ambiguous = parsing.localize(parsed, tz)
        reason = _set_reason(
            reason,
            nonexistent,
            _quoted("nonexistent local time '", src, f"' in {tz} (skipped by the DST change)"),
        )
        return _Stamps(earliest, _repeat(tz, n, pa.string()), reason, parsed, latest, ambiguous)

    def _timestamps(
        self, t: pa.Table, series: pa.Array, field_reason: pa.Array, stamps: _Stamps | None
    ) -> tuple[pa.Array, pa.Array, pa.Array]:
        """(UTC instants, source time zones, reasons) of a chunk's rows.

        A timestamp problem explains a row best (footers, notes): it outranks the other fields' reasons.
        """
        n = t.num_rows
        if stamps is None:
            ts, reason = self._hour_timestamps(t, series)
            return ts, _repeat(self.m.timezone, n, pa.string()), pc.coalesce(reason, field_reason)
        ts, reason = stamps.ts, stamps.reason
        if stamps.ambiguous is not None:
            valid = pc.is_null(pc.coalesce(reason, field_reason))
            amb = np.flatnonzero(pc.and_(stamps.ambiguous, valid).to_numpy(zero_copy_only=False))
            if len(amb):
                # A repeated fall-back hour is resolved by order in the file: first occurrence per series is
                # the earlier (daylight-time) instant, the second the later one.
                assert stamps.local is not None and stamps.latest is not None
                sids = series.to_numpy()[amb]
                local = stamps.local.cast(pa.int64()).to_numpy()[amb]
                late = np.zeros(len(amb), bool)
                for j, key in enumerate(zip(sids.tolist(), local.tolist(), strict=True)):
                    seen = self.ambiguous_seen.get(key, 0)
                    late[j] = seen >= 1
                    self.ambiguous_seen[key] = seen + 1
                use_late = np.zeros(n, bool)
                use_late[amb[late]] = True
                ts = pc.if_else(pa.array(use_late), stamps.latest, ts)
        return ts.cast(TS), stamps.source_tz, pc.coalesce(reason, field_reason)

    def _hour_timestamps(self, t: pa.Table, series: pa.Array) -> tuple[pa.Array, pa.Array]:
        """(UTC instants, reasons) of date + hour-number records (wide HE01..HE24 layouts, hour columns).

        On a normal day hour h is simply h hours after local midnight. DST days have two conventions: clock
        hours (HE01..HE24 by the wall clock; the hour the clocks skip has no value; the repeated hour comes
        in a marked column such as HE02*/HE02X/HE02DST or Hour 3B) and elapsed hours (1..23 or 1..25 since
        local midnight). The mapping's `hour_numbering` picks one; `auto` reads it from the file (a marked
        column means clock, an HE25 column elapsed) or, per series and day, from which hour is empty: the
        skipped clock hour (clock) or HE24 (elapsed). A value neither reading can place is quarantined.
        """
        m = self.m
        tz, conv = m.timezone, m.hour_convention
        n = t.num_rows
        reason = pa.nulls(n, pa.string())
        dates_src = t.column(m.date_column).combine_chunks()
        dates = _local(parsing.parse_timestamps(dates_src, m.ts_format or "%Y-%m-%d"))
        reason = _set_reason(reason, pc.is_null(dates), _quoted("unparseable date '", dates_src))
        hour_src = t.column("__label" if m.wide_field == "hour" else m.hour_column).combine_chunks()
        hours = parsing.parse_numbers(hour_src)
        reason = _set_reason(
            reason,
            pc.or_kleene(pc.is_null(hours), pc.not_equal(pc.floor(hours), hours)),
            _quoted("unparseable hour '", hour_src),
        )
        repeated = np.asarray(
            pc.fill_null(pc.match_substring_regex(parsing.as_strings(hour_src), _REPEATED_HOUR), False)
            .to_numpy(zero_copy_only=False),
            bool,
        )
        midnight, day_hours = parsing.local_midnight_utc(dates, tz)
        valid = np.asarray(pc.is_null(reason).to_numpy(zero_copy_only=False), bool)
        h = np.nan_to_num(hours.to_numpy(zero_copy_only=False).astype(float), nan=-1.0).astype(np.int64)
        slot = h - 1 if conv == "ending" else h  # hours since local midnight by the elapsed reading
        dh = np.nan_to_num(day_hours.to_numpy(zero_copy_only=False).astype(float), nan=24.0).astype(np.int64)
        mid = pc.fill_null(midnight.cast(pa.int64()), 0).to_numpy(zero_copy_only=False)
        ts = mid + slot * _HOUR_US
        elapsed_ok = (slot >= 0) & (slot < dh)
        why = np.full(n, None, object)
        # Only on DST days (or for a marked repeated hour) do the clock and elapsed readings differ.
        special = valid & ((dh != 24) | repeated)
        plain_bad = np.flatnonzero(valid & ~special & ~elapsed_ok)
        for i in plain_bad:
            why[i] = self._hour_message(i, "elapsed", hour_src, dates, dh, tz)
        idx = np.flatnonzero(special)
        if len(idx):
            self._place_dst_hours(idx, slot, repeated, dh, ts, why, elapsed_ok, dates, series, hour_src)
        reason = pc.coalesce(reason, pa.array(why.tolist(), pa.string()))
        return pa.array(ts, pa.int64()).cast(TS), reason

    def _place_dst_hours(
        self,
        idx: np.ndarray,
        slot: np.ndarray,
        repeated: np.ndarray,
        dh: np.ndarray,
        ts: np.ndarray,
        why: np.ndarray,
        elapsed_ok: np.ndarray,
        dates: pa.Array,
        series: pa.Array,
        hour_src: pa.Array,
    ) -> None:
        """Place the records `idx` (DST days, marked hours) into `ts`, or give them a reason in `why`."""
        m = self.m
        tz = m.timezone
        s, rep, days = slot[idx], repeated[idx], dh[idx]
        day_us = pc.floor_temporal(dates, unit="day").cast(pa.int64()).to_numpy(zero_copy_only=False)[idx]
        on_clock = (s >= 0) & (s < 24)
        naive = pa.array(day_us + np.clip(s, 0, 23) * _HOUR_US, pa.int64()).cast(pa.timestamp("us"))
        earliest, latest, nonexistent, ambiguous = (
            np.asarray(a.cast(pa.int64()).to_numpy(zero_copy_only=False)) for a in parsing.localize(naive, tz)
        )
        skipped = nonexistent.astype(bool) & on_clock
        twice = ambiguous.astype(bool) & on_clock
        clock_ts = np.where(rep, latest, earliest)
        # Evidence per series and local day (wide layouts: one source row), then per file.
        sid = series.to_numpy(zero_copy_only=False)[idx].astype(np.int64)
        _, group = np.unique(sid * 1_000_000 + day_us // (24 * _HOUR_US) + 200_000, return_inverse=True)

        def in_group(mask: np.ndarray) -> np.ndarray:
            return np.bincount(group, weights=mask.astype(float))[group] > 0

        labels = list(m.wide_columns.values()) if m.wide_field == "hour" else []
        file_clock = any(label.endswith("*") for label in labels)
        last_slot = 24 if m.hour_convention == "ending" else 23
        file_elapsed = any(int(label.rstrip("*")) > last_slot for label in labels)
        if m.hour_numbering in ("clock", "elapsed"):
            clock = np.full(len(idx), m.hour_numbering == "clock")
            unclear = np.zeros(len(idx), bool)
        else:
            clock = in_group(rep) | file_clock
            elapsed = ~clock & (in_group(s >= 24) | file_elapsed)
            clock |= ~elapsed & (days > 24)  # 24 values on a 25-hour day: only the clock reading fits them
            open_ = ~clock & ~elapsed & (days < 24)
            has_skipped, has_last = in_group(skipped), in_group(s == 23)
            clock |= open_ & ~has_skipped & has_last
            unclear = open_ & (has_skipped == has_last)
        # An unmarked repeated hour listed twice (long files) is resolved by order, like timestamps.
        for j in np.flatnonzero(clock & twice & ~rep):
            key = (int(sid[j]), int(day_us[j] + s[j] * _HOUR_US))
            seen = self.ambiguous_seen.get(key, 0)
            self.ambiguous_seen[key] = seen + 1
            if seen:
                clock_ts[j] = latest[j]
        clock_ok = on_clock & ~skipped & (twice | ~rep)
        e_ok = elapsed_ok[idx] & ~rep
        agree = clock_ok & e_ok & (clock_ts == ts[idx])
        for j, i in enumerate(idx):
            if unclear[j]:
                if agree[j]:
                    continue
                why[i] = self._hour_message(i, "unclear", hour_src, dates, dh, tz)
                if m.source != "explicit":
                    # Guessing would shift every later hour of the day: the upload waits for a mapping.
                    raise AmbiguousHours(why[i])
            elif clock[j]:
                if clock_ok[j]:
                    ts[i] = clock_ts[j]
                    continue
                kind = "no_clock_hour" if not on_clock[j] else "skipped" if skipped[j] else "not_repeated"
                why[i] = self._hour_message(i, kind, hour_src, dates, dh, tz)
            elif not e_ok[j]:
                why[i] = self._hour_message(i, "marked" if rep[j] else "elapsed", hour_src, dates, dh, tz)

    def _hour_message(
        self, i: int, kind: str, hour_src: pa.Array, dates: pa.Array, dh: np.ndarray, tz: str
    ) -> str:
        m = self.m
        label = str(hour_src[i].as_py()).strip()
        number = label.rstrip("*")
        if m.wide_field == "hour":
            column = next((c for c, lab in m.wide_columns.items() if lab == label), label)
            hour = f"hour {m.hour_convention} {number} (column {column})"
        else:
            hour = f"hour {m.hour_convention} {label}"
        day = dates[i].as_py().date().isoformat()
        length = f"{int(dh[i])}-hour day in {tz}"
        if kind == "elapsed":
            return f"hour {m.hour_convention} {number} does not exist on {day} ({length})"
        if kind == "skipped":
            return f"{hour} does not exist on {day}: the clocks skip that hour ({length})"
        if kind == "not_repeated":
            return f"{hour} is marked as the repeated hour, but {day} repeats no hour ({length})"
        if kind == "marked":
            return f"{hour} is marked as the repeated hour, which elapsed hour numbering does not use"
        if kind == "no_clock_hour":
            return f"{hour} is not a wall-clock hour on {day} (the file marks the repeated hour separately)"
        return (
            f"cannot place {hour} on {day} ({length}): the day fills both the hour the clocks skip and "
            "the last hour, or neither, so clock and elapsed hour numbering disagree; "
            "give hour_numbering (clock or elapsed) in an explicit mapping"
        )

    def _inferred_interval(self, ts: pa.Array, series: pa.Array) -> int:
        tab = (
            pa.table({"s": series, "t": ts.cast(pa.int64())})
            .drop_null()
            .sort_by([("s", "ascending"), ("t", "ascending")])
        )
        s, v = tab.column("s").to_numpy(), tab.column("t").to_numpy()
        d = np.diff(v)[(np.diff(s) == 0)]
        d = d[d > 0]
        if not len(d):
            return 60
        values, counts = np.unique(d, return_counts=True)  # the usual step: gaps do not change it
        return max(1, int(values[np.argmax(counts)] // 60_000_000))

    def _duplicates(self, cols: dict[str, pa.Array], series: pa.Array, ok_idx: np.ndarray) -> np.ndarray:
        """True for rows (of ok_idx) whose key appeared earlier in the file (the first occurrence lands)."""
        sid = series.to_numpy()[ok_idx].astype(np.uint64)
        if "ts_utc" in self.ds.key:
            secs = cols["ts_utc"].cast(pa.int64()).to_numpy(zero_copy_only=False)[ok_idx] // 1_000_000
            # Seconds since 1900 in the high 36 bits (to year 4077), the series (< 2**28 per file) in the low 28.
            keys = ((secs + _TS_OFFSET_S).astype(np.uint64) << np.uint64(28)) | sid
        else:
            keys = sid
        ordered = np.sort(keys)
        if not (ordered[1:] == ordered[:-1]).any():
            # Usual case, no repeats inside the chunk: the sorted keys probe the earlier chunks directly.
            seen = self.keys.seen(ordered)
            if seen.any():
                dup = np.isin(keys, ordered[seen])
                self.keys.add(ordered[~seen])
                return dup
            self.keys.add(ordered)
            return np.zeros(len(keys), bool)
        order = np.argsort(keys, kind="stable")  # stable: of equal keys, the earliest row comes first
        ordered = keys[order]
        dup_sorted = np.zeros(len(keys), bool)
        dup_sorted[1:] = ordered[1:] == ordered[:-1]
        dup_sorted |= self.keys.seen(ordered)
        self.keys.add(ordered[~dup_sorted])
        dup = np.empty(len(keys), bool)
        dup[order] = dup_sorted
        return dup

    def _empty_landed(self) -> pa.Table:
        return self.ds.bronze_schema.empty_table()

    def _landed(
        self, cols: dict[str, pa.Array], rows: np.ndarray, sheet: str | None, ok_idx: np.ndarray
    ) -> pa.Table:
        k = len(ok_idx)
        every = k == len(rows)

        def kept(arr: pa.Array) -> pa.Array:
            return arr if every else arr.take(pa.array(ok_idx))

        arrays = [kept(cols[fld.name]).cast(fld.type) for fld in self.ds.schema]
        arrays += [
            kept(cols["source_tz"]),
            _repeat(self.upload_id, k, pa.int64()),
            _repeat(self.file_name, k, pa.string()),
            pa.array(rows if every else rows[ok_idx]),
            _repeat(sheet, k, pa.string()),
            _repeat(self.org_id, k, pa.string()),
            _repeat(self.ingested_at, k, TS),
            _repeat(self.batch_id, k, pa.string()),
        ]
        return pa.Table.from_arrays(arrays, schema=self.ds.bronze_schema)

    def _profile(self, landed: pa.Table, series: pa.Array) -> None:
        if not landed.num_rows:
            return
        for fld in self.ds.schema:
            col = landed.column(fld.name)
            self.nulls[fld.name] = self.nulls.get(fld.name, 0) + col.null_count
            if fld.name in _NUMERIC or fld.name == "ts_utc":
                mm = pc.min_max(col).as_py()
                if mm["min"] is None:
                    continue
                cur = self.ranges.get(fld.name)
                self.ranges[fld.name] = (
                    [mm["min"], mm["max"]]
                    if cur is None
                    else [min(cur[0], mm["min"]), max(cur[1], mm["max"])]
                )
        if "ts_utc" not in self.ds.key:
            return
        agg = (
            pa.table({"s": series, "t": landed.column("ts_utc").cast(pa.int64())})
            .group_by("s")
            .aggregate([("t", "min"), ("t", "max"), ("t", "count")])
        )
        ids = agg.column("s").to_numpy()
        if len(ids) and ids.max() >= len(self.span_lo):
            grow = max(int(ids.max()) + 1, 2 * len(self.span_lo)) - len(self.span_lo)
            self.span_lo = np.concatenate([self.span_lo, np.full(grow, np.iinfo(np.int64).max)])
            self.span_hi = np.concatenate([self.span_hi, np.full(grow, np.iinfo(np.int64).min)])
            self.span_n = np.concatenate([self.span_n, np.zeros(grow, np.int64)])
        # group_by yields each series once per chunk, so plain fancy-indexed updates are exact.
        self.span_lo[ids] = np.minimum(self.span_lo[ids], agg.column("t_min").to_numpy())
        self.span_hi[ids] = np.maximum(self.span_hi[ids], agg.column("t_max").to_numpy())
        self.span_n[ids] += agg.column("t_count").to_numpy()


def _local(ts: pa.Array) -> pa.Array:
    """Wall-clock values of timestamps (aware ones are shown in their zone)."""
    return pc.local_timestamp(ts) if ts.type.tz is not None else ts


def _joined(parts: list[tuple[pa.Table, list[QuarantineRow]]]) -> tuple[pa.Table, list[QuarantineRow]]:
    if len(parts) == 1:
        return parts[0]
    return pa.concat_tables([t for t, _ in parts]), [q for _, qs in parts for q in qs]


def plausible_timestamps_reason(ts: pa.Array) -> pa.Array:
    """Rows whose UTC time is outside 1950..2150 (unit mistakes such as seconds read as days)."""
    v = ts.cast(pa.int64())
    return pc.or_(pc.less(v, int(_MIN_TS)), pc.greater(v, int(_MAX_TS)))
