"""`OptiBidClient`: a thin, typed Python client of the OptiBid API (httpx for HTTP, websockets for streams).

One method per endpoint family, named after the API's paths, returning the typed structures of
`optibid_client.models`; errors are raised as `OptiBidError` with the API's `{code, message, details}`.
The client imports nothing of the platform (httpx and websockets only).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import date, datetime
from pathlib import Path
from typing import IO, Any, Literal, cast
from urllib.parse import urlencode

import httpx

from optibid_client.models import (
    AnomalyRow,
    BacktestRow,
    BidRow,
    DriftSummaryRow,
    ExportFormat,
    ForecastJob,
    ForecastRow,
    Grain,
    KpiMessage,
    KpiStream,
    KpiValueRow,
    ModelSelectionRow,
    Page,
    PositionRow,
    PriceRow,
    SeriesRow,
    TradeRow,
)

API_PREFIX = "/api/v1"
TimeArg = datetime | date | str | None
Target = Literal["price", "load"]


class OptiBidError(Exception):
    """An error answer of the API: HTTP status plus the body's `code`, `message` and `details`."""

    def __init__(self, status: int, code: str, message: str, details: Any = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details = details


class StreamClosed(OptiBidError):
    """A KPI stream closed by the server: 4401 unauthenticated, 4403 forbidden, 4400 bad parameters, 1013 too
    slow (resumed automatically unless `resume=False`)."""


class OptiBidClient:
    """A session with the API.

    Authenticate with an API key (`OptiBidClient(url, api_key=...)`) or log in with e-mail and password
    (`OptiBidClient.login(url, email, password)`): an expired access token is then renewed with the refresh
    token once, transparently. `http` replaces the underlying `httpx.Client` (proxies, certificates).
    Responses are gzip-compressed by the server when large; httpx decompresses them.
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        access_token: str | None = None,
        refresh_token: str | None = None,
        timeout: float = 30.0,
        http: httpx.Client | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.access_token = access_token
        self.refresh_token = refresh_token
        self.http = http or httpx.Client(base_url=self.base_url, timeout=timeout)

    # --- session --------------------------------------------------------------------------------
    @classmethod
    def login(cls, base_url: str, email: str, password: str, **kwargs: Any) -> OptiBidClient:
        """Log in with e-mail and password (`POST /auth/token`)."""
        client = cls(base_url, **kwargs)
        client._take_tokens(
            client._send("POST", "/auth/token", data={"username": email, "password": password}, auth=False)
        )
        return client

    def refresh(self) -> None:
        """New access and refresh tokens for the refresh token (`POST /auth/refresh`)."""
        if not self.refresh_token:
            raise OptiBidError(401, "no_refresh_token", "this client did not log in with a password")
        self._take_tokens(self._send("POST", "/auth/refresh", json={"refresh_token": self.refresh_token}, auth=False))

    def logout(self) -> None:
        """Revoke the login's refresh-token family (`POST /auth/revoke`): its access tokens stop working."""
        if self.refresh_token:
            self._send("POST", "/auth/revoke", json={"refresh_token": self.refresh_token}, auth=False)
        self.access_token = self.refresh_token = None

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> OptiBidClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- market data ----------------------------------------------------------------------------
    def prices(
        self,
        *,
        zone: str | None = None,
        start: TimeArg = None,
        end: TimeArg = None,
        granularity: Literal["hour", "5min"] = "hour",
        market: str | None = None,
        node: str | None = None,
        fields: Sequence[str] | None = None,
        limit: int = 1000,
        cursor: str | None = None,
    ) -> Page[PriceRow]:
        """Zone prices (hourly) or node prices (5min), `start` inclusive, `end` exclusive."""
        params = {"zone": zone, "granularity": granularity, "market": market, "node": node}
        return cast(Page[PriceRow], self._page("/prices", params, start, end, fields, limit, cursor))

    def load(
        self,
        *,
        zone: str | None = None,
        start: TimeArg = None,
        end: TimeArg = None,
        fields: Sequence[str] | None = None,
        limit: int = 1000,
        cursor: str | None = None,
    ) -> Page[SeriesRow]:
        return cast(Page[SeriesRow], self._page("/load", {"zone": zone}, start, end, fields, limit, cursor))

    def generation(
        self,
        *,
        zone: str | None = None,
        fuel: str | None = None,
        start: TimeArg = None,
        end: TimeArg = None,
        fields: Sequence[str] | None = None,
        limit: int = 1000,
        cursor: str | None = None,
    ) -> Page[SeriesRow]:
        params = {"zone": zone, "fuel": fuel}
        return cast(Page[SeriesRow], self._page("/generation", params, start, end, fields, limit, cursor))

    def kpi_values(
        self,
        code: str,
        *,
        zone: str | None = None,
        grain: Grain = "hour",
        start: TimeArg = None,
        end: TimeArg = None,
        fields: Sequence[str] | None = None,
        limit: int = 1000,
        cursor: str | None = None,
    ) -> Page[KpiValueRow]:
        params = {"zone": zone, "grain": grain}
        return cast(Page[KpiValueRow], self._page(f"/kpis/{code}", params, start, end, fields, limit, cursor))

    def forecasts(
        self,
        *,
        zone: str | None = None,
        target: Target = "price",
        model: str | None = None,
        run_id: str | None = None,
        start: TimeArg = None,
        end: TimeArg = None,
        fields: Sequence[str] | None = None,
        limit: int = 1000,
        cursor: str | None = None,
    ) -> Page[ForecastRow]:
        """Published forecasts with quantiles and intervals."""
        params = {"zone": zone, "target": target, "model": model, "run_id": run_id}
        return cast(Page[ForecastRow], self._page("/forecasts", params, start, end, fields, limit, cursor))

    # --- the organization's trading data -------------------------------------------------------
    def bids(
        self,
        *,
        zone: str | None = None,
        asset_id: str | None = None,
        side: Literal["buy", "sell"] | None = None,
        status: str | None = None,
        bid_id: str | None = None,
        start: TimeArg = None,
        end: TimeArg = None,
        fields: Sequence[str] | None = None,
        limit: int = 1000,
        cursor: str | None = None,
    ) -> Page[BidRow]:
        """Bids in their current state; `start`/`end` filter the delivery hour."""
        params = {"zone": zone, "asset_id": asset_id, "side": side, "status": status, "bid_id": bid_id}
        return cast(Page[BidRow], self._page("/bids", params, start, end, fields, limit, cursor))

    def trades(
        self,
        *,
        zone: str | None = None,
        side: Literal["buy", "sell"] | None = None,
        bid_id: str | None = None,
        trade_id: str | None = None,
        counterparty: str | None = None,
        start: TimeArg = None,
        end: TimeArg = None,
        fields: Sequence[str] | None = None,
        limit: int = 1000,
        cursor: str | None = None,
    ) -> Page[TradeRow]:
        params = {"zone": zone, "side": side, "bid_id": bid_id, "trade_id": trade_id, "counterparty": counterparty}
        return cast(Page[TradeRow], self._page("/trades", params, start, end, fields, limit, cursor))

    def positions(
        self,
        *,
        zone: str | None = None,
        start: TimeArg = None,
        end: TimeArg = None,
        fields: Sequence[str] | None = None,
        limit: int = 1000,
        cursor: str | None = None,
    ) -> Page[PositionRow]:
        return cast(Page[PositionRow], self._page("/positions", {"zone": zone}, start, end, fields, limit, cursor))

    # --- model monitoring -----------------------------------------------------------------------
    def anomalies(
        self,
        *,
        zone: str | None = None,
        target: Target | None = None,
        kind: Literal["spike", "level_shift"] | None = None,
        start: TimeArg = None,
        end: TimeArg = None,
        fields: Sequence[str] | None = None,
        limit: int = 1000,
        cursor: str | None = None,
    ) -> Page[AnomalyRow]:
        params = {"zone": zone, "target": target, "kind": kind}
        return cast(Page[AnomalyRow], self._page("/anomalies", params, start, end, fields, limit, cursor))

    def backtests(
        self,
        *,
        zone: str | None = None,
        target: Target | None = None,
        run_id: str | None = None,
        start: TimeArg = None,
        end: TimeArg = None,
        fields: Sequence[str] | None = None,
        limit: int = 1000,
        cursor: str | None = None,
    ) -> Page[BacktestRow]:
        params = {"zone": zone, "target": target, "run_id": run_id}
        return cast(Page[BacktestRow], self._page("/backtests", params, start, end, fields, limit, cursor))

    def current_models(
        self,
        *,
        zone: str | None = None,
        target: Target | None = None,
        fields: Sequence[str] | None = None,
        limit: int = 1000,
        cursor: str | None = None,
    ) -> Page[ModelSelectionRow]:
        """The model in use per zone and target."""
        params = {"zone": zone, "target": target}
        return cast(Page[ModelSelectionRow], self._page("/models/current", params, None, None, fields, limit, cursor))

    def model_selections(
        self,
        *,
        zone: str | None = None,
        target: Target | None = None,
        start: TimeArg = None,
        end: TimeArg = None,
        fields: Sequence[str] | None = None,
        limit: int = 1000,
        cursor: str | None = None,
    ) -> Page[ModelSelectionRow]:
        params = {"zone": zone, "target": target}
        page = self._page("/models/selections", params, start, end, fields, limit, cursor)
        return cast(Page[ModelSelectionRow], page)

    def drift(
        self,
        *,
        zone: str | None = None,
        start: TimeArg = None,
        end: TimeArg = None,
        fields: Sequence[str] | None = None,
        limit: int = 1000,
        cursor: str | None = None,
    ) -> Page[DriftSummaryRow]:
        return cast(Page[DriftSummaryRow], self._page("/drift", {"zone": zone}, start, end, fields, limit, cursor))

    # --- every page, exports --------------------------------------------------------------------
    def iter_rows(self, method: Any, **kwargs: Any) -> Iterator[Any]:
        """Every row of a paged read, following the cursors: `client.iter_rows(client.bids, zone="PJM")`."""
        cursor = None
        while True:
            page = method(**kwargs, cursor=cursor)
            yield from page.data
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def export(
        self,
        endpoint: str,
        destination: str | Path | IO[bytes],
        format: ExportFormat = "csv",
        *,
        start: TimeArg = None,
        end: TimeArg = None,
        fields: Sequence[str] | None = None,
        **filters: Any,
    ) -> int:
        """Stream the whole selection of a tabular endpoint (`"prices"`, `"bids"`, `"kpis/price_avg"`, ...) as
        CSV, Parquet or Excel into `destination` (a path or a binary file); bytes written. Memory stays
        bounded: the body is written as it arrives."""
        params = self._params(filters, start, end, fields)
        params["format"] = format
        path = "/" + endpoint.strip("/")
        written = 0
        for attempt in range(2):
            with self.http.stream("GET", API_PREFIX + path, params=params, headers=self._headers()) as resp:
                if resp.status_code == 401 and attempt == 0 and self._can_refresh(resp):
                    self.refresh()
                    continue
                if resp.status_code >= 400:
                    resp.read()
                    raise _error(resp)
                if isinstance(destination, str | Path):
                    with open(destination, "wb") as out:
                        for block in resp.iter_bytes():
                            written += out.write(block)
                else:
                    for block in resp.iter_bytes():
                        written += destination.write(block)
                return written
        raise AssertionError("unreachable")

    # --- live KPIs ------------------------------------------------------------------------------
    def stream_kpis(
        self,
        streams: Sequence[KpiStream],
        *,
        resume: bool = True,
        max_reconnects: int = 5,
        open_timeout: float = 10.0,
    ) -> Iterator[KpiMessage]:
        """Live values of several KPIs on one WebSocket (`WS /ws/dashboard`), heartbeats skipped.

        With `resume`, a close for falling behind (1013), a server restart or a lost connection reconnects
        with each stream's last `period_start` as its `since`, so no value is lost (the backlog comes first,
        with `backlog=True`); after `max_reconnects` attempts in a row without a message it gives up. Other
        closes (4401 unauthenticated, 4403 forbidden, 4400 bad streams) raise `StreamClosed`.
        """
        from websockets.exceptions import ConnectionClosed, InvalidStatus
        from websockets.sync.client import connect

        last: dict[tuple[str, str, str], str | None] = {(s.kpi_code, s.zone, s.grain): s.since for s in streams}
        ws_base = "ws" + self.base_url[len("http") :] if self.base_url.startswith("http") else self.base_url
        failures = 0
        while True:
            specs = [
                KpiStream(code, zone, cast(Grain, grain), since).spec() for (code, zone, grain), since in last.items()
            ]
            url = f"{ws_base}{API_PREFIX}/ws/dashboard?{urlencode([('kpi', spec) for spec in specs])}"
            code, reason = 1000, "closed"
            try:
                with connect(url, additional_headers=self._headers(), open_timeout=open_timeout) as ws:
                    for raw in ws:
                        message = json.loads(raw)
                        failures = 0
                        if message.get("type") != "kpi_values":
                            continue
                        pushed = KpiMessage(
                            message["kpi_code"],
                            message["zone"],
                            message["grain"],
                            message["values"],
                            bool(message.get("backlog")),
                        )
                        if pushed.values:
                            last[pushed.key] = pushed.values[-1]["period_start"]
                        yield pushed
            except ConnectionClosed as exc:
                code = exc.rcvd.code if exc.rcvd else 1006
                reason = (exc.rcvd.reason if exc.rcvd else "") or "connection lost"
            except InvalidStatus as exc:  # refused with an HTTP answer (a proxy, an overloaded server)
                status = exc.response.status_code
                raise StreamClosed(status, "rejected", f"KPI stream refused with HTTP {status}") from None
            except (OSError, TimeoutError) as exc:  # refused or timed out while (re)connecting
                code, reason = 1006, str(exc) or type(exc).__name__
            failures += 1
            if code == 4401 and self._can_refresh_token() and failures <= max_reconnects:
                self.refresh()  # the access token expired while streaming
                continue
            if not resume or code not in (1000, 1001, 1006, 1011, 1012, 1013) or failures > max_reconnects:
                raise StreamClosed(code, reason, f"KPI stream closed ({code} {reason})")
            time.sleep(min(0.2 * 2**failures, 5.0))

    # --- forecasts on demand --------------------------------------------------------------------
    def create_forecast(
        self,
        zone: str,
        *,
        horizon_hours: int = 24,
        target: Target = "price",
        start_date: date | str | None = None,
        time_limit_s: float = 300.0,
    ) -> ForecastJob:
        """Queue a forecast of `zone` from its gold history (`POST /forecasts`, 202); poll with
        `forecast_job` or wait with `wait_for_forecast`."""
        body: dict[str, Any] = {
            "zone": zone,
            "target": target,
            "horizon_hours": horizon_hours,
            "time_limit_s": time_limit_s,
        }
        if start_date is not None:
            body["start_date"] = start_date.isoformat() if isinstance(start_date, date) else start_date
        return self._queued(self._send("POST", "/forecasts", json=body))

    def create_series_forecast(
        self,
        timestamps: Sequence[datetime | str],
        values: Sequence[float],
        *,
        exogenous: Mapping[str, Sequence[float]] | None = None,
        future_exogenous: Mapping[str, Sequence[float]] | None = None,
        horizon_hours: int = 24,
        target: Target = "price",
        timezone: str = "UTC",
        time_limit_s: float = 300.0,
    ) -> ForecastJob:
        """Queue a forecast of an uploaded hourly series with exogenous columns (their horizon values in
        `future_exogenous`)."""
        body = {
            "series": {
                "timestamps": [t.isoformat() if isinstance(t, datetime) else t for t in timestamps],
                "values": list(values),
                "exogenous": {k: list(v) for k, v in (exogenous or {}).items()},
            },
            "future_exogenous": {k: list(v) for k, v in (future_exogenous or {}).items()},
            "target": target,
            "horizon_hours": horizon_hours,
            "timezone": timezone,
            "time_limit_s": time_limit_s,
        }
        return self._queued(self._send("POST", "/forecasts", json=body))

    def forecast_job(self, job_id: str) -> ForecastJob:
        """The job's state, and its result once finished (`GET /forecasts/jobs/{job_id}`)."""
        return ForecastJob.from_json(self._send("GET", f"/forecasts/jobs/{job_id}"))

    def wait_for_forecast(self, job_id: str, *, timeout: float = 900.0, poll_seconds: float = 1.0) -> ForecastJob:
        """Poll until the job has finished (succeeded, failed or timed out); TimeoutError after `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.forecast_job(job_id)
            if job.finished:
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"forecast job {job_id} still {job.status} after {timeout:.0f} s")
            time.sleep(poll_seconds)

    def forecast(
        self, zone: str, *, horizon_hours: int = 24, target: Target = "price", timeout: float = 900.0
    ) -> ForecastJob:
        """Queue a zone forecast and wait for it."""
        job = self.create_forecast(zone, horizon_hours=horizon_hours, target=target)
        return self.wait_for_forecast(job.job_id, timeout=timeout)

    # --- plumbing -------------------------------------------------------------------------------
    def _headers(self) -> dict[str, str]:
        if self.api_key:
            return {"X-API-Key": self.api_key}
        if self.access_token:
            return {"Authorization": f"Bearer {self.access_token}"}
        return {}

    def _can_refresh_token(self) -> bool:
        return bool(self.refresh_token) and not self.api_key

    def _can_refresh(self, resp: httpx.Response) -> bool:
        if not self._can_refresh_token():
            return False
        try:
            resp.read()
            return resp.json().get("code") == "invalid_token"
        except (ValueError, httpx.HTTPError):
            return False

    def _send(self, method: str, path: str, *, auth: bool = True, **kwargs: Any) -> Any:
        for attempt in range(2):
            resp = self.http.request(method, API_PREFIX + path, headers=self._headers() if auth else None, **kwargs)
            if resp.status_code == 401 and auth and attempt == 0 and self._can_refresh(resp):
                self.refresh()
                continue
            if resp.status_code >= 400:
                raise _error(resp)
            return resp.json()
        raise AssertionError("unreachable")

    def _take_tokens(self, body: dict[str, Any]) -> None:
        self.access_token = body["access_token"]
        self.refresh_token = body["refresh_token"]

    def _queued(self, accepted: dict[str, Any]) -> ForecastJob:
        return ForecastJob(job_id=accepted["job_id"], status=accepted["status"], time_limit_s=accepted["time_limit_s"])

    @staticmethod
    def _params(
        filters: Mapping[str, Any], start: TimeArg, end: TimeArg, fields: Sequence[str] | None
    ) -> dict[str, Any]:
        params = {k: v for k, v in filters.items() if v is not None}
        if start is not None:
            params["from"] = _iso(start)
        if end is not None:
            params["to"] = _iso(end)
        if fields:
            params["fields"] = ",".join(fields)
        return params

    def _page(
        self,
        path: str,
        filters: Mapping[str, Any],
        start: TimeArg,
        end: TimeArg,
        fields: Sequence[str] | None,
        limit: int,
        cursor: str | None,
    ) -> Page[Any]:
        params = self._params(filters, start, end, fields)
        params["limit"] = limit
        if cursor:
            params["cursor"] = cursor
        body = self._send("GET", path, params=params)
        return Page(data=body["data"], next_cursor=body["next_cursor"], count=body["count"])


def _iso(value: datetime | date | str) -> str:
    return value.isoformat() if isinstance(value, datetime | date) else value


def _error(resp: httpx.Response) -> OptiBidError:
    try:
        body = resp.json()
        return OptiBidError(resp.status_code, body.get("code", "error"), body.get("message", ""), body.get("details"))
    except ValueError:
        return OptiBidError(resp.status_code, "error", resp.text[:200])
