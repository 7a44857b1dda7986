"""Entry point of a drain's fetch process: `python -m ingestion.cdc.fetch_process` (started by `CdcConsumer`).

It runs `ingestion.cdc.fetch.main` with pandas and numpy made unimportable. A fetch process uses neither: it
decodes with msgspec, orjson and pyarrow's C++ kernels. pyarrow imports numpy with itself and looks for pandas
the first time it converts a Python object (`pa.scalar`, `pa.array`), and treats an ImportError of either as
"not installed". Measured here: pandas costs ~2 CPU seconds per process, numpy ~0.35 s of the ~0.7 s a fetch
process spends importing before its first fetch; on a drain of a few hundred thousand events, each is several
percent of the fetch processes' CPU and of the drain's wall time.
"""

from __future__ import annotations

import sys
from importlib.machinery import ModuleSpec

UNUSED_IN_FETCH_PROCESSES = ("pandas", "numpy")


class _Unimportable:
    """A meta-path finder that refuses the packages a fetch process does not use."""

    @staticmethod
    def find_spec(name: str, path: object = None, target: object = None) -> ModuleSpec | None:
        if name.partition(".")[0] in UNUSED_IN_FETCH_PROCESSES:
            raise ModuleNotFoundError(f"{name} is not loaded in CDC fetch processes", name=name)
        return None


def run() -> None:
    """The fetch process, without pandas and numpy."""
    sys.meta_path.insert(0, _Unimportable)
    from ingestion.cdc.fetch import main

    main()


if __name__ == "__main__":
    run()
