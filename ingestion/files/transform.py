"""Raw chunks -> canonical rows to land + quarantined rows with reasons, under a `Mapping`.

`CanonicalBuilder` is fed the chunks of one file in order and keeps the state that spans chunks:
duplicate keys seen so far (exact, in sorted uint64 runs: bounded memory, no per-row Python), the order
of repeated DST fall-back hours per series, and the data-quality profile. Every raw row ends up either
in the landed table or in the quarantine list — never both, never neither.
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
from ingestion.files.canonical import DATASETS, MARKET_ALIASES, SIDE_ALIASES, TS
from ingestion.files.mapping import Mapping
from ingestion.files.readers import RawChunk

_TS_OFFSET_S = 2_208_988_800  # seconds from 1900-01-01 to the Unix epoch: keys stay non-negative
_MIN_TS = np.datetime64("1950-01-01", "us").astype(np.int64)
_MAX_TS = np.datetime64("2150-01-01", "us").astype(np.int64)
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
            pos = np.minimum(np.searchsorted(run, ordered), len(run) - 1)
            out |= run[pos] == ordered
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
        self.ds = DATASETS[mapping.dataset]
        self.upload_id, self.file_name, self.org_id, self.batch_id = upload_id, file_name, org_id, batch_id
        self.ingested_at = ingested_at
        self.interval = interval_minutes
        self.keys = KeySet()
        self.series: dict[int, int] = {}
        self.vocab: dict[int, dict[str, int]] = {}
        self.ambiguous_seen: dict[tuple[int, int], int] = {}
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

    def build(self, chunk: RawChunk) -> tuple[pa.Table, list[QuarantineRow]]:
        """(canonical rows with lineage to land, quarantined rows) of one chunk."""
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
        n = t.num_rows
        landed = self._empty_landed()
        if n:
            cols, reason, series = self._canonical_columns(t)
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
            landed = self._landed(cols, rows[src_idx], chunk.sheet, ok_idx)
            self._profile(landed, series.take(pa.array(ok_idx)) if len(ok_idx) else pa.array([], pa.int64()))
            bad_idx = np.setdiff1d(np.arange(n), ok_idx, assume_unique=True)
            if len(bad_idx):
                reasons = reason.take(pa.array(bad_idx)).to_pylist()
                raw_rows = raw.take(pa.array(src_idx[bad_idx])).to_pylist()
                for i, why, rec in zip(bad_idx, reasons, raw_rows, strict=True):
                    quarantine.append(
                        QuarantineRow(
                            int(rows[src_idx[i]]), chunk.sheet, None, json.dumps(rec, default=str), why
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

    def _canonical_columns(self, t: pa.Table) -> tuple[dict[str, pa.Array], pa.Array, pa.Array]:
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
        series = self._series_ids(cols)
        ts, source_tz, reason = self._timestamps(t, series, reason)
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
        keys = pa.array(list(aliases))
        lowered = pc.utf8_lower(text)
        idx = pc.index_in(lowered, value_set=keys)
        return pc.take(pa.array(list(aliases.values())), idx)

    def _series_ids(self, cols: dict[str, pa.Array]) -> pa.Array:
        # Each key column is dictionary-encoded (hashing, no string building); the small per-chunk
        # dictionaries map to global ids, and the id tuples to one series id.
        parts = [cols[k] for k in self.ds.key if k != "ts_utc"]
        codes = np.zeros(len(parts[0]), np.int64)
        for i, part in enumerate(parts):
            enc = pc.dictionary_encode(pc.fill_null(part, "\x00"))
            vocab = self.vocab.setdefault(i, {})
            gids = np.array([vocab.setdefault(v, len(vocab)) for v in enc.dictionary.to_pylist()], np.int64)
            codes = codes * (1 << 21) + gids[enc.indices.to_numpy(zero_copy_only=False)]
        enc = pc.dictionary_encode(pa.array(codes))  # hashing: O(n), unlike np.unique's sort
        ids = np.array(
            [self.series.setdefault(u, len(self.series)) for u in enc.dictionary.to_pylist()], np.int64
        )
        return pa.array(ids[enc.indices.to_numpy(zero_copy_only=False)])

    def _timestamps(
        self, t: pa.Table, series: pa.Array, reason: pa.Array
    ) -> tuple[pa.Array, pa.Array, pa.Array]:
        m = self.m
        tz = m.timezone
        n = t.num_rows
        # A timestamp problem explains a row best (footers, notes): it outranks the other fields' reasons.
        field_reason, reason = reason, pa.nulls(n, pa.string())
        if m.date_column and (m.hour_column or m.wide_field == "hour"):
            dates_src = t.column(m.date_column).combine_chunks()
            fmt = m.ts_format or "%Y-%m-%d"
            dates = parsing.parse_timestamps(dates_src, fmt)
            if dates.type.tz is not None:
                dates = pc.local_timestamp(dates)
            reason = _set_reason(reason, pc.is_null(dates), _quoted("unparseable date '", dates_src))
            hour_src = t.column("__label" if m.wide_field == "hour" else m.hour_column).combine_chunks()
            hours = parsing.parse_numbers(hour_src)
            reason = _set_reason(reason, pc.is_null(hours), _quoted("unparseable hour '", hour_src))
            midnight, day_hours = parsing.local_midnight_utc(dates, tz)
            elapsed = pc.subtract(hours, 1) if m.hour_convention == "ending" else hours
            outside = pc.or_(pc.less(elapsed, 0), pc.greater_equal(elapsed, pc.cast(day_hours, pa.float64())))

            def msg() -> pa.Array:
                return pc.binary_join_element_wise(
                    pa.scalar(f"hour {m.hour_convention} "),
                    pc.cast(pc.cast(hours, pa.int64()), pa.string()),
                    pa.scalar(" does not exist on "),
                    pc.cast(pc.cast(dates, pa.date32()), pa.string()),
                    pa.scalar(" ("),
                    pc.cast(day_hours, pa.string()),
                    pa.scalar(f"-hour day in {tz})"),
                    "",
                )

            reason = _set_reason(reason, outside, msg)
            micros = pc.multiply(pc.cast(pc.fill_null(elapsed, 0), pa.int64()), 3_600_000_000)
            ts = pc.cast(pc.add(pc.cast(midnight, pa.int64()), micros), TS)
            return ts, _repeat(tz, n, pa.string()), pc.coalesce(reason, field_reason)
        src = t.column(m.columns["ts_utc"]).combine_chunks()
        fmt = m.ts_format
        if fmt is None:
            fmt = parsing.detect_timestamp_format(
                parsing.as_strings(src).to_pylist()[:500], allow_numeric=True
            )[0]
            fmt = m.ts_format = fmt or "%Y-%m-%d %H:%M:%S"
        parsed = parsing.parse_timestamps(src, fmt)
        reason = _set_reason(reason, pc.is_null(parsed), _quoted("unparseable timestamp '", src))
        if parsed.type.tz is not None:
            ts = parsed.cast(TS)
            src_tz = (
                parsing.offsets_in_text(src)
                if pa.types.is_string(src.type)
                else pa.array([parsed.type.tz] * n, pa.string())
            )
            return ts, pc.fill_null(src_tz, tz), pc.coalesce(reason, field_reason)
        earliest, latest, nonexistent, ambiguous = parsing.localize(parsed, tz)
        reason = _set_reason(
            reason,
            nonexistent,
            _quoted("nonexistent local time '", src, f"' in {tz} (skipped by the DST change)"),
        )
        ts = earliest
        valid = pc.is_null(pc.coalesce(reason, field_reason))
        amb = np.flatnonzero(pc.and_(ambiguous, valid).to_numpy(zero_copy_only=False))
        if len(amb):
            # A repeated fall-back hour is resolved by order in the file: first occurrence per series is
            # the earlier (daylight-time) instant, the second the later one.
            sids = series.to_numpy()[amb]
            local = parsed.cast(pa.int64()).to_numpy()[amb]
            late = np.zeros(len(amb), bool)
            for j, key in enumerate(zip(sids.tolist(), local.tolist(), strict=True)):
                seen = self.ambiguous_seen.get(key, 0)
                late[j] = seen >= 1
                self.ambiguous_seen[key] = seen + 1
            use_late = np.zeros(n, bool)
            use_late[amb[late]] = True
            ts = pc.if_else(pa.array(use_late), latest, earliest)
        return ts.cast(TS), _repeat(tz, n, pa.string()), pc.coalesce(reason, field_reason)

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
            keys = (sid << np.uint64(36)) | (secs + _TS_OFFSET_S).astype(np.uint64)
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


def plausible_timestamps_reason(ts: pa.Array) -> pa.Array:
    """Rows whose UTC time is outside 1950..2150 (unit mistakes such as seconds read as days)."""
    v = ts.cast(pa.int64())
    return pc.or_(pc.less(v, int(_MIN_TS)), pc.greater(v, int(_MAX_TS)))
