"""Dagster resources: thin, configurable handles on the services library code talks to.

A resource shows the `EnvVar` it is configured from in the Dagster UI when that variable is set, and
otherwise resolves at run time through the settings module (so a run started after `optibid services up`
exported the service addresses finds them), starting the embedded service as the last resort.
Service clients and queries belong to the libraries and `infra`; only the Dagster handles live here.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg
import psycopg
from pydantic import PrivateAttr

from infra import db
from infra.lake import Lake
from infra.services import embedded_broker_bootstrap, kafka_security_config, warehouse_url
from infra.settings import Settings, get_settings

_MIGRATED_URLS: set[str] = set()  # warehouses this process has migrated (WarehouseResource)


class WarehouseResource(dg.ConfigurableResource):
    """The Postgres warehouse (embedded pgserver unless `OPTIBID_DATABASE_URL` is set)."""

    database_url: str | None = None

    _resolved: str | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        """Bring the warehouse schema up to date before a run, sensor tick or schedule tick first uses it.

        Once per process and URL: sensors tick every few seconds in the long-lived code server, the schema
        changes only with the code (a new process), and `migrate` takes the cluster-wide migration lock.
        """
        if self.url not in _MIGRATED_URLS:
            db.migrate(self.url)
            _MIGRATED_URLS.add(self.url)

    @property
    def url(self) -> str:
        """The warehouse URL (resolution only: the schema is migrated in `setup_for_execution`)."""
        if self._resolved is None:
            self._resolved = self.database_url or warehouse_url(get_settings())
        return self._resolved

    @contextmanager
    def connect(self) -> Iterator[psycopg.Connection]:
        with db.connect(self.url) as conn:
            yield conn


class LakeResource(dg.ConfigurableResource):
    """The Delta Lake root (`OPTIBID_LAKE_URI`, default `<home>/lake`)."""

    lake_uri: str | None = None

    @property
    def lake(self) -> Lake:
        settings = get_settings()
        return Lake(self.lake_uri or settings.resolved_lake_uri, dict(settings.lake_storage_options))


class SparkResource(dg.ConfigurableResource):
    """The shared SparkSession: local by default, a cluster through `SPARK_MASTER` / `SPARK_REMOTE`."""

    master: str = "local[*]"
    remote: str | None = None

    def session(self):
        from infra.spark import spark_session

        return spark_session(self.master, self.remote)


class BrokerResource(dg.ConfigurableResource):
    """The Kafka-protocol broker (embedded tansu unless `KAFKA_BOOTSTRAP_SERVERS` is set)."""

    bootstrap_servers: str | None = None

    def bootstrap(self) -> str:
        settings = get_settings()
        return self.bootstrap_servers or settings.kafka_bootstrap_servers or embedded_broker_bootstrap(settings)

    def client_config(self) -> dict[str, object]:
        """kafka-python keyword arguments: bootstrap servers plus SASL/SSL from the settings."""
        return {"bootstrap_servers": self.bootstrap(), **kafka_security_config(get_settings())}


class MlflowResource(dg.ConfigurableResource):
    """MLflow tracking (`MLFLOW_TRACKING_URI`, default a SQLite store under `<home>/mlflow`)."""

    tracking_uri: str | None = None

    def uri(self) -> str:
        return self.tracking_uri or get_settings().resolved_mlflow_uri


class ClickHouseResource(dg.ConfigurableResource):
    """ClickHouse for the BI exports (`CLICKHOUSE_URL`, else an embedded server in `<home>/clickhouse`)."""

    url: str | None = None

    @contextmanager
    def client(self) -> Iterator:
        """A clickhouse-driver `Client` (native protocol), disconnected afterwards."""
        from clickhouse_driver import Client

        from infra.clickhouse import clickhouse_url

        client = Client.from_url(self.url or clickhouse_url(get_settings()))
        try:
            yield client
        finally:
            client.disconnect()


def resources_from_settings(settings: Settings) -> dict[str, dg.ConfigurableResource]:
    """The resource dictionary of the one `Definitions`."""
    return {
        "warehouse": WarehouseResource(
            database_url=dg.EnvVar("OPTIBID_DATABASE_URL") if settings.database_url else None
        ),
        "lake": LakeResource(lake_uri=dg.EnvVar("OPTIBID_LAKE_URI") if settings.lake_uri else None),
        "spark": SparkResource(
            master=settings.spark_master,
            remote=dg.EnvVar("SPARK_REMOTE") if settings.spark_remote else None,
        ),
        "broker": BrokerResource(
            bootstrap_servers=dg.EnvVar("KAFKA_BOOTSTRAP_SERVERS") if settings.kafka_bootstrap_servers else None
        ),
        "mlflow": MlflowResource(
            tracking_uri=dg.EnvVar("MLFLOW_TRACKING_URI") if settings.mlflow_tracking_uri else None
        ),
        # gold dbt project; its connection comes from OPTIBID_DBT_* (assets/gold.py exports them per run)
        "dbt": gold_dbt_resource(),
        "clickhouse": ClickHouseResource(url=dg.EnvVar("CLICKHOUSE_URL") if settings.clickhouse_url else None),
    }


def gold_dbt_resource() -> dg.ConfigurableResource:
    """The dagster-dbt CLI resource on the gold project (dbt_project/, profiles.yml alongside)."""
    from dagster_dbt import DbtCliResource

    from infra.dbt import DBT_PROJECT_DIR, dbt_executable

    return DbtCliResource(
        project_dir=str(DBT_PROJECT_DIR), profiles_dir=str(DBT_PROJECT_DIR), dbt_executable=dbt_executable()
    )
