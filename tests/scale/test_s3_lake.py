"""The lake on the S3 protocol: concurrent CDC committers on one Delta table through moto's S3 server."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from infra.lake import Lake
from ingestion.cdc.delta import BronzeTables, offset_app_id
from tests.conftest import REPO_ROOT
from tests.scale.committer import TOPIC
from tests.silver.conftest import CDC_SCHEMA

pytestmark = pytest.mark.scale

COMMITTERS, COMMITS, ROWS = 3, 6, 3


def test_concurrent_committers_lose_no_commit_and_no_row(s3_server, tmp_path):
    lake: Lake = s3_server.lake("concurrency")
    # The table exists before the race: two first commits would both carry the table's metadata, and delta-rs
    # refuses the loser ("Metadata changed since last commit") instead of retrying it.
    BronzeTables(lake).append("cdc__bids", CDC_SCHEMA.empty_table(), topic_offsets={})
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "OPTIBID_LAKE_URI": lake.root,
        "OPTIBID_LAKE_STORAGE_OPTIONS": json.dumps(lake.storage_options),
    }
    committers = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.scale.committer", "--partition", str(p), "--commits", str(COMMITS),
             "--rows", str(ROWS)],
            env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for p in range(COMMITTERS)
    ]
    for committer in committers:
        _, err = committer.communicate(timeout=300)
        assert committer.returncode == 0, err[-3000:]

    table = lake.table("bronze", "cdc__bids")
    assert table is not None
    # every commit is a version of its own: after the creating version 0, N x M commits, none overwritten
    assert table.version() == COMMITTERS * COMMITS
    assert len(table.history()) == COMMITTERS * COMMITS + 1
    rows = table.to_pyarrow_table(columns=["_partition", "_offset", "bid_id"]).to_pylist()
    produced = {(p, o) for p in range(COMMITTERS) for o in range(COMMITS * ROWS)}
    assert len(rows) == len(produced)  # nothing twice
    assert {(r["_partition"], r["_offset"]) for r in rows} == produced  # nothing lost
    for p in range(COMMITTERS):  # and each partition's committed offset is its last one
        assert table.transaction_version(offset_app_id(TOPIC, p)) == COMMITS * ROWS - 1
    # The committers did race: S3 refused some log entries (412 on the conditional PUT) and they retried.
    refused = [line for line in s3_server.requests_logged() if "_delta_log/" in line and '"PUT ' in line
               and '" 412 ' in line]
    assert refused, "no commit ever collided: the test did not exercise concurrency"
