"""Session-wide real services for the whole test run: one Postgres, one broker, one Spark, one lake.

Postgres is the embedded pgserver unless `OPTIBID_DATABASE_URL` names a server, in which case a fresh
database is created on it for this run. The broker is the embedded tansu unless
`KAFKA_BOOTSTRAP_SERVERS` is set. Everything lives under one temporary `OPTIBID_HOME`.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = REPO_ROOT.parent / "shared"
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


def pytest_configure(config: pytest.Config) -> None:
    # A shell starts a background job (`make test &`) with SIGINT ignored, and every in-process
    # Dagster run copies SIGINT's handler onto SIGTERM. From the first such run on, SIGTERM would be ignored
    # here and in every process the tests start after it: Dagster's compute-log `tail`s then outlived their
    # runs by 30 s each (a held-run test took 62 s instead of 4).
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def shared_path(*parts: str) -> Path:
    """A path under ../shared, skipping the calling test when the folder is absent."""
    path = SHARED_DIR.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent: ../shared holds the team's real datasets and is not shipped to users")
    return path


@pytest.fixture(scope="session")
def optibid_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh OPTIBID_HOME for the run; settings read after this see it."""
    home = tmp_path_factory.mktemp("optibid")
    previous = os.environ.get("OPTIBID_HOME")
    os.environ["OPTIBID_HOME"] = str(home)
    os.environ.setdefault("OPTIBID_JWT_SECRET", "test-only-secret-" + "x" * 32)
    from infra.settings import get_settings

    get_settings.cache_clear()
    yield home
    # Export runs of the platform tests start the home's embedded ClickHouse on first use; it must not outlive
    # the run (Postgres and the broker are stopped by their own fixtures).
    from infra.clickhouse import stop_embedded_clickhouse

    stop_embedded_clickhouse(get_settings())
    if previous is None:
        os.environ.pop("OPTIBID_HOME", None)
    else:
        os.environ["OPTIBID_HOME"] = previous
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def settings(optibid_home: Path):
    from infra.settings import get_settings

    return get_settings()


@pytest.fixture(scope="session")
def database_url(settings) -> Iterator[str]:
    """A migrated database for this run: embedded by default, on the configured server if set."""
    from infra import db
    from infra.services import embedded_postgres_url, stop_embedded_postgres

    test_db = f"optibid_test_{os.getpid()}"
    if settings.database_url:
        url = db.create_database(settings.database_url, test_db, drop_existing=True)
    else:
        url = db.create_database(embedded_postgres_url(settings), "optibid_test", drop_existing=True)
    db.migrate(url)
    # Dagster and dbt processes started by tests find the warehouse the way users configure it.
    os.environ["OPTIBID_DATABASE_URL"] = url
    from infra.settings import get_settings

    get_settings.cache_clear()
    yield url
    if settings.database_url:
        db.drop_database(settings.database_url, test_db)
    else:
        stop_embedded_postgres(settings)


def private_database(database_url: str, name: str) -> Iterator[str]:
    """A migrated database of its own on the run's server, for tests whose gold tables must be exactly what
    dbt builds (other areas' tests create contract-shaped fixture tables in the shared one); dropped after."""
    from infra import db

    url = db.create_database(database_url, name, drop_existing=True)
    db.migrate(url)
    yield url
    db.drop_database(database_url, name)


@pytest.fixture(scope="session")
def broker_bootstrap(settings) -> Iterator[str]:
    """host:port of a real Kafka-protocol broker."""
    from infra.services import check_broker, embedded_broker_bootstrap, stop_embedded_broker

    bootstrap = settings.kafka_bootstrap_servers or embedded_broker_bootstrap(settings)
    check_broker(bootstrap, settings)
    os.environ["KAFKA_BOOTSTRAP_SERVERS"] = bootstrap
    yield bootstrap
    if not settings.kafka_bootstrap_servers:
        stop_embedded_broker(settings)


@pytest.fixture(scope="session")
def spark(settings):
    """The one SparkSession of the run (local[2]: this machine has two cores)."""
    from infra.spark import spark_session

    session = spark_session(master="local[2]", remote=os.environ.get("SPARK_REMOTE"), app_name="optibid-tests")
    yield session
    session.stop()


@pytest.fixture(scope="session")
def clickhouse_url(settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real ClickHouse server: `CLICKHOUSE_URL` when set, else Debian's clickhouse-server started here."""
    from infra.clickhouse import INSTALL_HINT, clickhouse_server_command, start_clickhouse

    if settings.clickhouse_url:
        yield settings.clickhouse_url
        return
    if clickhouse_server_command() is None:
        pytest.skip(INSTALL_HINT)
    server = start_clickhouse(Path(tmp_path_factory.mktemp("clickhouse")))
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def lake(tmp_path: Path):
    """An empty lake for one test."""
    from infra.lake import Lake

    return Lake(str(tmp_path / "lake"))
