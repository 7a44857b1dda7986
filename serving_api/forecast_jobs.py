"""On-demand forecast jobs off the request path: the job table's life cycle and the worker processes.

A job is a row of ml.forecast_jobs (the caller's organization; row-level security) that the request inserts
as `queued` and answers 202. An asyncio task of the same API process then runs it in one of
`OPTIBID_API_FORECAST_JOB_PROCESSES` killable worker processes (`serving_api.solver.SolverProcesses` with the
forecasting library's `run_forecast_job` as target, at a lower CPU priority): `running`, then `succeeded`
with the result, `failed` with the field and reason the pipeline gave, or `timed_out` when the job outlived
its time limit (its process is killed and replaced). At most `forecast_job_max_pending` jobs wait or run per
API process; beyond that a request gets 503. A job whose API process stopped before it finished (a restart)
is reported `failed` by the next read of it (`is_orphan`), never left `running` forever.

Results reach clients by polling `GET /forecasts/jobs/{id}` (any API process: the row is the truth) or on
`WS /ws/forecasts/jobs/{id}`, which waits on the in-process completion event of its job and re-reads the row
every `WS_RECHECK_SECONDS` (a job another API process runs finishes there).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any

from psycopg.rows import dict_row

from serving_api.org_scope import set_org_scope
from serving_api.solver import SolverBusy, SolverCrashed, SolverProcesses, SolveTimeout
from serving_api.state import ApiState

log = logging.getLogger(__name__)
JOB_TARGET = "ml.forecasting:run_forecast_job"
WS_RECHECK_SECONDS = 2.0
FINISHED = ("succeeded", "failed", "timed_out")
JOB_COLUMNS = "job_id, status, request, result, error, time_limit_s, created_at, started_at, finished_at, wall_seconds"


class ForecastJobsBusy(Exception):
    """This API process already holds its maximum of waiting and running jobs."""


class ForecastJobRunner:
    """The forecast jobs of one API process: their tasks, worker processes and completion events."""

    def __init__(self, state: ApiState) -> None:
        self.state = state
        options = state.options
        # Jobs wait for a worker for as long as they may run: the pending bound is the admission control.
        self.processes = SolverProcesses(
            state.settings.api_forecast_job_processes,
            nice=options.solver_nice,
            queue_wait_s=options.forecast_job_timeout_s,
            target=JOB_TARGET,
        )
        self.tasks: dict[str, asyncio.Task] = {}
        self.done: dict[str, asyncio.Event] = {}

    def admit(self) -> None:
        """Raise ForecastJobsBusy when no further job may be queued here."""
        if len(self.tasks) >= self.state.options.forecast_job_max_pending:
            raise ForecastJobsBusy()

    def start(self, job_id: str, org_id: str, request: dict[str, Any], time_limit_s: float) -> None:
        """Run an inserted (committed) job in the background."""
        self.done[job_id] = asyncio.Event()
        task = asyncio.create_task(self._run(job_id, org_id, request, time_limit_s), name=f"forecast-job-{job_id}")
        self.tasks[job_id] = task
        task.add_done_callback(lambda _: self._finished(job_id))

    def _finished(self, job_id: str) -> None:
        self.tasks.pop(job_id, None)
        event = self.done.pop(job_id, None)
        if event is not None:
            event.set()

    async def _update(self, org_id: str, job_id: str, sql: str, params: tuple[Any, ...]) -> None:
        assert self.state.pool is not None
        async with self.state.pool.connection() as conn, conn.transaction():
            await set_org_scope(conn, org_id)
            await conn.execute(sql, (*params, job_id))

    async def _run(self, job_id: str, org_id: str, request: dict[str, Any], time_limit_s: float) -> None:
        started = time.monotonic()
        status, result, error = "failed", None, None
        try:
            await self._update(
                org_id,
                job_id,
                "UPDATE ml.forecast_jobs SET status = 'running', started_at = now() WHERE job_id = %s",
                (),
            )
            answer = await self.processes.call((request, self.state.api_database_url, org_id), time_limit_s)
            status = answer["status"]
            result, error = answer.get("result"), answer.get("error")
        except SolveTimeout as exc:
            status = "timed_out"
            error = {
                "field": "time_limit_s",
                "message": f"the forecast did not finish within {time_limit_s:g} s and was stopped",
                "elapsed_s": round(exc.elapsed_s, 2),
            }
        except (SolverBusy, SolverCrashed) as exc:
            log.warning("forecast job %s failed in its worker: %s", job_id, exc)
            error = {"field": None, "message": "the forecasting worker failed on this job; try again later"}
        except asyncio.CancelledError:
            error = {"field": None, "message": "the API process stopped before the job finished; submit it again"}
            with contextlib.suppress(Exception):
                await asyncio.shield(self._finish(org_id, job_id, "failed", None, error, started))
            raise
        except Exception:
            log.exception("forecast job %s crashed", job_id)
            error = {"field": None, "message": "internal error while running the job"}
        await self._finish(org_id, job_id, status, result, error, started)

    async def _finish(self, org_id: str, job_id: str, status: str, result: Any, error: Any, started: float) -> None:
        await self._update(
            org_id,
            job_id,
            """UPDATE ml.forecast_jobs SET status = %s, result = %s::jsonb, error = %s::jsonb,
                   finished_at = now(), wall_seconds = %s WHERE job_id = %s""",
            (
                status,
                None if result is None else json.dumps(result),
                None if error is None else json.dumps(error),
                round(time.monotonic() - started, 3),
            ),
        )

    async def close(self) -> None:
        for task in list(self.tasks.values()):
            task.cancel()
        for task in list(self.tasks.values()):
            with contextlib.suppress(BaseException):
                await task
        self.processes.close()


def runner(state: ApiState) -> ForecastJobRunner:
    """The API process's job runner, created on first use."""
    if state.forecast_jobs is None:
        state.forecast_jobs = ForecastJobRunner(state)
    return state.forecast_jobs


async def read_job(conn: Any, job_id: str) -> dict[str, Any] | None:
    """The job row visible to the connection's organization (None when absent or another organization's)."""
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(f"SELECT {JOB_COLUMNS} FROM ml.forecast_jobs WHERE job_id = %s", (job_id,))
    return await cur.fetchone()


def is_orphan(state: ApiState, row: dict[str, Any]) -> bool:
    """A queued or running job that no live API process can still finish.

    This process knows its own tasks; any job is orphaned once it is older than the hardest time limit plus
    the longest wait for a worker plus a minute (a live process would have finished or timed it out by then).
    """
    if row["status"] in FINISHED:
        return False
    if state.forecast_jobs is not None and row["job_id"] in state.forecast_jobs.tasks:
        return False
    age = time.time() - row["created_at"].timestamp()
    return age > 2 * state.options.forecast_job_timeout_s + 60
