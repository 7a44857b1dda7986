"""Operating-system process helpers shared by the embedded services.

What belongs here: whether a process is alive, whether a local port answers, a free port, stopping a process
group, and `RecordedProcess`, the one way an embedded server (the broker, ClickHouse) is remembered under
`<home>/run/<name>.json` so that a later command reuses it while it runs and `optibid services down` stops it.

What does not: how a particular server is configured and started (`infra/services.py` for Postgres and the
broker, `infra/clickhouse.py` for ClickHouse) and the platform's own processes (`app/platform.py`). Nothing
here imports another OptiBid module.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def pid_alive(pid: int) -> bool:
    """True while a process with this id exists (also when it belongs to another user)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    """True when something accepts TCP connections on `host:port`."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        return sock.connect_ex((host, port)) == 0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_exit(pid: int, timeout: float) -> bool:
    """Wait up to `timeout` seconds for `pid` to exit; True when it has."""
    deadline = time.monotonic() + timeout
    while pid_alive(pid) and time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):  # reap our own child so it does not linger as a zombie
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.1)
    return not pid_alive(pid)


def signal_process_group(pgid: int, sig: int) -> None:
    """Send `sig` to the process group `pgid`: the pid of a child started with `start_new_session=True`. The
    group is reached even after its leader has exited, so the leader's own children go too."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def stop_process_group(popen: subprocess.Popen, timeout: float) -> None:
    """Stop a child started with `start_new_session=True` and everything it started: SIGTERM to its group, SIGKILL
    after `timeout` seconds, then reap it."""
    if popen.poll() is not None:
        return
    signal_process_group(popen.pid, signal.SIGTERM)
    if not wait_for_exit(popen.pid, timeout):
        signal_process_group(popen.pid, signal.SIGKILL)
        wait_for_exit(popen.pid, 5)
    with contextlib.suppress(subprocess.TimeoutExpired):
        popen.wait(timeout=5)


def _signal_recorded(pid: int, sig: int) -> None:
    """Signal a recorded server's process group, or the process alone when it leads no group: an id that now
    belongs to an unrelated process must not take that process's group down with it."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)


@dataclass(frozen=True)
class RecordedProcess:
    """A background server this home started, remembered in a JSON file (`pid`, `port` and any details).

    The server outlives the command that started it; the record lets the next command find it again and
    `stop` end it.
    """

    path: Path

    def read(self) -> dict[str, Any] | None:
        """The record as written, whether or not its process still runs."""
        return json.loads(self.path.read_text()) if self.path.exists() else None

    def running(self) -> dict[str, Any] | None:
        """The record when its process is alive and its port accepts connections; a stale record is removed."""
        record = self.read()
        if record is None:
            return None
        if pid_alive(record["pid"]) and port_open("127.0.0.1", record["port"], timeout=1.0):
            return record
        self.path.unlink(missing_ok=True)
        return None

    def write(self, pid: int, port: int, **details: Any) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps({"pid": pid, "port": port, **details}))

    def stop(self, timeout: float) -> bool:
        """Stop the recorded server: SIGTERM to its process group, SIGKILL after `timeout` seconds. The record
        is removed; True when a live process was stopped."""
        record = self.read()
        if record is None:
            return False
        self.path.unlink()
        pid = record["pid"]
        if not pid_alive(pid):
            return False
        _signal_recorded(pid, signal.SIGTERM)
        if not wait_for_exit(pid, timeout):
            _signal_recorded(pid, signal.SIGKILL)
            wait_for_exit(pid, 5)
        return True
