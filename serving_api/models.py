"""Response and request models (the OpenAPI contract). Row fields are optional because `fields=` selects."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

API_PREFIX = "/api/v1"  # every data endpoint is under it (health and metrics are not)
ZONE_PATTERN = r"^[A-Za-z0-9_\-]{1,40}$"
CODE_PATTERN = r"^[A-Za-z0-9_\-.]{1,80}$"


class Page(BaseModel):
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last page.")
    count: int


class _Row(BaseModel):
    model_config = ConfigDict(extra="allow")


class PriceRow(_Row):
    zone: str | None = None
    node: str | None = None
    ts_utc: datetime | None = None
    market_date: date | None = None
    market: str | None = None
    currency: str | None = None
    price: float | None = None
    price_avg: float | None = None
    price_min: float | None = None
    price_max: float | None = None
    n_obs: int | None = None


class PricePage(Page):
    data: list[PriceRow]


class SeriesRow(_Row):
    zone: str | None = None
    ts_utc: datetime | None = None
    market_date: date | None = None


class SeriesPage(Page):
    data: list[SeriesRow]


class KpiValueRow(_Row):
    kpi_code: str | None = None
    grain: str | None = None
    zone: str | None = None
    org_id: str | None = None
    period_start: datetime | None = None
    market_date: date | None = None
    value: float | None = None


class KpiValuePage(Page):
    data: list[KpiValueRow]


class KpiDefinition(BaseModel):
    kpi_code: str
    name: str
    unit: str | None = None
    grains: list[str] | None = None
    scope: str | None = None
    definition: str | None = None


class ForecastRow(_Row):
    zone: str | None = None
    ts_utc: datetime | None = None
    target: str | None = None
    model: str | None = None
    model_version: str | None = None
    run_id: str | None = None
    y_hat: float | None = None
    q10: float | None = None
    q50: float | None = None
    q90: float | None = None
    lo80: float | None = None
    hi80: float | None = None
    lo95: float | None = None
    hi95: float | None = None
    created_at: datetime | None = None


class ForecastPage(Page):
    data: list[ForecastRow]


class BidRow(_Row):
    """A bid's current state (gold.fct_bids). Delivery periods are one hour, so MW and MWh coincide."""

    bid_id: str | None = None
    org_id: str | None = None
    asset_id: str | None = None
    zone: str | None = None
    delivery_start: datetime | None = None
    market_date: date | None = Field(default=None, description="Zone-local delivery date.")
    side: Literal["buy", "sell"] | None = None
    price: float | None = None
    quantity_mw: float | None = None
    status: str | None = None
    is_accepted: bool | None = None
    is_decided: bool | None = None
    cleared_quantity_mw: float | None = None
    cleared_price: float | None = None
    cash_flow: float | None = Field(default=None, description="Signed: sales positive, purchases negative.")
    currency: str | None = None
    updated_at: datetime | None = None


class BidPage(Page):
    data: list[BidRow]


class TradeRow(_Row):
    """An executed trade (gold.fct_trades); `bid_id` is set when the trade executes a bid."""

    trade_id: str | None = None
    org_id: str | None = None
    bid_id: str | None = None
    zone: str | None = None
    delivery_start: datetime | None = None
    market_date: date | None = None
    side: Literal["buy", "sell"] | None = None
    price: float | None = None
    quantity_mw: float | None = None
    signed_quantity_mw: float | None = Field(default=None, description="Bought positive, sold negative.")
    cash_flow: float | None = None
    currency: str | None = None
    counterparty: str | None = None
    traded_at: datetime | None = None


class TradePage(Page):
    data: list[TradeRow]


class PositionRow(_Row):
    """Net position per organization, zone and delivery hour (gold.fct_positions): cleared bids plus trades
    that do not execute a bid. Long = bought > sold."""

    org_id: str | None = None
    zone: str | None = None
    delivery_start: datetime | None = None
    market_date: date | None = None
    bought_mwh: float | None = None
    sold_mwh: float | None = None
    net_position_mwh: float | None = None
    cash_flow: float | None = None


class PositionPage(Page):
    data: list[PositionRow]


class AnomalyRow(_Row):
    """A flagged hour (gold.anomalies): `value` observed against `expected`, with the detector's score."""

    zone: str | None = None
    ts_utc: datetime | None = None
    target: Literal["price", "load"] | None = None
    kind: Literal["spike", "level_shift"] | None = None
    score: float | None = None
    value: float | None = None
    expected: float | None = None
    method: str | None = None
    market_date: date | None = None
    detected_at: datetime | None = None


class AnomalyPage(Page):
    data: list[AnomalyRow]


class BacktestRow(_Row):
    """One rolling-origin backtest of one zone and target (ml.backtests)."""

    run_id: str | None = None
    zone: str | None = None
    target: Literal["price", "load"] | None = None
    window_start: date | None = None
    window_end: date | None = None
    models: list[str] | None = Field(default=None, description="The models compared.")
    metrics: dict[str, dict[str, float | None]] | None = Field(
        default=None, description="Per model: overall metrics (mae, rmae, coverage80, ...)."
    )
    mlflow_run_id: str | None = None
    wall_seconds: float | None = None
    created_at: datetime | None = None


class BacktestPage(Page):
    data: list[BacktestRow]


class ModelSelectionRow(_Row):
    """A champion chosen by a backtest (ml.model_selection); the newest per zone and target is in use."""

    zone: str | None = None
    target: Literal["price", "load"] | None = None
    model: str | None = None
    selected_at: datetime | None = None
    backtest_run_id: str | None = None
    metric: str | None = None
    metric_value: float | None = None
    mlflow_run_id: str | None = None
    registry_version: str | None = Field(default=None, description="MLflow registered-model version.")


class ModelSelectionPage(Page):
    data: list[ModelSelectionRow]


class DriftSummaryRow(_Row):
    """Drift of one zone in one weekly window (ml.drift_summaries): [reference_start, current_start) against
    [current_start, current_end), per Evidently's per-column tests."""

    zone: str | None = None
    reference_start: datetime | None = None
    current_start: datetime | None = None
    current_end: datetime | None = None
    drift_share: float | None = Field(default=None, description="Drifted columns / columns tested.")
    n_drifted: int | None = None
    n_columns: int | None = None
    dataset_drift: bool | None = Field(default=None, description="drift_share >= 0.5")
    target_drift: bool | None = None
    error_drift: bool | None = Field(default=None, description="Null when forecast errors were not tested.")
    drifted_columns: str | None = Field(default=None, description="Comma-separated.")
    computed_at: datetime | None = None


class DriftSummaryPage(Page):
    data: list[DriftSummaryRow]


class GenericPage(Page):
    data: list[dict[str, Any]] = Field(description="Rows; columns as in the underlying table.")


class Zone(BaseModel):
    zone: str
    name: str
    market: str
    iso: str
    timezone: str
    currency: str
    latitude: float
    longitude: float
    price_floor: float
    price_cap: float


class Node(BaseModel):
    node: str
    zone: str
    latitude: float
    longitude: float


class Asset(BaseModel):
    asset_id: str
    org_id: str
    zone: str
    name: str
    technology: str
    capacity_mw: float
    energy_mwh: float | None = None
    marginal_cost: float | None = None


class TokenResponse(BaseModel):
    access_token: str
    refresh_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int = Field(description="Access-token lifetime in seconds.")
    recovery_codes: list[str] | None = Field(
        default=None, description="Set once, when this login completed MFA enrolment: store them safely."
    )


class MfaChallenge(BaseModel):
    mfa_required: Literal[True] = True
    mfa_token: str = Field(description="Send with the code to POST /auth/mfa/verify.")
    expires_in: int
    enrollment_required: bool = Field(
        description="The organization requires MFA and the user has none yet: POST /auth/mfa/enroll first."
    )
    methods: list[str] = ["totp", "recovery_code"]


class MfaVerify(BaseModel):
    mfa_token: str = Field(min_length=1, max_length=200)
    code: str = Field(min_length=1, max_length=40, description="A 6-digit TOTP code or a recovery code.")


class MfaTokenBody(BaseModel):
    mfa_token: str = Field(min_length=1, max_length=200)


class MfaEnrollment(BaseModel):
    secret: str = Field(description="Base32 TOTP secret (RFC 6238, SHA-1, 6 digits, 30 s).")
    otpauth_uri: str


class MfaCode(BaseModel):
    code: str = Field(min_length=1, max_length=40)


class RecoveryCodes(BaseModel):
    recovery_codes: list[str]


class PasswordChange(BaseModel):
    current_password: str = Field(min_length=1, max_length=1024)
    new_password: str = Field(min_length=1, max_length=1024)


class PasswordForgot(BaseModel):
    email: str = Field(pattern=r"^[^@\s\x00]{1,200}@[^@\s\x00]{1,200}$")


class PasswordReset(BaseModel):
    token: str = Field(min_length=1, max_length=200)
    new_password: str = Field(min_length=1, max_length=1024)


class InvitationAccept(BaseModel):
    token: str = Field(min_length=1, max_length=200)
    password: str = Field(min_length=1, max_length=1024)


class LinkInfo(BaseModel):
    email: str
    org_id: str
    role: str | None = None
    expires_at: datetime


class InvitationCreate(BaseModel):
    email: str = Field(pattern=r"^[^@\s\x00]{1,200}@[^@\s\x00]{1,200}$")
    role: Literal["admin", "analyst", "trader", "viewer"]


class InvitationOut(BaseModel):
    invitation_id: str
    org_id: str
    email: str
    role: str
    created_by: str | None = None
    created_at: datetime
    expires_at: datetime
    used_at: datetime | None = None
    revoked_at: datetime | None = None


class RoleChange(BaseModel):
    role: Literal["admin", "analyst", "trader", "viewer"]


class SessionOut(BaseModel):
    session_id: str
    auth_method: str
    created_at: datetime
    last_used_at: datetime
    expires_at: datetime
    idle_timeout_seconds: int
    ip: str | None = None
    device: str | None = Field(default=None, description="The User-Agent the session was opened with.")
    current: bool


class IdentityPolicy(BaseModel):
    mfa_required: bool = False
    session_absolute_seconds: int = Field(default=604800, ge=300, le=2592000)
    session_idle_seconds: int = Field(default=28800, ge=300, le=2592000)


class OidcProviderIn(BaseModel):
    issuer: str = Field(pattern=r"^https?://[^\s\x00]{1,500}$")
    client_id: str = Field(min_length=1, max_length=200, pattern=r"^[^\x00]+$")
    client_secret: str | None = Field(
        default=None, max_length=500, pattern=r"^[^\x00]*$", description="Omit for a public client (PKCE only)."
    )
    scopes: str = Field(default="openid email profile", max_length=300, pattern=r"^openid( [A-Za-z0-9_:./-]+)*$")
    groups_claim: str = Field(default="groups", min_length=1, max_length=100, pattern=r"^[\w:./-]+$")
    group_roles: dict[str, Literal["admin", "analyst", "trader", "viewer"]] = Field(
        default_factory=dict, max_length=200, description="Provider group -> role; the highest role matched wins."
    )
    default_role: Literal["admin", "analyst", "trader", "viewer"] | None = Field(
        default=None, description="Role when no group matches; null refuses such users."
    )
    jit_provisioning: bool = True
    enabled: bool = True


class OidcProviderOut(BaseModel):
    org_id: str
    issuer: str
    client_id: str
    has_client_secret: bool
    scopes: str
    groups_claim: str
    group_roles: dict[str, str]
    default_role: str | None = None
    jit_provisioning: bool
    enabled: bool
    redirect_uri: str = Field(description="Register this redirect URI with the provider.")


class SamlProviderIn(BaseModel):
    idp_entity_id: str = Field(min_length=1, max_length=500, pattern=r"^[^\s\x00]+$")
    idp_sso_url: str = Field(
        pattern=r"^https?://[^\s\x00]{1,500}$", description="The IdP's SSO endpoint (HTTP-Redirect binding)."
    )
    idp_slo_url: str | None = Field(
        default=None,
        pattern=r"^https?://[^\s\x00]{1,500}$",
        description="The IdP's single-logout endpoint (HTTP-Redirect binding); null: logout ends OptiBid's "
        "session only.",
    )
    idp_certificate: str = Field(
        min_length=100,
        max_length=20000,
        description="The IdP's signing certificate (PEM, or its base64 body as in IdP metadata).",
    )
    email_attribute: str | None = Field(
        default="email",
        min_length=1,
        max_length=300,
        pattern=r"^[^\s\x00]+$",
        description="Attribute carrying the e-mail address; null: the NameID is the e-mail address.",
    )
    groups_attribute: str = Field(default="groups", min_length=1, max_length=300, pattern=r"^[^\s\x00]+$")
    group_roles: dict[str, Literal["admin", "analyst", "trader", "viewer"]] = Field(
        default_factory=dict, max_length=200, description="IdP group -> role; the highest role matched wins."
    )
    default_role: Literal["admin", "analyst", "trader", "viewer"] | None = Field(
        default=None, description="Role when no group matches; null refuses such users."
    )
    jit_provisioning: bool = True
    enabled: bool = True


class SamlProviderOut(BaseModel):
    org_id: str
    idp_entity_id: str
    idp_sso_url: str
    idp_slo_url: str | None = None
    idp_certificate: str
    idp_certificate_expires_at: datetime | None = None
    email_attribute: str | None = None
    groups_attribute: str
    group_roles: dict[str, str]
    default_role: str | None = None
    jit_provisioning: bool
    enabled: bool
    sp_entity_id: str = Field(description="This service provider's entity id (the audience the IdP must name).")
    acs_url: str = Field(description="Register this assertion consumer service URL (HTTP-POST) at the IdP.")
    metadata_url: str = Field(description="SP metadata to import into the IdP.")
    login_url: str = Field(description="Where users start SAML single sign-on.")


class EndSession(BaseModel):
    status: Literal["ok"] = "ok"
    end_session_url: str | None = Field(
        default=None, description="Send the browser here to end the provider's session too (SSO sessions)."
    )


class RefreshRequest(BaseModel):
    refresh_token: str = Field(min_length=1, max_length=200)


class Ok(BaseModel):
    status: Literal["ok"] = "ok"


class Ready(BaseModel):
    status: Literal["ready"] = "ready"
    database: Literal["ok"] = "ok"
    listener: bool = Field(description="Whether the shared LISTEN connection is up (cache and streams).")


class CheckResult(BaseModel):
    name: str
    passed: bool
    severity: str
    at: datetime
    metadata: dict[str, str]


class Materialization(BaseModel):
    at: datetime
    run_id: str | None = None
    partition: str | None = None


class TableFreshness(BaseModel):
    table: str
    asset_key: str | None
    last_materialization: Materialization | None
    checks: list[CheckResult]


class FreshnessResponse(BaseModel):
    configured: bool = Field(description="False when no Dagster instance is configured (nothing is known).")
    message: str | None = None
    tables: list[TableFreshness]


class UserCreate(BaseModel):
    email: str = Field(pattern=r"^[^@\s\x00]{1,200}@[^@\s\x00]{1,200}$")
    password: str = Field(min_length=1, max_length=1024)
    role: Literal["admin", "analyst", "trader", "viewer"]


class UserOut(BaseModel):
    user_id: str
    org_id: str
    email: str
    role: str
    is_active: bool
    auth_source: str = "password"
    deactivated_at: datetime | None = None


class ApiKeyCreate(BaseModel):
    name: str = Field(min_length=1, max_length=100, pattern=r"^[^\x00]+$")
    role: Literal["admin", "analyst", "trader", "viewer"]
    rate_limit_per_minute: int = Field(default=600, ge=1, le=1_000_000)
    expires_at: datetime | None = None


class ApiKeyOut(BaseModel):
    key_id: str
    org_id: str
    name: str
    prefix: str
    role: str
    rate_limit_per_minute: int
    created_at: datetime
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    last_used_at: datetime | None = None


class ApiKeyCreated(ApiKeyOut):
    api_key: str = Field(description="The secret; shown only once.")


class AuditEntry(BaseModel):
    id: int
    at: datetime
    org_id: str | None
    actor: str | None
    action: str
    target: str | None
    details: dict[str, Any]
