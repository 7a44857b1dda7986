"""The current ClickHouse engine in-process (chdb, from PyPI) behind the part of clickhouse-driver's `Client`
that `ingestion.bi` uses, so the same DDL, replication and analytics code runs on it unchanged.

- `execute(query, params)`: parameters are bound by clickhouse-driver's own client-side escaping, exactly
  as the driver does against a server (`%(name)s`), and the statement runs in a chdb session;
- `execute("INSERT INTO t (cols) VALUES", rows_or_columns, columnar=...)`: the rows become a VALUES list
  escaped the same way (the driver sends native blocks; the values are the same);
- results come back as the driver returns them: a list of tuples (and the column names and types with
  `with_column_types=True`), `DateTime('UTC')` as an aware datetime, `DateTime` as a naive one, `Date` as
  a date, 64-bit integers as int, NULL as None.

Only the types the BI registry and its queries produce are converted (`_convert`): a new one fails loudly
instead of coming back as text.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Sequence
from typing import Any

import pytz
from chdb import session as chdb_session
from clickhouse_driver.util.escape import escape_param, escape_params

_INSERT_VALUES = re.compile(r"^\s*INSERT\s+INTO\s+.+\s+VALUES\s*$", re.IGNORECASE | re.DOTALL)
_FORMAT = "JSONCompactEachRowWithNamesAndTypes"  # names, types, then one array per row
_SELECTS = re.compile(r"^\s*(SELECT|WITH|SHOW|DESCRIBE|EXISTS)\b", re.IGNORECASE)


class _ServerInfo:
    """What the driver's escaping needs of a server: its timezone (chdb's session runs in UTC)."""

    @staticmethod
    def get_timezone() -> str:
        return "UTC"


class _Context:
    server_info = _ServerInfo()


def open_session(path: str) -> chdb_session.Session:
    """A chdb session storing its databases under `path`, in UTC, with JSON output that keeps every value
    exact (64-bit integers quoted, nan and inf as strings)."""
    session = chdb_session.Session(path)
    session.query("SET session_timezone = 'UTC'")
    session.query("SET output_format_json_quote_64bit_integers = 1")
    session.query("SET output_format_json_quote_denormals = 1")
    return session


class ChdbClient:
    """A chdb session with `database` as its current database, used like a clickhouse-driver `Client` (one
    client at a time per session: `USE` is the session's)."""

    def __init__(self, session: chdb_session.Session, database: str) -> None:
        self.session = session
        self.session.query(f"CREATE DATABASE IF NOT EXISTS {database}")
        self.session.query(f"USE {database}")
        self.database = database

    def version(self) -> str:
        return self.execute("SELECT version()")[0][0]

    def execute(
        self,
        query: str,
        params: Any = None,
        *,
        with_column_types: bool = False,
        columnar: bool = False,
    ) -> Any:
        if _INSERT_VALUES.match(query):
            return self._insert(query, params or [], columnar)
        if params:
            query = query % escape_params(params, _Context())
        if not _SELECTS.match(query):
            self.session.query(query)
            return []
        names, types, *data = (json.loads(line) for line in self.session.query(query, _FORMAT).bytes().splitlines())
        rows = [tuple(_convert(v, t) for v, t in zip(row, types, strict=True)) for row in data]
        if columnar:
            rows = [tuple(column) for column in zip(*rows, strict=True)] if rows else [() for _ in names]
        return (rows, list(zip(names, types, strict=True))) if with_column_types else rows

    def _insert(self, query: str, data: Sequence[Sequence[Any]], columnar: bool) -> int:
        rows = list(zip(*data, strict=True)) if columnar else [tuple(row) for row in data]
        if not rows:
            return 0
        values = ",".join("(" + ",".join(str(escape_param(v, _Context())) for v in row) + ")" for row in rows)
        self.session.query(f"{query} {values}")
        return len(rows)

    def drop(self) -> None:
        self.session.query(f"DROP DATABASE IF EXISTS {self.database}")


def _convert(value: Any, ch_type: str) -> Any:
    if value is None:
        return None
    if ch_type.startswith("Nullable("):
        return _convert(value, ch_type[len("Nullable(") : -1])
    if ch_type.startswith("LowCardinality("):
        return _convert(value, ch_type[len("LowCardinality(") : -1])
    if ch_type.startswith("Array("):
        return [_convert(v, ch_type[len("Array(") : -1]) for v in value]
    if ch_type.startswith("Tuple("):
        raise TypeError(f"no conversion for {ch_type}")
    if ch_type.startswith("DateTime64"):
        raise TypeError(f"no conversion for {ch_type}")
    if ch_type.startswith("DateTime"):
        naive = dt.datetime.strptime(value, "%Y-%m-%d %H:%M:%S")
        zone = re.fullmatch(r"DateTime\('([^']+)'\)", ch_type)
        return pytz.timezone(zone.group(1)).localize(naive) if zone else naive
    if ch_type in ("Date", "Date32"):
        return dt.date.fromisoformat(value)
    if re.fullmatch(r"U?Int(8|16|32|64|128|256)", ch_type):
        return int(value)
    if ch_type in ("Float32", "Float64"):
        return float(value)
    if ch_type == "String" or ch_type.startswith("FixedString"):
        return value
    if ch_type in ("UInt8", "Bool"):
        return value
    raise TypeError(f"no conversion for {ch_type}")
