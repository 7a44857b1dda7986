"""Optimization solves in worker processes the API can kill: a wall-clock limit that really stops the work.

A solve in a thread cannot be stopped: OR-Tools honours its own time limit, but model building (and a
library bug or a pathological input) does not, and the thread keeps burning the API worker's CPU share
after the client has been answered. Here each solve runs in one of `size` long-lived worker processes
(spawned on first use, lowered CPU priority via `os.nice`, so maximal solves yield the CPU to the API's
request handling). A solve that outlives its wall-clock limit is answered with `SolveTimeout` and its
process is killed (SIGKILL) and replaced; a worker that dies is replaced too. Admission: a caller waits at
most `queue_wait_s` for an idle worker, else `SolverBusy`.

This module only runs library code (`ml.optimization.solve` by default; any `module:function` of the libraries
as `target`, e.g. the on-demand forecast job); HTTP answers are the router's business.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from pydantic import BaseModel, ValidationError


class SolverBusy(Exception):
    """No solver process became free within the admission wait."""


class SolveTimeout(Exception):
    """The solve ran past its wall-clock limit; its process was killed."""

    def __init__(self, elapsed_s: float) -> None:
        super().__init__(f"solve killed after {elapsed_s:.2f} s")
        self.elapsed_s = elapsed_s


class SolveValidationError(Exception):
    """The library rejected a derived sub-problem (pydantic errors, as plain dicts)."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__("invalid optimization input")
        self.errors = errors


class SolverCrashed(Exception):
    """The worker died or the library raised something unexpected."""


SOLVE_TARGET = "ml.optimization:solve"


def _serve(conn: Connection, nice: int, target: str = SOLVE_TARGET) -> None:
    """Worker process main loop: receive the arguments of `target`, answer ("ok" | "invalid" | "error", payload)."""
    import importlib

    with contextlib.suppress(OSError):
        os.nice(nice)
    module, _, name = target.partition(":")
    function = getattr(importlib.import_module(module), name)

    conn.send(("ready", os.getpid()))  # imports done: from here on, wall time is solve time
    while True:
        try:
            args = conn.recv()
        except (EOFError, OSError):  # the API process closed the pipe or went away
            return
        try:
            conn.send(("ok", function(*args)))
        except ValidationError as exc:
            errors = [{"msg": str(e.get("msg", "")), "loc": [str(p) for p in e.get("loc", ())]} for e in exc.errors()]
            conn.send(("invalid", errors))
        except Exception as exc:  # a library bug must not kill the worker's protocol
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


STARTUP_TIMEOUT_S = 120.0


async def _readable(conn: Connection, timeout_s: float) -> bool:
    """Whether `conn` has something to read (or was closed by the peer) within `timeout_s`."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()
    fd = conn.fileno()
    loop.add_reader(fd, lambda: ready.done() or ready.set_result(None))
    try:
        await asyncio.wait_for(ready, timeout_s)
        return True
    except TimeoutError:
        return False
    finally:
        loop.remove_reader(fd)
        # The event loop made the fd non-blocking; `recv` of a multi-chunk message needs it blocking again.
        os.set_blocking(fd, True)


@dataclass(eq=False)
class _Worker:
    process: Any  # multiprocessing.context.SpawnProcess
    conn: Connection
    ready: bool = False


class SolverProcesses:
    """A fixed set of killable solver processes shared by the requests of one API process."""

    def __init__(self, size: int, *, nice: int = 10, queue_wait_s: float = 5.0, target: str = SOLVE_TARGET) -> None:
        self.size = size
        self.nice = nice
        self.queue_wait_s = queue_wait_s
        self.target = target
        self._ctx = multiprocessing.get_context("spawn")
        self._idle: asyncio.Queue[_Worker] | None = None
        self._all: set[_Worker] = set()
        self.killed = 0  # solves stopped by the wall-clock limit (for metrics and tests)

    def _spawn(self) -> _Worker:
        parent, child = self._ctx.Pipe()
        process = self._ctx.Process(
            target=_serve, args=(child, self.nice, self.target), name="optibid-solver", daemon=True
        )
        process.start()
        child.close()
        worker = _Worker(process, parent)
        self._all.add(worker)
        return worker

    def _ensure_started(self) -> asyncio.Queue[_Worker]:
        if self._idle is None:
            self._idle = asyncio.Queue()
            for _ in range(self.size):
                self._idle.put_nowait(self._spawn())
        return self._idle

    def _discard(self, worker: _Worker) -> None:
        self._all.discard(worker)
        with contextlib.suppress(Exception):
            worker.conn.close()
        if worker.process.is_alive():
            worker.process.kill()
        worker.process.join(timeout=0)  # reaped here or by the next spawn (multiprocessing reaps children)

    async def solve(self, inp: BaseModel, options: Any, timeout_s: float) -> BaseModel:
        """The library's result for `inp`; raises SolverBusy, SolveTimeout, SolveValidationError, SolverCrashed."""
        return await self.call((inp, options), timeout_s)

    async def call(self, args: tuple[Any, ...], timeout_s: float) -> Any:
        """`target(*args)` in a worker; raises SolverBusy, SolveTimeout, SolveValidationError, SolverCrashed."""
        idle = self._ensure_started()
        try:
            worker = await asyncio.wait_for(idle.get(), self.queue_wait_s)
        except TimeoutError:
            raise SolverBusy() from None
        started = time.monotonic()
        replace = True
        try:
            if not worker.ready:  # a fresh process still importing OR-Tools: not the request's solve time
                if not await _readable(worker.conn, STARTUP_TIMEOUT_S):
                    raise SolverCrashed("the solver process did not start")
                self._recv(worker)
                worker.ready = True
                started = time.monotonic()
            worker.conn.send(args)
            if not await _readable(worker.conn, timeout_s):
                self.killed += 1
                raise SolveTimeout(time.monotonic() - started)
            kind, payload = self._recv(worker)
            replace = False
        finally:
            if replace:  # timed out, crashed or cancelled mid-solve: the process may still be busy
                self._discard(worker)
                worker = self._spawn()
            idle.put_nowait(worker)
        if kind == "invalid":
            raise SolveValidationError(payload)
        if kind == "error":
            raise SolverCrashed(payload)
        return payload

    @staticmethod
    def _recv(worker: _Worker) -> tuple[str, Any]:
        try:
            return worker.conn.recv()
        except (EOFError, OSError) as exc:
            raise SolverCrashed("the solver process died") from exc

    def close(self) -> None:
        for worker in list(self._all):
            self._discard(worker)
        for worker in list(self._all):
            worker.process.join(timeout=1)
        self._all.clear()
        self._idle = None
