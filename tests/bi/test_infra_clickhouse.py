"""The local ClickHouse server helper: embedded start/reuse/stop and the not-installed error."""

from __future__ import annotations

import os

import pytest
from clickhouse_driver import Client

from infra.clickhouse import (
    ClickHouseNotInstalledError,
    clickhouse_server_command,
    clickhouse_url,
    start_clickhouse,
    stop_embedded_clickhouse,
)
from infra.settings import Settings


def test_embedded_server_is_reused_then_stopped(tmp_path):
    if clickhouse_server_command() is None:
        pytest.skip("ClickHouse is not installed (apt-get install -y clickhouse-server clickhouse-client)")
    settings = Settings(home=tmp_path, clickhouse_url=None)
    url = clickhouse_url(settings)
    try:
        assert url.startswith("clickhouse://default@127.0.0.1:")
        assert clickhouse_url(settings) == url  # second call reuses the running server
        client = Client.from_url(url)
        ((database, tz),) = client.execute("SELECT currentDatabase(), timezone()")
        assert database == "optibid" and tz in ("UTC", "Etc/UTC")  # 18.16 reports the alias
        client.disconnect()
        config = (tmp_path / "clickhouse" / "config.xml").read_text()
        assert "<listen_host>127.0.0.1</listen_host>" in config and "http_port" not in config
    finally:
        assert stop_embedded_clickhouse(settings)
    assert not stop_embedded_clickhouse(settings)
    assert (
        clickhouse_url(Settings(home=tmp_path, clickhouse_url="clickhouse://h:9000/x"))
        == "clickhouse://h:9000/x"
    )


def test_missing_binary_gives_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no clickhouse binary anywhere
    assert clickhouse_server_command() is None
    with pytest.raises(ClickHouseNotInstalledError, match="apt-get install -y clickhouse-server"):
        start_clickhouse(tmp_path / "ch")
    assert os.listdir(tmp_path) == []  # nothing was created
