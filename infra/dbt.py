"""The gold dbt project as seen from Python: where it lives, its connection variables, and commands.

What belongs here: the project's paths, `dbt_env` (the connection variables of a dbt process), the artifacts
folders and saved parse of the pipeline's dbt invocations, and running plain dbt commands (`parse`, `docs
generate`). What does not: the dbt assets and their translator (`assets/gold.py`); nothing here imports Dagster.

The dbt profile (`dbt_project/profiles.yml`) reads its connection fields from `OPTIBID_DBT_*` variables;
`dbt_env` derives them from the warehouse URL so one setting (`OPTIBID_DATABASE_URL`, or the embedded
server's URL) drives dbt too. Commands run here hand them to the dbt process; a pipeline run, whose dbt
subprocess inherits its environment, sets them in its own, with the partition window for the length of the
invocation (`dbt_process_env`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import date
from pathlib import Path

from infra.db import url_parts

DBT_PROJECT_DIR = Path(__file__).resolve().parents[1] / "dbt_project"
DBT_TARGET_DIR = DBT_PROJECT_DIR / "target"
DBT_MANIFEST = DBT_TARGET_DIR / "manifest.json"
PARTIAL_PARSE = "partial_parse.msgpack"
# Each run's dbt invocation writes its artifacts into a folder of its own here (several run at once).
DBT_RUN_TARGETS = DBT_TARGET_DIR / "runs"
# dbt's parse state per warehouse: dbt reuses a saved parse only for the same connection profile.
PARTIAL_PARSE_CACHE = DBT_TARGET_DIR / "partial_parse"
# The partition window of a run, read by the `partition_bounds` macro when executing (never when parsing).
WINDOW_ENV = ("OPTIBID_DBT_MIN_DATE", "OPTIBID_DBT_MAX_DATE")


class DbtCommandError(RuntimeError):
    """A dbt command exited non-zero; the message carries the tail of its output."""


def dbt_env(database_url: str) -> dict[str, str]:
    """The `OPTIBID_DBT_*` variables the dbt profile reads, for the database at `database_url`: the caller
    passes them to the dbt process it starts."""
    parts = url_parts(database_url)
    return {
        "OPTIBID_DBT_HOST": parts["host"],
        "OPTIBID_DBT_PORT": parts["port"],
        "OPTIBID_DBT_USER": parts["user"],
        "OPTIBID_DBT_PASSWORD": parts["password"],
        "OPTIBID_DBT_DBNAME": parts["dbname"],
    }


def dbt_executable() -> str:
    """The `dbt` script of this interpreter's environment."""
    return str(Path(sys.executable).with_name("dbt"))


def run_dbt(
    args: Sequence[str],
    *,
    database_url: str | None = None,
    target_path: Path | None = None,
    dbt_vars: Mapping[str, object] | None = None,
) -> str:
    """Run one dbt command against the gold project; its output. Raises `DbtCommandError` on failure.

    Without `database_url` the profile's defaults are used, which is enough for `parse` (no connection).
    """
    import json

    command = [
        dbt_executable(),
        *args,
        "--project-dir",
        str(DBT_PROJECT_DIR),
        "--profiles-dir",
        str(DBT_PROJECT_DIR),
    ]
    if target_path is not None:
        command += ["--target-path", str(target_path)]
    if dbt_vars:
        command += ["--vars", json.dumps(dict(dbt_vars))]
    # The child inherits this environment (PATH, locale, ...) plus the connection fields.
    env = {**os.environ, "DBT_SEND_ANONYMOUS_USAGE_STATS": "false"}
    if database_url is not None:
        env.update(dbt_env(database_url))
    done = subprocess.run(command, cwd=DBT_PROJECT_DIR, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-40:])
        raise DbtCommandError(f"`dbt {' '.join(args)}` failed (exit {done.returncode}):\n{tail}")
    return done.stdout


def manifest_is_stale(manifest: Path) -> bool:
    """True when the manifest is missing or older than any file of the dbt project."""
    if not manifest.exists():
        return True
    built = manifest.stat().st_mtime
    sources = [DBT_PROJECT_DIR / "dbt_project.yml"]
    for folder in ("models", "macros", "seeds", "tests"):
        sources += [p for p in (DBT_PROJECT_DIR / folder).rglob("*") if p.is_file()]
    return any(p.stat().st_mtime > built for p in sources)


def run_target_path(name: str, database_url: str) -> Path:
    """A fresh artifacts folder for one dbt invocation of a pipeline run on `database_url`, seeded with the saved
    parse of the project for that warehouse (`save_parse_state`) so that dbt parses only what changed.

    dbt re-parses the whole project (seconds of CPU, on every run) when the connection profile differs from
    the saved parse's, and the parse `make install` saved is for no particular warehouse.
    """
    target = DBT_RUN_TARGETS / f"{name}-{uuid.uuid4().hex[:8]}"
    target.mkdir(parents=True)
    for saved in (_parse_state_path(database_url), DBT_TARGET_DIR / PARTIAL_PARSE):
        if saved.exists():
            shutil.copyfile(saved, target / PARTIAL_PARSE)
            break
    return target


def save_parse_state(target: Path, database_url: str) -> None:
    """Keep the parse of a finished invocation on `database_url` for the next ones, and drop its folder.

    The replace is atomic, so concurrent runs each leave a complete file.
    """
    parsed = target / PARTIAL_PARSE
    if parsed.exists():
        PARTIAL_PARSE_CACHE.mkdir(parents=True, exist_ok=True)
        staged = PARTIAL_PARSE_CACHE / f".{target.name}.tmp"
        shutil.copyfile(parsed, staged)
        os.replace(staged, _parse_state_path(database_url))
    shutil.rmtree(target, ignore_errors=True)


def _parse_state_path(database_url: str) -> Path:
    """The saved parse for the warehouse at `database_url` (its profile without the password)."""
    env = dbt_env(database_url)
    profile = "|".join(env[f"OPTIBID_DBT_{k}"] for k in ("HOST", "PORT", "USER", "DBNAME"))
    return PARTIAL_PARSE_CACHE / f"{hashlib.sha256(profile.encode()).hexdigest()[:16]}.msgpack"


@contextmanager
def dbt_process_env(database_url: str, window: tuple[date, date] | None = None) -> Iterator[None]:
    """This process's environment set for a dbt subprocess that inherits it (dagster-dbt passes no other): the
    connection (`dbt_env`, kept: a run talks to one warehouse) and the partition window, removed on exit.

    The window travels in the environment, not as `--vars`: dbt re-parses the whole project whenever the
    command-line vars differ from the saved parse's, which they do on every partition.
    """
    os.environ.update(dbt_env(database_url))
    if window is not None:
        os.environ.update(zip(WINDOW_ENV, (window[0].isoformat(), window[1].isoformat()), strict=True))
    try:
        yield
    finally:
        for key in WINDOW_ENV:
            os.environ.pop(key, None)


def prepare_manifest(target_path: Path = DBT_TARGET_DIR) -> Path:
    """Run `dbt parse` (no database needed) and return the manifest Dagster loads the assets from."""
    run_dbt(["parse", "--quiet"], target_path=target_path)
    return target_path / "manifest.json"


def dbt_docs_site(database_url: str, target_path: Path = DBT_TARGET_DIR) -> Path:
    """Generate the dbt docs (catalog from the live warehouse) and return the self-contained
    `static_index.html`; `index.html` next to it needs the JSON artifacts served from the same folder."""
    run_dbt(["docs", "generate", "--static"], database_url=database_url, target_path=target_path)
    site = target_path / "static_index.html"
    if not site.exists():
        raise DbtCommandError(f"dbt docs generate did not write {site}")
    return site
