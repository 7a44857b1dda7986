"""Alerts of the caller's organization and platform alerts (ops.alerts, raised by the pipeline's sensors).

Row-level security decides what exists: the caller's organization's alerts and platform alerts (org_id
NULL). Newest activity first (`last_seen`), keyset pages through `cursor`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field

from serving_api import repository
from serving_api.deps import OrgSession, scoped
from serving_api.errors import STANDARD_ERRORS, ApiError, error_responses
from serving_api.models import Page
from serving_api.security import Permission

router = APIRouter(tags=["alerts"], responses=error_responses(*STANDARD_ERRORS))
Session = Annotated[OrgSession, Depends(scoped(Permission.org_read))]
AlertKindParam = Literal["run_failure", "check_failure", "freshness", "drift", "anomaly"]
MAX_LIMIT = 500


class AlertOut(BaseModel):
    alert_id: int
    status: Literal["open", "resolved"]
    org_id: str | None = Field(description="The organization the alert concerns; null for platform alerts.")
    kind: AlertKindParam
    severity: Literal["info", "warning", "error", "critical"]
    title: str
    dedup_key: str = Field(description="The condition: one open alert per key at a time.")
    asset_key: str | None
    partition: str | None
    first_seen: datetime
    last_seen: datetime
    occurrences: int = Field(description="How often the condition was seen while the alert was open.")
    resolved_at: datetime | None
    detail: dict[str, Any]
    resolution: dict[str, Any] | None
    notified_channels: int = Field(description="Channels that received the alert.")


class AlertPage(Page):
    data: list[AlertOut]


_ORDER_TYPES = ("timestamp with time zone", "bigint")


@router.get("/alerts", response_model=AlertPage, summary="Alerts of the caller's organization and the platform")
async def list_alerts(
    session: Session,
    status: Annotated[Literal["open", "resolved", "all"], Query(description="open, resolved or all")] = "open",
    kind: Annotated[AlertKindParam | None, Query(description="only alerts of this kind")] = None,
    since: Annotated[
        datetime | None, Query(description="only alerts seen at or after this time (UTC if no offset)")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="alerts per page")] = 100,
    cursor: Annotated[
        str | None,
        Query(max_length=200, pattern=r"^[A-Za-z0-9_\-]*$", description="next_cursor of the previous page"),
    ] = None,
):
    where, params = ["true"], []
    if status == "open":
        where.append("resolved_at IS NULL")
    elif status == "resolved":
        where.append("resolved_at IS NOT NULL")
    if kind:
        where.append("kind = %s")
        params.append(kind)
    if since is not None:
        try:
            since = since.replace(tzinfo=UTC) if since.tzinfo is None else since.astimezone(UTC)
        except (OverflowError, ValueError) as exc:
            raise ApiError(422, "validation_error", "since: timestamp out of range", {"field": "since"}) from exc
        where.append("last_seen >= %s")
        params.append(since)
    if cursor:
        last_seen, alert_id = repository.decode_cursor(cursor, _ORDER_TYPES)
        where.append("(last_seen, alert_id) < (%s, %s)")
        params += [last_seen, alert_id]
    rows = await repository.rows_of(
        await session.conn(),
        f"""SELECT alert_id, CASE WHEN resolved_at IS NULL THEN 'open' ELSE 'resolved' END AS status, org_id,
                   kind, severity, title, dedup_key, asset_key, partition, first_seen, last_seen, occurrences,
                   resolved_at, detail, resolution, cardinality(notified_channels) AS notified_channels
            FROM ops.alerts WHERE {" AND ".join(where)}
            ORDER BY last_seen DESC, alert_id DESC LIMIT %s""",
        [*params, limit + 1],
    )
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        next_cursor = repository.encode_cursor([rows[-1]["last_seen"], rows[-1]["alert_id"]])
    return {"data": rows, "next_cursor": next_cursor, "count": len(rows)}
