"""Several consumer processes writing the same bronze tables: concurrent Delta commits and partition takeover.

Every check compares the (topic, partition, offset) set in bronze with what the broker acknowledged.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from infra.lake import Lake
from ingestion.cdc.leases import MemberRunningError, PartitionLeases, parse_member
from ingestion.simulator.trading import trading_events
from tests.cdc.conftest import bronze, coordinates

REPO_ROOT = Path(__file__).resolve().parents[2]

# One committer process: `commits` appends of 10 rows for its own partition through the consumer's commit path;
# process 0 adds a column in its third commit (a schema change the others' appends must survive).
COMMITTER = """
import sys
import pyarrow as pa
from infra.lake import Lake
from ingestion.cdc.delta import BronzeTables

root, me, commits = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
tables = BronzeTables(Lake(root))
for i in range(commits):
    columns = {"_topic": ["t"] * 10, "_partition": pa.array([me] * 10, pa.int32()),
               "_offset": list(range(10 * i, 10 * i + 10))}
    if me == 0 and i == 2:
        columns["extra"] = [1.5] * 10
    tables.append("cdc__many", pa.table(columns), topic_offsets={("t", me): 10 * i + 9},
                  merge_schema="extra" in columns)
"""


def test_concurrent_committers_to_one_table_lose_no_commit_and_no_row(lake):
    """N processes x M commits, started together on a table that does not exist yet: N*M versions."""
    processes, commits = 3, 6
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", COMMITTER, lake.root, str(me), str(commits)], cwd=REPO_ROOT, env=env,
            stderr=subprocess.PIPE,
        )
        for me in range(processes)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()[-2000:]
    table = lake.table("bronze", "cdc__many")
    assert table.version() == processes * commits - 1  # versions 0 .. N*M-1: every commit landed
    rows = coordinates(bronze(lake, "cdc__many"))
    assert rows == sorted(("t", me, o) for me in range(processes) for o in range(10 * commits))
    assert [table.transaction_version(f"t-{me}") for me in range(processes)] == [10 * commits - 1] * processes
    assert "extra" in table.schema().to_arrow().names


def test_member_leases_are_exclusive_and_a_dead_members_partitions_are_taken_over(database_url, tmp_path):
    partitions = [("t", p) for p in range(6)]
    root = str(tmp_path / "lake")
    with PartitionLeases(database_url, root, 0, 2, takeover_after_seconds=0.5) as first:
        with pytest.raises(MemberRunningError):
            PartitionLeases(database_url, root, 0, 2).__enter__()
        assert first.claim(partitions) == {("t", 0), ("t", 2), ("t", 4)}  # member 1 may still be starting
        second = PartitionLeases(database_url, root, 1, 2).__enter__()
        assert second.claim(partitions) == {("t", 1), ("t", 3), ("t", 5)}
        time.sleep(0.6)
        assert first.claim(partitions) == set()  # member 1 is alive: its partitions are not taken
        second.__exit__(None, None, None)  # member 1 goes away: its session and locks end
        assert first.claim(partitions) == set()  # free at the earliest from now on: taken after the grace
        # The server ends member 1's session asynchronously and may release its locks one at a time, so a
        # claim may take some of its partitions and the next claim the rest.
        deadline = time.monotonic() + 30
        taken: set = set()
        while taken != {("t", 1), ("t", 3), ("t", 5)} and time.monotonic() < deadline:
            time.sleep(0.2)
            taken |= first.claim(partitions)
        assert taken == {("t", 1), ("t", 3), ("t", 5)}
        first.check()
    with pytest.raises(ValueError, match="i/N"):
        parse_member("3")
    with pytest.raises(ValueError, match="between"):
        parse_member("3/3")


@pytest.mark.scale
def test_sigkilled_member_is_taken_over_without_loss_or_duplicates(
    producer, broker_bootstrap, lake, database_url  # leases live in the warehouse
):
    topic = f"t{uuid.uuid4().hex[:10]}.public.bids"
    events = [(e.key, e.value) for e in trading_events(40_000, seed=11) if e.topic.endswith(".bids")]
    half = len(events) // 2
    delivered = producer(topic, events[:half], partitions=12)
    members = [_start_member(broker_bootstrap, lake, topic, i, 3) for i in range(3)]
    try:
        _wait_for_rows(lake, len(delivered), members)
        assert {p % 3 for _, p, _ in coordinates(bronze(lake, "cdc__bids"))} == {0, 1, 2}
        late: list = []
        third = half + (len(events) - half) // 2
        producing = threading.Thread(target=lambda: late.extend(producer(topic, events[half:third], partitions=12)))
        producing.start()
        time.sleep(1.0)  # member 1 dies while the next quarter streams in
        members[1].send_signal(signal.SIGKILL)
        members[1].wait(timeout=10)
        producing.join(timeout=120)
        # The last quarter is produced after the kill: its events on member 1's partitions reach bronze only
        # through a survivor that took them over (an idle member 1 may have written all of the quarter before).
        late.extend(producer(topic, events[third:], partitions=12))
        assert late, "the second half was not produced"
        delivered += late
        _wait_for_rows(lake, len(delivered), [members[0], members[2]], timeout=180)
    finally:
        for proc in members:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        outputs = [proc.communicate(timeout=60) for proc in members]
    assert members[1].returncode == -signal.SIGKILL
    for i in (0, 2):
        assert members[i].returncode == 0, outputs[i][1].decode()[-2000:]
    data = bronze(lake, "cdc__bids")
    assert coordinates(data) == sorted(delivered)  # no loss, no duplicates
    # Member 1's partitions were written by more than one process (its own run, then a survivor's).
    runs = {
        batch.split("-")[0]
        for batch, partition in zip(data["_batch_id"].to_pylist(), data["_partition"].to_pylist(), strict=True)
        if partition % 3 == 1
    }
    assert len(runs) >= 2


def _start_member(bootstrap: str, lake: Lake, topic: str, index: int, count: int) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable, "-m", "ingestion.cdc.cli", "--topic", topic, "--bootstrap", bootstrap,
            "--lake", lake.root, "--batch-events", "500", "--batch-seconds", "0.1", "--follow", "--no-realtime",
            "--member", f"{index}/{count}", "--takeover-after", "1",
        ],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _wait_for_rows(lake: Lake, n: int, procs: list[subprocess.Popen], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(coordinates(bronze(lake, "cdc__bids"))) >= n:
            return
        for proc in procs:
            if proc.poll() is not None:
                raise AssertionError(f"a member exited early: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.2)
    raise AssertionError(f"bronze did not reach {n} rows within {timeout}s")
