"""Nearest past optimization runs of the caller's organization, by the embedding of their inputs.

What belongs here: the two searches over ml.optimization_run_embeddings (pgvector's cosine-distance operator
where the server has the extension, else an exact scan of the stored float arrays, bounded to the newest
`MAX_EXACT_SCAN` runs of the problem), and the warm start of an on-demand unit commitment from its nearest
run. Both run on the request's organization-scoped connection, so row-level security keeps every
organization's runs to itself. The embedding itself is `ml.optimization.embedding`; the endpoint is
`serving_api.routers.similar_runs`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row
from pydantic import BaseModel

from ml.optimization import (
    EMBEDDING_VERSION,
    SolveOptions,
    UnitCommitmentInput,
    commitment_warm_start,
    nearest_by_exact_scan,
    record_input,
    run_embedding,
)

MAX_EXACT_SCAN = 20_000  # runs of one problem compared exactly without pgvector (newest first)
PGVECTOR = "pgvector"
EXACT_SCAN = "exact_scan"


@dataclass(frozen=True)
class Neighbour:
    run_id: str
    distance: float


async def search_method(conn: AsyncConnection) -> str:
    """`pgvector` when the embeddings table has its pgvector column (the extension was there at migration),
    else `exact_scan`."""
    row = await (
        await conn.execute(
            """SELECT 1 FROM information_schema.columns
               WHERE table_schema = 'ml' AND table_name = 'optimization_run_embeddings'
                 AND column_name = 'embedding'"""
        )
    ).fetchone()
    return PGVECTOR if row else EXACT_SCAN


async def stored_embedding(conn: AsyncConnection, run_id: str) -> tuple[str, list[float]] | None:
    """(problem, embedding) of a visible run: the stored one, else computed from its stored input (runs
    written before embeddings existed); None when the run is not visible or its input is not a valid one."""
    row = await (
        await conn.execute(
            """SELECT r.problem, e.features, e.embedding_version, r.inputs
               FROM ml.optimization_runs r LEFT JOIN ml.optimization_run_embeddings e USING (run_id)
               WHERE r.run_id = %s""",
            (run_id,),
        )
    ).fetchone()
    if row is None:
        return None
    problem, features, version, inputs = row
    if features is not None and version == EMBEDDING_VERSION:
        return problem, [float(x) for x in features]
    try:
        return problem, run_embedding(record_input({"problem": problem, "inputs": inputs}))
    except (ValueError, TypeError):
        return None


async def nearest_runs(
    conn: AsyncConnection, problem: str, query: list[float], k: int, exclude: str | None = None
) -> tuple[str, list[Neighbour]]:
    """(search method, the `k` nearest visible runs of `problem`, nearest first)."""
    method = await search_method(conn)
    if method == PGVECTOR:
        rows = await (
            await conn.execute(
                """SELECT run_id, embedding <=> %s::vector AS distance FROM ml.optimization_run_embeddings
                   WHERE problem = %s AND embedding_version = %s AND run_id IS DISTINCT FROM %s
                   ORDER BY distance, run_id LIMIT %s""",
                (str(query), problem, EMBEDDING_VERSION, exclude, k),
            )
        ).fetchall()
        return method, [Neighbour(r, float(d)) for r, d in rows]
    rows = await (
        await conn.execute(
            """SELECT run_id, features FROM ml.optimization_run_embeddings
               WHERE problem = %s AND embedding_version = %s AND run_id IS DISTINCT FROM %s
               ORDER BY created_at DESC LIMIT %s""",
            (problem, EMBEDDING_VERSION, exclude, MAX_EXACT_SCAN),
        )
    ).fetchall()
    ranked = nearest_by_exact_scan(query, [(r, f) for r, f in rows], k)
    return method, [Neighbour(r, d) for r, d in ranked]


async def run_summaries(conn: AsyncConnection, run_ids: list[str]) -> dict[str, dict[str, Any]]:
    """run_id -> problem, status, objective, solve time and creation time of visible runs."""
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        """SELECT run_id, problem, status, objective, solve_time_s, hit_time_limit, created_at
           FROM ml.optimization_runs WHERE run_id = ANY(%s)""",
        (run_ids,),
    )
    return {row["run_id"]: row for row in await cur.fetchall()}


async def warm_start_options(
    connect: Callable[[], Awaitable[AsyncConnection]], inp: BaseModel, options: SolveOptions
) -> tuple[SolveOptions, str | None]:
    """`options` with the nearest past unit commitment's schedule as warm start, and that run's id.

    Only unit commitment benefits (a MIP over on/off decisions); other problems are returned unchanged and
    `connect` (the request's organization-scoped connection) is not even opened for them.
    """
    if not isinstance(inp, UnitCommitmentInput):
        return options, None
    conn = await connect()
    _, found = await nearest_runs(conn, "unit_commitment", run_embedding(inp), 1)
    if not found:
        return options, None
    row = await (
        await conn.execute(
            "SELECT outputs FROM ml.optimization_runs WHERE run_id = %s AND status IN ('optimal', 'feasible')",
            (found[0].run_id,),
        )
    ).fetchone()
    commitment = commitment_warm_start(inp, row[0]) if row else {}
    if not commitment:
        return options, None
    return options.model_copy(update={"warm_start_commitment": commitment}), found[0].run_id
