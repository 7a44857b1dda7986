"""The one `Definitions` loads, validates with `dg check defs`, imports no private Dagster module, and its
modules import each other without cycles at any depth. Which layer may import which is the import-linter
contracts' job (`tests/foundation/test_layers.py`)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg

REPO = Path(__file__).resolve().parents[2]


def test_definitions_load_and_resolve() -> None:
    from orchestration.definitions import defs

    assert isinstance(defs, dg.Definitions)
    repo = defs.get_repository_def()  # resolves every asset, check, job, schedule and sensor
    keys = {key.to_user_string() for key in repo.asset_graph.get_all_asset_keys()}
    assert "silver/ref__zones" in keys


def test_dg_check_defs_passes() -> None:
    venv = Path(sys.executable).parent.parent
    result = subprocess.run(
        [str(venv / "bin" / "dg"), "check", "defs"],
        cwd=REPO,
        env={**os.environ, "VIRTUAL_ENV": str(venv)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "All definitions loaded successfully" in result.stdout + result.stderr


def test_no_private_dagster_imports() -> None:
    offenders = [
        str(path.relative_to(REPO))
        for folder in ("orchestration", "assets", "serving_api")
        for path in (REPO / folder).rglob("*.py")
        if "dagster._" in path.read_text()
    ]
    assert not offenders, offenders


def _imports(folders: tuple[str, ...]) -> dict[str, set[str]]:
    """Module -> the project modules it imports (any depth: function-level imports count too)."""
    modules: dict[str, Path] = {}
    for folder in folders:
        for path in (REPO / folder).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    found: dict[str, set[str]] = {}
    for module, path in modules.items():
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module)
                names |= {f"{node.module}.{alias.name}" for alias in node.names}
        found[module] = {n for n in names if n in modules and n != module}
    return found


def test_dagster_layer_has_no_import_cycles() -> None:
    imports = _imports(("assets", "orchestration"))
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for name in sorted(imports.get(module, ())):
            if state.get(name) == 1:
                cycles.append([*path[path.index(name):], name] if name in path else [module, name])
            elif name not in state:
                visit(name, [*path, name])
        state[module] = 2

    for module in sorted(imports):
        if module not in state:
            visit(module, [module])
    assert not cycles, f"import cycles: {cycles}"


def test_a_partition_window_reads_as_market_dates_with_both_ends_included() -> None:
    from datetime import date

    from assets.shared.partitions import MarketDateWindow, daily_partitions, market_date_window

    seen: list[MarketDateWindow] = []

    @dg.asset(partitions_def=daily_partitions, backfill_policy=dg.BackfillPolicy.single_run())
    def probe(context) -> None:  # unannotated: this module postpones annotations, Dagster reads them
        seen.append(market_date_window(context))

    tags = {"dagster/asset_partition_range_start": "2024-03-30", "dagster/asset_partition_range_end": "2024-04-01"}
    assert dg.materialize([probe], tags=tags).success
    assert dg.materialize([probe], partition_key="2024-03-31").success
    assert [(w.first, w.last) for w in seen] == [
        (date(2024, 3, 30), date(2024, 4, 1)),
        (date(2024, 3, 31), date(2024, 3, 31)),
    ]
    assert seen[0].dates == [date(2024, 3, 30), date(2024, 3, 31), date(2024, 4, 1)]


def test_runs_that_build_an_asset_with_a_suite_are_the_ones_that_import_it_early() -> None:
    """The suite checks are steps of their own: whether a step imports the suites' library in the background
    is decided by the run's assets, and every suite-checked asset counts (silver, gold, bronze), no other."""
    import dagster as dg

    import orchestration.definitions as definitions
    from assets.shared.expectation_checks import _ASSETS_WITH_SUITES

    suites = {
        check.key.asset_key
        for checks in definitions.defs.asset_checks or []
        for check in checks.check_specs
        if check.key.name.endswith("_expectations")
    }
    assert suites and suites == _ASSETS_WITH_SUITES
    assert dg.AssetKey(["gold", "fct_prices_hourly"]) in _ASSETS_WITH_SUITES
    assert dg.AssetKey(["silver", "trading__bids"]) in _ASSETS_WITH_SUITES
    assert dg.AssetKey(["gold", "stg_trading__assets"]) not in _ASSETS_WITH_SUITES
