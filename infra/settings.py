"""The one place OptiBid reads its environment.

Every `OPTIBID_*` and service variable (`KAFKA_*`, `SPARK_*`, `MLFLOW_TRACKING_URI`, `CLICKHOUSE_URL`) is a
field here. Other modules receive a `Settings` (or plain values taken from it); nothing else reads
`os.environ`. Unset service URLs mean "start the embedded default" (see `infra/services.py`).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """OptiBid configuration, read from the environment (and an optional `.env` file)."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=True)

    # --- core -----------------------------------------------------------------------------------
    home: Path = Field(
        default=Path(".optibid"),
        validation_alias="OPTIBID_HOME",
        description="Local state: embedded Postgres data, lake, Dagster home, MLflow store, reports.",
    )
    database_url: str | None = Field(
        default=None,
        validation_alias="OPTIBID_DATABASE_URL",
        description="PostgreSQL URL of the warehouse and Dagster storage; unset starts embedded pgserver.",
    )
    lake_uri: str | None = Field(
        default=None,
        validation_alias="OPTIBID_LAKE_URI",
        description="Root of the Delta Lake (local path or s3://bucket/prefix); default <home>/lake.",
    )
    lake_storage_options: dict[str, str] = Field(
        default_factory=dict,
        validation_alias="OPTIBID_LAKE_STORAGE_OPTIONS",
        description="JSON object of delta-rs storage options (AWS_ENDPOINT_URL, AWS_REGION, ...).",
    )
    landing_dir: Path | None = Field(
        default=None,
        validation_alias="OPTIBID_LANDING_DIR",
        description="Folder watched for uploaded market files; default <home>/landing.",
    )
    market_timezone: str = Field(
        default="UTC",
        validation_alias="OPTIBID_PARTITION_TIMEZONE",
        description="Timezone of the daily partitions (market-local day).",
    )
    partition_start: str = Field(
        default="2024-01-01",
        validation_alias="OPTIBID_PARTITION_START",
        description="First day of the daily partitions.",
    )

    dagster_home_override: Path | None = Field(
        default=None,
        validation_alias="DAGSTER_HOME",
        description="Dagster instance folder (dagster.yaml); default <home>/dagster_home.",
    )

    # --- broker ---------------------------------------------------------------------------------
    kafka_bootstrap_servers: str | None = Field(
        default=None,
        validation_alias="KAFKA_BOOTSTRAP_SERVERS",
        description="Kafka bootstrap servers; unset starts the embedded tansu broker.",
    )
    kafka_security_protocol: str = Field(default="PLAINTEXT", validation_alias="KAFKA_SECURITY_PROTOCOL")
    kafka_sasl_mechanism: str | None = Field(default=None, validation_alias="KAFKA_SASL_MECHANISM")
    kafka_sasl_username: str | None = Field(default=None, validation_alias="KAFKA_SASL_USERNAME")
    kafka_sasl_password: SecretStr | None = Field(default=None, validation_alias="KAFKA_SASL_PASSWORD")
    kafka_ssl_cafile: str | None = Field(default=None, validation_alias="KAFKA_SSL_CAFILE")

    # --- spark ----------------------------------------------------------------------------------
    spark_master: str = Field(
        default="local[*]",
        validation_alias=AliasChoices("SPARK_MASTER", "OPTIBID_SPARK_MASTER"),
        description="Spark master URL (local[*] by default).",
    )
    spark_remote: str | None = Field(
        default=None,
        validation_alias="SPARK_REMOTE",
        description="Spark Connect URL (sc://host:15002); takes precedence over SPARK_MASTER.",
    )

    # --- ML -------------------------------------------------------------------------------------
    mlflow_tracking_uri: str | None = Field(
        default=None,
        validation_alias="MLFLOW_TRACKING_URI",
        description="MLflow tracking server; default a SQLite store under <home>/mlflow.",
    )

    # --- BI -------------------------------------------------------------------------------------
    clickhouse_url: str | None = Field(
        default=None,
        validation_alias="CLICKHOUSE_URL",
        description="clickhouse://user:password@host:9000/db (native protocol); unset = local server if installed.",
    )

    # --- API ------------------------------------------------------------------------------------
    api_host: str = Field(default="127.0.0.1", validation_alias="OPTIBID_API_HOST")
    api_port: int = Field(default=8000, validation_alias="OPTIBID_API_PORT")
    jwt_secret: SecretStr | None = Field(
        default=None,
        validation_alias="OPTIBID_JWT_SECRET",
        description="HMAC secret for access/refresh tokens; unset generates one per home directory.",
    )
    cors_origins: list[str] = Field(default_factory=list, validation_alias="OPTIBID_CORS_ORIGINS")
    upload_max_bytes: int = Field(
        default=512 * 1024 * 1024,
        validation_alias="OPTIBID_UPLOAD_MAX_BYTES",
        description="Largest accepted upload (bytes).",
    )

    # --- area-specific settings (helpers append below, one field per line group) --------------
    # files (issue 4): where uploaded files are kept between receiving and processing
    uploads_dir: Path | None = Field(
        default=None,
        validation_alias="OPTIBID_UPLOADS_DIR",
        description="Where received upload files are kept (content-addressed by sha256); default <home>/uploads.",
    )

    # cdc (issue 3): when the sensor starts a bronze CDC run, and how many dead letters fail the check
    cdc_lag_threshold: int = Field(
        default=10_000,
        validation_alias="OPTIBID_CDC_LAG_THRESHOLD",
        description="Kafka events not yet in bronze above which the CDC sensor starts an ingestion run.",
    )
    cdc_dead_letter_max_rate: float = Field(
        default=0.01,
        validation_alias="OPTIBID_CDC_DEAD_LETTER_MAX_RATE",
        description="Share of a run's events that may be dead-lettered before the CDC asset check fails.",
    )

    # ml (issue 6): drift share (drifted columns / columns, per zone) above which the drift check warns
    drift_share_warn_threshold: float = Field(
        default=0.5,
        validation_alias="OPTIBID_DRIFT_SHARE_WARN_THRESHOLD",
        description="Evidently drift share of any zone above which the drift_report check warns.",
    )

    # --- derived paths --------------------------------------------------------------------------
    @property
    def home_dir(self) -> Path:
        return self.home.resolve()

    @property
    def pg_data_dir(self) -> Path:
        return self.home_dir / "pg"

    @property
    def resolved_lake_uri(self) -> str:
        return self.lake_uri or str(self.home_dir / "lake")

    @property
    def resolved_landing_dir(self) -> Path:
        return (self.landing_dir or self.home_dir / "landing").resolve()

    @property
    def resolved_uploads_dir(self) -> Path:
        return (self.uploads_dir or self.home_dir / "uploads").resolve()

    @property
    def dagster_home(self) -> Path:
        return (self.dagster_home_override or self.home_dir / "dagster_home").resolve()

    @property
    def resolved_mlflow_uri(self) -> str:
        return self.mlflow_tracking_uri or f"sqlite:///{self.home_dir / 'mlflow' / 'mlflow.db'}"

    @property
    def reports_dir(self) -> Path:
        return self.home_dir / "reports"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
