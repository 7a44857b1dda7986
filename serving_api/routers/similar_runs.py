"""GET /optimization/runs/{run_id}/similar: the caller's past runs whose inputs are nearest to a run's.

Nearness is the cosine distance between the runs' input embeddings (`ml.optimization.embedding`: price or
load shape, level, horizon, asset parameters and constraints), within the same problem. The answer says how
it was searched: `pgvector` (the server has the extension; an exact ordered scan by its `<=>` operator) or
`exact_scan` (no pgvector: the newest `serving_api.similarity.MAX_EXACT_SCAN` runs compared in the API).
Row-level security limits both the run asked about and its neighbours to the caller's organization: another
organization's run id is a 404, exactly like an unknown one.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path, Query
from pydantic import BaseModel, Field

from ml.optimization import EMBEDDING_DIM, EMBEDDING_VERSION
from serving_api import similarity
from serving_api.deps import OrgSession, scoped
from serving_api.errors import STANDARD_ERRORS, ApiError, error_responses
from serving_api.models import CODE_PATTERN
from serving_api.security import Permission

MAX_NEIGHBOURS = 50

router = APIRouter(tags=["optimization"], responses=error_responses(*STANDARD_ERRORS, 404))
Session = Annotated[OrgSession, Depends(scoped(Permission.org_read))]


class SimilarRun(BaseModel):
    run_id: str
    distance: float = Field(description="Cosine distance of the input embeddings (0 = same shape and size).")
    problem: str
    status: str
    objective: float | None
    solve_time_s: float
    hit_time_limit: bool
    created_at: datetime


class SimilarRunsResponse(BaseModel):
    run_id: str
    problem: Literal["storage_dispatch", "bid_curves", "unit_commitment"]
    search: Literal["pgvector", "exact_scan"] = Field(
        description="pgvector: the server's vector extension ordered the runs; exact_scan: the server has no "
        "pgvector, the API compared the stored embeddings itself."
    )
    embedding_version: int = EMBEDDING_VERSION
    embedding_dim: int = EMBEDDING_DIM
    neighbours: list[SimilarRun]


@router.get(
    "/optimization/runs/{run_id}/similar",
    response_model=SimilarRunsResponse,
    summary="Past optimization runs whose inputs are most similar to this run's",
)
async def similar_runs(
    session: Session,
    run_id: Annotated[str, Path(pattern=CODE_PATTERN)],
    k: Annotated[int, Query(ge=1, le=MAX_NEIGHBOURS, description="How many neighbours.")] = 5,
) -> SimilarRunsResponse:
    conn = await session.conn()
    found = await similarity.stored_embedding(conn, run_id)
    if found is None:
        raise ApiError(
            404, "not_found", f"run_id: no optimization run {run_id!r} with a valid input", {"field": "run_id"}
        )
    problem, query = found
    method, neighbours = await similarity.nearest_runs(conn, problem, query, k, exclude=run_id)
    summaries = await similarity.run_summaries(conn, [n.run_id for n in neighbours])
    return SimilarRunsResponse(
        run_id=run_id,
        problem=problem,  # type: ignore[arg-type]
        search=method,  # type: ignore[arg-type]
        neighbours=[
            SimilarRun(distance=round(n.distance, 9), **summaries[n.run_id])
            for n in neighbours
            if n.run_id in summaries
        ],
    )
