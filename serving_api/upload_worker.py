"""One upload processed in a process of its own: `python -m serving_api.upload_worker` reads a pickled
`(upload_id, database_url, settings)` from stdin (written by the API, never by a client) and runs
`ingestion.files.process_upload` with its own database connections, at a lowered CPU priority.

Why a process: parsing a large file is CPU- and memory-heavy Python; in the API process it would compete
with request handling for the GIL and could take the worker down with it. The exit status is 0 when the
upload was processed or another worker holds it, 1 when processing failed (the upload stays `received`,
and processing it again is safe).
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import sys

log = logging.getLogger("serving_api.upload_worker")
NICE = 10


def main() -> int:
    upload_id, database_url, settings = pickle.load(sys.stdin.buffer)  # from the API process
    with contextlib.suppress(OSError):
        os.nice(NICE)
    from infra.lake import lake_from_settings
    from ingestion import files

    try:
        files.process_upload(upload_id, database_url=database_url, lake=lake_from_settings(settings))
    except files.UploadError as exc:  # another worker holds it: that worker finishes it
        log.info("upload %s not processed here: %s", upload_id, exc)
    except Exception:
        log.exception("processing of upload %s failed", upload_id)
        return 1
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    sys.exit(main())
