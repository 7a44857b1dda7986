"""One CDC-style committer process for the concurrency test: `python -m tests.scale.committer`.

It owns Kafka partition `--partition` and appends `--commits` batches of `--rows` bid events to bronze
`cdc__bids` through the CDC consumer's own writer (`BronzeTables.append`: rows and the partition's offset in
one Delta commit), on the lake named by `OPTIBID_LAKE_URI` / `OPTIBID_LAKE_STORAGE_OPTIONS`.
"""

from __future__ import annotations

import argparse

import pyarrow as pa

from infra.lake import lake_from_settings
from infra.settings import get_settings
from ingestion.cdc.delta import BronzeTables
from tests.silver.conftest import CDC_SCHEMA, bid_event

TOPIC = "optibid.public.bids"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--partition", type=int, required=True)
    parser.add_argument("--commits", type=int, required=True)
    parser.add_argument("--rows", type=int, default=3)
    args = parser.parse_args()
    tables = BronzeTables(lake_from_settings(get_settings()))
    offset = 0
    for _ in range(args.commits):
        rows = []
        for _ in range(args.rows):
            key = f"P{args.partition}-O{offset}"
            rows.append(bid_event("c", key, offset, "2024-03-10T10:00:00", offset, partition=args.partition))
            offset += 1
        tables.append(
            "cdc__bids", pa.Table.from_pylist(rows, schema=CDC_SCHEMA),
            topic_offsets={(TOPIC, args.partition): offset - 1},
        )


if __name__ == "__main__":
    main()
