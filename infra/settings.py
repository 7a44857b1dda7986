"""The one place OptiBid reads its environment.

What belongs here: every `OPTIBID_*` and service variable (`KAFKA_*`, `SPARK_*`, `PYSPARK_PYTHON`,
`MLFLOW_TRACKING_URI`, `CLICKHOUSE_URL`, `DAGSTER_HOME`) as a field of `Settings`, with its default and the
paths derived from it. Other modules receive a `Settings` (or plain values taken from it); nothing else reads
`os.environ`. What does not: acting on a setting. Unset service URLs mean "start the embedded default", which
`infra/services.py` does.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

from pydantic import AliasChoices, AliasPath, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """OptiBid configuration, read from the environment (and an optional `.env` file).

    Only the documented names (each field's `validation_alias`) are read from the environment: enabling
    `populate_by_name`/`validate_by_name` would make pydantic-settings read field names too, so a plain
    `HOME` would become `home` and `DATABASE_URL` the warehouse. Code may still construct
    `Settings(home=...)` by field name: `__init__` renames such keywords to their alias first.
    """

    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    def __init__(self, **values: Any) -> None:
        super().__init__(**_by_alias(type(self), values))

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
    pyspark_python: str | None = Field(
        default=None,
        validation_alias="PYSPARK_PYTHON",
        description="Python that runs a local or cluster session's Python workers; default this interpreter.",
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
    api_database_url: str | None = Field(
        default=None,
        validation_alias="OPTIBID_API_DATABASE_URL",
        description="PostgreSQL URL the API serves requests with: a login that may only become optibid_api "
        "(infra/sql/130_api_login.sql), not the tables' owner; unset = OPTIBID_DATABASE_URL with SET ROLE.",
    )
    jwt_secret: SecretStr | None = Field(
        default=None,
        validation_alias="OPTIBID_JWT_SECRET",
        description="HMAC secret for access/refresh tokens; unset generates one per home directory.",
    )
    cors_origins: list[str] = Field(default_factory=list, validation_alias="OPTIBID_CORS_ORIGINS")
    public_url: str | None = Field(
        default=None,
        validation_alias="OPTIBID_PUBLIC_URL",
        description="The API's address as users and identity providers reach it (links in e-mails, the OIDC "
        "redirect URI, the tokens' issuer); unset = http://OPTIBID_API_HOST:OPTIBID_API_PORT.",
    )
    jwt_private_keys: SecretStr | None = Field(
        default=None,
        validation_alias="OPTIBID_JWT_PRIVATE_KEYS",
        description="PEM bundle of RSA private keys signing access tokens, newest (signing) first; unset keeps "
        "a generated, rotating keyring in $OPTIBID_HOME/jwt_keys.",
    )
    jwt_audience: str = Field(default="optibid-api", min_length=1, validation_alias="OPTIBID_JWT_AUDIENCE")
    jwt_key_rotation_days: float = Field(
        default=30.0,
        gt=0,
        validation_alias="OPTIBID_JWT_KEY_ROTATION_DAYS",
        description="Age at which the generated keyring's signing key is replaced.",
    )
    jwt_key_overlap_seconds: int = Field(
        default=3600,
        ge=960,
        validation_alias="OPTIBID_JWT_KEY_OVERLAP_SECONDS",
        description="Rotation window: how long a replaced key (and, after the upgrade, HS256 tokens) still "
        "verifies; at least the access-token lifetime plus a minute.",
    )
    invitation_ttl_hours: float = Field(default=72.0, gt=0, validation_alias="OPTIBID_INVITATION_TTL_HOURS")
    password_reset_ttl_minutes: float = Field(default=30.0, gt=0, validation_alias="OPTIBID_PASSWORD_RESET_TTL_MINUTES")
    mail_smtp_host: str | None = Field(
        default=None,
        validation_alias="OPTIBID_MAIL_SMTP_HOST",
        description="SMTP server for invitations and password resets; unset = the alert SMTP server.",
    )
    mail_smtp_port: int | None = Field(default=None, validation_alias="OPTIBID_MAIL_SMTP_PORT")
    mail_smtp_starttls: bool | None = Field(default=None, validation_alias="OPTIBID_MAIL_SMTP_STARTTLS")
    mail_smtp_username: str | None = Field(default=None, validation_alias="OPTIBID_MAIL_SMTP_USERNAME")
    mail_smtp_password: SecretStr | None = Field(default=None, validation_alias="OPTIBID_MAIL_SMTP_PASSWORD")
    mail_from: str = Field(default="optibid@localhost", validation_alias="OPTIBID_MAIL_FROM")
    upload_max_bytes: int = Field(
        default=512 * 1024 * 1024,
        validation_alias="OPTIBID_UPLOAD_MAX_BYTES",
        description="Largest accepted upload (bytes).",
    )
    trusted_proxies: list[str] = Field(
        default_factory=list,
        validation_alias="OPTIBID_TRUSTED_PROXIES",
        description="JSON list of CIDRs of reverse proxies whose X-Forwarded-For names the client address.",
    )
    api_statement_timeout_ms: int = Field(
        default=15_000,
        ge=0,
        validation_alias="OPTIBID_API_STATEMENT_TIMEOUT_MS",
        description="statement_timeout of the API's pooled connections (0 = none).",
    )
    api_idle_in_transaction_timeout_ms: int = Field(
        default=30_000,
        ge=0,
        validation_alias="OPTIBID_API_IDLE_IN_TRANSACTION_TIMEOUT_MS",
        description="idle_in_transaction_session_timeout of the API's pooled connections (0 = none).",
    )
    api_solver_processes: int = Field(
        default=2,
        ge=1,
        le=64,
        validation_alias="OPTIBID_API_SOLVER_PROCESSES",
        description="Worker processes per API process that run on-demand optimization solves (killable).",
    )
    api_forecast_job_processes: int = Field(
        default=1,
        ge=1,
        le=64,
        validation_alias="OPTIBID_API_FORECAST_JOB_PROCESSES",
        description="Worker processes per API process that run on-demand forecast jobs (killable).",
    )

    # --- file uploads ---------------------------------------------------------------------------
    uploads_dir: Path | None = Field(
        default=None,
        validation_alias="OPTIBID_UPLOADS_DIR",
        description="Where received upload files are kept (content-addressed by sha256); default <home>/uploads.",
    )

    # --- CDC ------------------------------------------------------------------------------------
    # When the sensor starts a bronze CDC run, and how many dead letters fail the check.
    cdc_lag_threshold: int = Field(
        default=10_000,
        validation_alias="OPTIBID_CDC_LAG_THRESHOLD",
        description="Kafka events not yet in bronze above which the CDC sensor starts an ingestion run.",
    )
    cdc_client: Literal["kafka-python", "librdkafka"] = Field(
        default="librdkafka",
        validation_alias="OPTIBID_CDC_CLIENT",
        description="Kafka client the CDC consumer reads with: 'librdkafka' (confluent-kafka, C record parsing) "
        "or 'kafka-python' (pure Python).",
    )
    cdc_dead_letter_max_rate: float = Field(
        default=0.01,
        validation_alias="OPTIBID_CDC_DEAD_LETTER_MAX_RATE",
        description="Share of a run's events that may be dead-lettered before the CDC asset check fails.",
    )

    # --- monitoring -----------------------------------------------------------------------------
    # Drift share: drifted columns / columns, per zone.
    drift_share_warn_threshold: float = Field(
        default=0.5,
        validation_alias="OPTIBID_DRIFT_SHARE_WARN_THRESHOLD",
        description="Evidently drift share of any zone above which the drift_report check warns.",
    )

    # --- automation -----------------------------------------------------------------------------
    sensor_interval_seconds: int = Field(
        default=30,
        ge=1,
        le=3600,
        validation_alias="OPTIBID_SENSOR_INTERVAL_SECONDS",
        description="How often the daemon evaluates the automation and the alerts (s).",
    )
    # Looking for new data costs a folder listing and a broker round trip; evaluating the automation costs
    # seconds of CPU. Files and CDC lag are polled more often, so a landed file starts its run sooner.
    new_data_poll_seconds: int = Field(
        default=10,
        ge=1,
        le=3600,
        validation_alias="OPTIBID_NEW_DATA_POLL_SECONDS",
        description="How often the daemon looks for landed files, CDC lag and follow-mode commits (s).",
    )
    # The markets' gate closures are in ml/optimization/gate_closures.py.
    gate_closure_lead_minutes: int = Field(
        default=120,
        gt=0,
        lt=24 * 60,
        validation_alias="OPTIBID_GATE_CLOSURE_LEAD_MINUTES",
        description="Minutes before each market's day-ahead gate closure that tomorrow's forecasts and "
        "optimizations run.",
    )

    # --- Dagster UI and the demo's live load ----------------------------------------------------
    dagster_host: str = Field(default="127.0.0.1", validation_alias="OPTIBID_DAGSTER_HOST")
    dagster_port: int = Field(default=3000, validation_alias="OPTIBID_DAGSTER_PORT")
    demo_file_interval_seconds: float = Field(
        default=180.0,
        validation_alias="OPTIBID_DEMO_FILE_INTERVAL_SECONDS",
        description="How often the running demo drops a new market file for the current day in the landing folder.",
    )
    demo_ticks_per_second: float = Field(
        default=2.0,
        validation_alias="OPTIBID_DEMO_TICKS_PER_SECOND",
        description="Real-time price ticks per second and zone that the running demo produces to Kafka.",
    )
    demo_trading_events_per_second: float = Field(
        default=1.0,
        validation_alias="OPTIBID_DEMO_TRADING_EVENTS_PER_SECOND",
        description="Trading-system change events per second that the running demo produces to Kafka.",
    )

    # --- the tools beside the platform (app/portal.py, the MLflow UI) -------------------------------
    portal_host: str = Field(
        default="127.0.0.1",
        validation_alias="OPTIBID_PORTAL_HOST",
        description="Where the landing page, the reports (Data Docs, dbt docs, drift, plots) and the gold page listen.",
    )
    portal_port: int = Field(default=8080, ge=1, le=65535, validation_alias="OPTIBID_PORTAL_PORT")
    portal_public_url: str | None = Field(
        default=None,
        validation_alias="OPTIBID_PORTAL_PUBLIC_URL",
        description="The landing page's address as browsers reach it (behind a proxy); default http://host:port. "
        "Dagster's links to reports start with it.",
    )
    mlflow_ui_host: str = Field(
        default="127.0.0.1", validation_alias="OPTIBID_MLFLOW_UI_HOST", description="Where the MLflow UI listens."
    )
    mlflow_ui_port: int = Field(default=5000, ge=1, le=65535, validation_alias="OPTIBID_MLFLOW_UI_PORT")
    mlflow_ui_public_url: str | None = Field(
        default=None,
        validation_alias="OPTIBID_MLFLOW_UI_PUBLIC_URL",
        description="The MLflow UI's address as browsers reach it; default http://host:port (or the tracking "
        "server itself when MLFLOW_TRACKING_URI is an http(s) URL).",
    )

    # --- alert delivery (infra/alerts.py) -------------------------------------------------------
    alert_webhook_urls: list[SecretStr] = Field(
        default_factory=list,
        validation_alias="OPTIBID_ALERT_WEBHOOK_URLS",
        description="JSON list of webhook URLs receiving alerts as Slack-compatible JSON (URLs are secrets).",
    )
    alert_smtp_host: str | None = Field(
        default=None, validation_alias="OPTIBID_ALERT_SMTP_HOST", description="SMTP server for alert e-mail."
    )
    alert_smtp_port: int = Field(default=25, validation_alias="OPTIBID_ALERT_SMTP_PORT")
    alert_smtp_starttls: bool = Field(default=False, validation_alias="OPTIBID_ALERT_SMTP_STARTTLS")
    alert_smtp_username: str | None = Field(default=None, validation_alias="OPTIBID_ALERT_SMTP_USERNAME")
    alert_smtp_password: SecretStr | None = Field(default=None, validation_alias="OPTIBID_ALERT_SMTP_PASSWORD")
    alert_email_from: str = Field(default="optibid@localhost", validation_alias="OPTIBID_ALERT_EMAIL_FROM")
    alert_email_to: list[str] = Field(
        default_factory=list,
        validation_alias="OPTIBID_ALERT_EMAIL_TO",
        description="JSON list of alert e-mail recipients; e-mail is off while this or the SMTP host is unset.",
    )
    alert_delivery_max_attempts: int = Field(
        default=5,
        ge=1,
        validation_alias="OPTIBID_ALERT_DELIVERY_MAX_ATTEMPTS",
        description="Failed deliveries of one notice (one per sensor tick) before it is given up.",
    )
    alert_delivery_timeout_seconds: float = Field(
        default=10.0, gt=0, validation_alias="OPTIBID_ALERT_DELIVERY_TIMEOUT_SECONDS"
    )

    # --- operations: lake maintenance, backups, retention (docs/operations.md) -------------------
    lake_time_travel_hours: int = Field(
        default=7 * 24,
        ge=24,
        validation_alias="OPTIBID_LAKE_TIME_TRAVEL_HOURS",
        description="Every lake version of the last N hours stays readable: vacuum removes only files older.",
    )
    lake_maintenance_cron: str = Field(
        default="0 2 * * *",
        validation_alias="OPTIBID_LAKE_MAINTENANCE_CRON",
        description="When the automation compacts, checkpoints and vacuums the bronze tables (partition timezone).",
    )
    backup_key: SecretStr | None = Field(
        default=None,
        validation_alias="OPTIBID_BACKUP_KEY",
        description="Secret the backups are encrypted with (any string of 16+ characters; keep it outside the "
        "home). Unset: no backups are taken.",
    )
    backup_dir: Path | None = Field(
        default=None,
        validation_alias="OPTIBID_BACKUP_DIR",
        description="Where backups are written; default <home>/backups (put it on another disk in production).",
    )
    backup_cron: str = Field(
        default="30 3 * * *",
        validation_alias="OPTIBID_BACKUP_CRON",
        description="When the automation takes a backup (partition timezone).",
    )
    backup_max_age_hours: float = Field(
        default=26.0,
        gt=0,
        validation_alias="OPTIBID_BACKUP_MAX_AGE_HOURS",
        description="Age of the newest verified backup above which the backup-freshness alert opens.",
    )
    backup_keep: int = Field(
        default=14,
        ge=1,
        validation_alias="OPTIBID_BACKUP_KEEP",
        description="Backups kept; older ones are deleted after each new backup has been verified.",
    )

    archive_uri: str | None = Field(
        default=None,
        validation_alias="OPTIBID_ARCHIVE_URI",
        description="Cold tier for archived days (local folder or s3://bucket/prefix); default <home>/archive.",
    )
    retention_days: dict[str, int] = Field(
        default_factory=dict,
        validation_alias="OPTIBID_RETENTION_DAYS",
        description="JSON object overriding the days each table stays hot, e.g. {\"silver.market__prices\": 365}; "
        "the defaults and what happens after are in infra/retention.py (RETENTION_POLICIES).",
    )
    retention_cron: str = Field(
        default="30 4 * * *",
        validation_alias="OPTIBID_RETENTION_CRON",
        description="When the automation archives and prunes what is past its retention (partition timezone).",
    )

    # --- derived paths --------------------------------------------------------------------------
    @property
    def resolved_archive_uri(self) -> str:
        return self.archive_uri or str(self.home_dir / "archive")

    @property
    def resolved_backup_dir(self) -> Path:
        return (self.backup_dir or self.home_dir / "backups").resolve()

    @property
    def home_dir(self) -> Path:
        return self.home.resolve()

    @property
    def resolved_public_url(self) -> str:
        return (self.public_url or f"http://{self.api_host}:{self.api_port}").rstrip("/")

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

    @property
    def dagster_ui_url(self) -> str:
        return f"http://{_client_host(self.dagster_host)}:{self.dagster_port}"

    @property
    def api_url(self) -> str:
        return f"http://{_client_host(self.api_host)}:{self.api_port}"

    @property
    def portal_url(self) -> str:
        return (self.portal_public_url or f"http://{_client_host(self.portal_host)}:{self.portal_port}").rstrip("/")

    @property
    def mlflow_ui_url(self) -> str:
        if self.mlflow_ui_public_url:
            return self.mlflow_ui_public_url.rstrip("/")
        if self.mlflow_tracking_uri and self.mlflow_tracking_uri.startswith(("http://", "https://")):
            return self.mlflow_tracking_uri.rstrip("/")
        return f"http://{_client_host(self.mlflow_ui_host)}:{self.mlflow_ui_port}"

    def report_url(self, path: str | Path) -> str | None:
        """The landing page's URL of a file under `reports_dir` (None for a file elsewhere)."""
        try:
            relative = Path(path).resolve().relative_to(self.reports_dir)
        except ValueError:
            return None
        return f"{self.portal_url}/reports/{quote(relative.as_posix())}"

    def mlflow_run_url(self, experiment_id: str, run_id: str) -> str:
        """The MLflow UI page of one run."""
        return f"{self.mlflow_ui_url}/#/experiments/{experiment_id}/runs/{run_id}"


def _client_host(host: str) -> str:
    """The address a local browser uses for a server listening on `host` (all interfaces: loopback)."""
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


def _by_alias(cls: type[BaseSettings], values: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments with field names replaced by the field's (first) environment name.

    Unknown keywords raise instead of being dropped by `extra="ignore"` (which exists for foreign `.env`
    entries, not for typos in code); pydantic-settings' own `_env_file`-style arguments pass through.
    """
    out: dict[str, Any] = {}
    aliases = {a for f in cls.model_fields.values() for a in _alias_names(f.validation_alias)}
    for key, value in values.items():
        field = cls.model_fields.get(key)
        if field is not None and field.validation_alias is not None:
            key = _alias_names(field.validation_alias)[0]
        elif field is None and key not in aliases and not key.startswith("_"):
            raise TypeError(f"Settings has no field or environment name {key!r}")
        out[key] = value
    return out


def _alias_names(alias: str | AliasPath | AliasChoices | None) -> list[str]:
    if isinstance(alias, str):
        return [alias]
    if isinstance(alias, AliasChoices):
        return [c for c in alias.choices if isinstance(c, str)]
    return []


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
