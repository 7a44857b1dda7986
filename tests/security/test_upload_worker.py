"""Unrestricted resource consumption (OWASP API4), uploads: a large upload is processed outside the API
process (a child process with its own connections), and the request's pooled connection is back at once."""

from __future__ import annotations

from tests.security.conftest import V1


def test_large_upload_is_processed_in_a_child_process(client, auth, monkeypatch):
    from ingestion import files
    from ingestion.files import service
    from serving_api.routers import uploads as uploads_router

    def not_here(*args, **kwargs):
        raise AssertionError("a large upload was processed inside the API process")

    monkeypatch.setattr(uploads_router, "INLINE_MAX_BYTES", 0)  # every upload counts as large
    # the API process's copies (the package's, which the router calls, and the module's) must stay unused
    monkeypatch.setattr(files, "process_upload", not_here)
    monkeypatch.setattr(service, "process_upload", not_here)
    headers = auth("org_a", "trader")
    content = b"timestamp,zone,market,price (EUR/MWh)\n2024-02-03 05:00,NP,DA,40.0\n2024-02-03 06:00,NP,DA,41.0\n"
    resp = client.post(f"{V1}/uploads", headers=headers, files={"file": ("big.csv", content)})
    assert resp.status_code == 202, resp.text
    assert resp.json()["status"] == "received"
    pool = client.app.state.api.pool
    assert pool.get_stats()["pool_available"] == pool.get_stats()["pool_size"]  # nothing held by the upload
    # The TestClient returns once the background task (waiting for the child process) has run.
    report = client.get(f"{V1}/uploads/{resp.json()['id']}", headers=headers).json()
    assert (report["status"], report["rows_landed"]) == ("landed", 2), report
