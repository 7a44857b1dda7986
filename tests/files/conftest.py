"""Fixtures for the file-upload tests: a migrated Postgres database, a lake, and an ingest helper."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

FALLBACK_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


@pytest.fixture(scope="session")
def files_database_url(request: pytest.FixtureRequest) -> str:
    """The run's database from the root conftest when it has one, else a fresh `dev_files_test` database
    on the local server (127.0.0.1:5432); migrated either way."""
    from infra.db import create_database, migrate

    try:
        url = request.getfixturevalue("database_url")
    except pytest.FixtureLookupError:
        url = create_database(FALLBACK_ADMIN_URL, "dev_files_test", drop_existing=True)
    migrate(url)
    return url


@pytest.fixture
def files_lake(tmp_path: Path):
    from infra.lake import Lake

    return Lake(str(tmp_path / "lake"))


@pytest.fixture
def ingest(files_database_url: str, files_lake, tmp_path: Path) -> Callable[..., dict[str, Any]]:
    """Receive + process one file through the library's door; the upload report."""
    from ingestion.files.service import process_upload, receive_upload

    def run(path: Path, org_id: str = "org-test", **kwargs: Any) -> dict[str, Any]:
        receipt = receive_upload(
            path, path.name, org_id, database_url=files_database_url, storage_dir=tmp_path / "store"
        )
        return process_upload(receipt.upload_id, database_url=files_database_url, lake=files_lake, **kwargs)

    return run
