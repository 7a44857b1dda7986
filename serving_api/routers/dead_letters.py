"""CDC dead letters for admins and analysts (`ingestion.cdc.dead_letters`), paged.

Dead letters live in the lake (`bronze/cdc__dead_letters`), not in Postgres, so row-level security cannot
scope them; this router applies the tenancy rule itself. A letter from a market-tick topic is public market
data; a letter from a trading-system (Debezium) topic belongs to the `org_id` of its `after`/`before`
image and is shown only to that organization. Letters whose organization cannot be read (bytes that are
not JSON, envelopes without an image) could belong to anyone: they are counted in `withheld` but their raw
bytes are not served (operators read them with `optibid ingest cdc dead-letters`).
"""

from __future__ import annotations

import asyncio
import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field

from infra.lake import Lake, lake_from_settings
from infra.retention import read_archived_lake_rows
from ingestion.cdc import dead_letters, route_for
from serving_api.deps import Principal, api_state, authenticate
from serving_api.errors import STANDARD_ERRORS, ApiError, error_responses
from serving_api.models import Page
from serving_api.repository import decode_cursor, encode_cursor
from serving_api.security import Role

router = APIRouter(tags=["ingestion"], responses=error_responses(*STANDARD_ERRORS))
_ROLES = (Role.admin, Role.analyst)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class DeadLetter(BaseModel):
    topic: str
    partition: int
    offset: int
    target_table: str | None = Field(description="Bronze table the record was meant for.")
    reason_code: str
    reason: str
    key_b64: str | None = Field(description="The raw Kafka key, base64.")
    raw: str | None = Field(description="The raw Kafka value, base64 (null for a tombstone).")
    kafka_timestamp: datetime | None
    ingested_at: datetime
    batch_id: str | None
    org_id: str | None = Field(description="Owning organization; null for public market-data topics.")


class DeadLetterPage(Page):
    data: list[DeadLetter]
    withheld: int = Field(description="Letters in the selection whose organization cannot be determined (not served).")


def _image_org(value_b64: str | None) -> tuple[bool, str | None]:
    """(known, org_id) of a Debezium value: the org of its after/before image."""
    if value_b64 is None:
        return False, None
    try:
        doc = json.loads(base64.b64decode(value_b64))
    except (ValueError, UnicodeDecodeError):
        return False, None
    if isinstance(doc, dict) and isinstance(doc.get("payload"), dict):
        doc = doc["payload"]
    if not isinstance(doc, dict):
        return False, None
    for image in (doc.get("after"), doc.get("before")):
        if isinstance(image, dict) and isinstance(image.get("org_id"), str):
            return True, image["org_id"]
    return False, None


def _owner(topic: str, value_b64: str | None) -> tuple[bool, str | None]:
    try:
        kind = route_for(topic).kind
    except ValueError:
        return False, None
    return (True, None) if kind == "ticks" else _image_org(value_b64)


def _ts(value: Any) -> datetime | None:
    if value is None or pd.isna(value):
        return None
    ts = pd.Timestamp(value).to_pydatetime()
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def _sort_key(d: dict[str, Any]) -> tuple:
    # Newest first, then Kafka order: a total order, so the keyset cursor is exact (integer microseconds).
    return (
        -((d["ingested_at"] - _EPOCH) // timedelta(microseconds=1)),
        d["topic"],
        d["partition"],
        d["offset"],
    )


ARCHIVED_LETTERS_TABLE = "cdc__dead_letters"  # the bronze table ingestion.cdc writes dead letters to


def _with_archived(
    lake: Lake, archive_uri: str, frame: pd.DataFrame, since: datetime | None, topic: str | None
) -> pd.DataFrame:
    """`frame` (hot letters, newest first) followed by the letters retention moved to the cold tier
    (infra/retention.py), filtered and ordered the same way: all of them are older than every hot one."""
    archived = read_archived_lake_rows(lake, archive_uri, ARCHIVED_LETTERS_TABLE)
    if archived is None or archived.num_rows == 0:
        return frame
    if since is not None:
        archived = archived.filter(
            pc.greater_equal(archived["_ingested_at"], pa.scalar(since, archived["_ingested_at"].type))
        )
    if topic is not None:
        archived = archived.filter(pc.equal(archived["_topic"], topic))
    archived = archived.sort_by([("_ingested_at", "descending"), ("_topic", "ascending"), ("_offset", "ascending")])
    cold = archived.to_pandas()
    if frame.empty:
        return cold
    return pd.concat([frame, cold[list(frame.columns)]], ignore_index=True)


def _visible_letters(frame: pd.DataFrame, org_id: str) -> tuple[list[dict[str, Any]], int]:
    out, withheld = [], 0
    for r in frame.to_dict("records"):
        known, owner = _owner(r["_topic"], r["value_b64"])
        if not known:
            withheld += 1
            continue
        if owner is not None and owner != org_id:
            continue
        out.append(
            {
                "topic": r["_topic"],
                "partition": int(r["_partition"]),
                "offset": int(r["_offset"]),
                "target_table": r["target_table"],
                "reason_code": r["reason_code"],
                "reason": r["reason"],
                "key_b64": r["key_b64"],
                "raw": r["value_b64"],
                "kafka_timestamp": _ts(r["_kafka_timestamp"]),
                "ingested_at": _ts(r["_ingested_at"]),
                "batch_id": r["_batch_id"],
                "org_id": owner,
            }
        )
    out.sort(key=_sort_key)
    return out, withheld


@router.get(
    "/ingestion/dead-letters",
    response_model=DeadLetterPage,
    summary="CDC records that could not be ingested, with reason and raw bytes (admin, analyst)",
)
async def cdc_dead_letters(
    request: Request,
    principal: Annotated[Principal, Depends(authenticate)],
    since: Annotated[datetime | None, Query(description="Only letters ingested at or after (UTC)")] = None,
    topic: Annotated[str | None, Query(max_length=249, pattern=r"^[A-Za-z0-9._\-]+$")] = None,
    limit: Annotated[int, Query(ge=1, le=10_000, description="Letters per page")] = 100,
    cursor: Annotated[
        str | None,
        Query(max_length=2000, pattern=r"^[A-Za-z0-9_\-]*$", description="next_cursor of the previous page"),
    ] = None,
):
    if principal.role not in _ROLES:
        raise ApiError(403, "forbidden", f"role '{principal.role}' may not read dead letters (admin, analyst)")
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    after = decode_cursor(cursor, ["timestamptz", "text", "integer", "bigint"]) if cursor else None
    lake = lake_from_settings(api_state(request).settings)
    try:
        frame = await asyncio.to_thread(dead_letters, lake, since, topic)
        archive_uri = api_state(request).settings.resolved_archive_uri
        frame = await asyncio.to_thread(_with_archived, lake, archive_uri, frame, since, topic)
    except (ValueError, OverflowError) as exc:
        raise ApiError(400, "bad_request", f"since: {exc}") from None
    rows, withheld = _visible_letters(frame, principal.org_id)
    if after is not None:
        start = _sort_key(dict(zip(("ingested_at", "topic", "partition", "offset"), after, strict=True)))
        rows = [r for r in rows if _sort_key(r) > start]
    page, more = rows[:limit], len(rows) > limit
    next_cursor = None
    if more:
        last = page[-1]
        next_cursor = encode_cursor([last["ingested_at"], last["topic"], last["partition"], last["offset"]])
    return {"data": page, "next_cursor": next_cursor, "count": len(page), "withheld": withheld}
