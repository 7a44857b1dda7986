"""Entry point of a drain's fetch process: `python -m ingestion.cdc.fetch_process` (started by `CdcConsumer`).

It runs `ingestion.cdc.fetch.main` with pandas made unimportable. A fetch process never uses pandas, but
pyarrow looks for it the first time it converts a Python object (`pa.scalar`, `pa.array`), and importing it
costs ~2 CPU seconds per process: on a drain of a few hundred thousand events, more than a tenth of the fetch
processes' CPU. pyarrow treats the ImportError as "pandas not installed".
"""

from __future__ import annotations

import sys
from importlib.machinery import ModuleSpec


class _NoPandas:
    """A meta-path finder that refuses pandas."""

    @staticmethod
    def find_spec(name: str, path: object = None, target: object = None) -> ModuleSpec | None:
        if name == "pandas" or name.startswith("pandas."):
            raise ModuleNotFoundError("pandas is not loaded in CDC fetch processes", name=name)
        return None


def run() -> None:
    """The fetch process, without pandas."""
    sys.meta_path.insert(0, _NoPandas)
    from ingestion.cdc.fetch import main

    main()


if __name__ == "__main__":
    run()
