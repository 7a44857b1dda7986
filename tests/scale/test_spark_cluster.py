"""Silver on a Spark standalone cluster (and through Spark Connect on it) equals the `local[*]` build, row for row;
on the cluster it also reads the lake through the S3 protocol, so no file is shared between driver and executors
but through the lake URI."""

from __future__ import annotations

import json
import urllib.request

import pytest

from tests.scale.conftest import clear_silver, run_silver_job, silver_snapshot, write_scale_bronze

# Four driver JVMs and a cluster on two shared cores: beyond the suite's 15-minute default when the machine is busy.
pytestmark = [pytest.mark.scale, pytest.mark.timeout(3600)]


def _applications(cluster) -> list[dict]:
    with urllib.request.urlopen(f"http://127.0.0.1:{cluster.master_ui_port}/json/", timeout=5) as response:
        status = json.load(response)
    return status.get("activeapps", []) + status.get("completedapps", [])


def test_silver_on_the_cluster_through_connect_and_from_s3_equals_local(
    spark_cluster, s3_server, silver_db, local_lake, tmp_path
):
    local = run_silver_job(silver_db, local_lake, {"SPARK_MASTER": "local[*]"}, tmp_path)
    expected = silver_snapshot(silver_db)
    filled = ("market__prices", "market__price_revisions", "market__load", "quality__gaps", "trading__bids",
              "trading__bids_history")
    assert all(expected[table] for table in filled), "the fixture bronze must fill what the comparison is about"
    expected = {table: expected[table] for table in filled}
    assert local["trading_history_rows"]["bids"] > 40

    s3_lake = s3_server.lake("scale")
    write_scale_bronze(s3_lake)
    variants = {
        # SPARK_MASTER=spark://…, and the executors read bronze over HTTP: nothing shared but the lake URI
        "standalone cluster, S3 lake": (lambda: {"SPARK_MASTER": spark_cluster.master_url}, s3_lake),
        # SPARK_REMOTE=sc://… to a Connect server whose executors are the cluster's, on the local lake
        "Spark Connect on the cluster": (lambda: {"SPARK_REMOTE": spark_cluster.start_connect_server()}, local_lake),
    }
    for variant, (spark_env, lake) in variants.items():
        clear_silver(silver_db)
        run_silver_job(silver_db, lake, spark_env(), tmp_path)
        got = silver_snapshot(silver_db)
        for table in expected:
            assert got[table] == expected[table], f"{variant}: silver.{table} differs from the local[*] build"

    # The work ran on the cluster: both workers' executors served the job's application and the Connect server.
    names = sorted(app["name"] for app in _applications(spark_cluster))
    assert names == ["Spark Connect server", "optibid-silver-job"], names
    for worker in ("worker-0", "worker-1"):
        ran = list((spark_cluster.work_dir / worker).glob("app-*/*/stderr"))
        assert len(ran) == 2, f"{worker} ran executors for {len(ran)} of the 2 cluster applications"
