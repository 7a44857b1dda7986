"""The asset graph as reviewable text: a change to any asset's key, group, partitions, kinds, deps, checks,
automation condition or freshness policy shows as a diff of `snapshots/asset_graph.txt`.

The graph is rendered in a subprocess with fixed settings (no `.env`, no `OPTIBID_*` from the shell, and a
ClickHouse URL so the exports carry their automation condition), so the snapshot is the same on every
machine. After an intended change, regenerate it with

    OPTIBID_UPDATE_SNAPSHOTS=1 python -m pytest tests/foundation/test_asset_graph_snapshot.py

and review the diff with the change.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SNAPSHOT = Path(__file__).with_name("snapshots") / "asset_graph.txt"
UPDATE_VARIABLE = "OPTIBID_UPDATE_SNAPSHOTS"
# Settings that shape the graph, fixed for the rendering; every other OPTIBID_* variable is dropped.
RENDER_ENV = {
    "OPTIBID_PARTITION_START": "2024-01-01",
    "OPTIBID_PARTITION_TIMEZONE": "UTC",
    "OPTIBID_GATE_CLOSURE_LEAD_MINUTES": "120",
    "CLICKHOUSE_URL": "clickhouse://snapshot@localhost:9000/default",
}
_DROPPED_PREFIXES = ("OPTIBID_", "CLICKHOUSE_", "KAFKA_", "SPARK_", "MLFLOW_", "DAGSTER_")


# --- rendering (runs in the subprocess) -------------------------------------------------------------------


def _condition_lines(condition: Any, depth: int = 0) -> Iterator[str]:
    label = condition.get_label()
    description = condition.description or ""
    line = condition.name + (f" [{label}]" if label else "") + (f": {description}" if description else "")
    yield "  " * depth + line
    for child in condition.children:
        yield from _condition_lines(child, depth + 1)


def render() -> str:
    """The asset graph of `orchestration.definitions.defs`, one block per asset, then each distinct
    automation condition once, as a tree."""
    from orchestration.definitions import defs

    graph = defs.resolve_asset_graph()
    checks_by_asset: dict[str, list[str]] = {}
    for check_key in graph.asset_check_keys:
        flag = "blocking" if graph.get(check_key).blocking else "non-blocking"
        checks_by_asset.setdefault(check_key.asset_key.to_user_string(), []).append(f"{check_key.name} ({flag})")
    conditions: dict[str, list[str]] = {}
    blocks = []
    for spec in sorted(defs.resolve_all_asset_specs(), key=lambda s: s.key.to_user_string()):
        condition = "-"
        if spec.automation_condition is not None:
            tree = list(_condition_lines(spec.automation_condition))
            digest = hashlib.sha256("\n".join(tree).encode()).hexdigest()[:8]
            label = spec.automation_condition.get_label() or spec.automation_condition.name
            condition = f"{label} #{digest}"
            conditions[condition] = tree
        deps = [
            dep.asset_key.to_user_string() + (f" via {dep.partition_mapping!r}" if dep.partition_mapping else "")
            for dep in spec.deps
        ]
        blocks.append(
            "\n".join(
                [
                    spec.key.to_user_string(),
                    f"  group: {spec.group_name or '-'}",
                    f"  partitions: {spec.partitions_def or '-'}",
                    f"  kinds: {', '.join(sorted(spec.kinds)) or '-'}",
                    f"  deps: {', '.join(sorted(deps)) or '-'}",
                    f"  checks: {', '.join(sorted(checks_by_asset.get(spec.key.to_user_string(), []))) or '-'}",
                    f"  automation: {condition}",
                    f"  freshness: {spec.freshness_policy!r}" if spec.freshness_policy else "  freshness: -",
                ]
            )
        )
    trees = [f"{name}\n" + "\n".join("  " + line for line in tree) for name, tree in sorted(conditions.items())]
    return "\n\n".join(["# assets", *blocks, "# automation conditions", *trees]) + "\n"


# --- the test -------------------------------------------------------------------------------------------


def _render_in_subprocess(tmp_path: Path) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_DROPPED_PREFIXES)}
    env.update(RENDER_ENV, OPTIBID_HOME=str(tmp_path / "home"), PYTHONPATH=str(REPO))
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve())],
        cwd=tmp_path,  # no .env file here
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stdout


def test_asset_graph_matches_the_snapshot(tmp_path: Path) -> None:
    rendered = _render_in_subprocess(tmp_path)
    if os.environ.get(UPDATE_VARIABLE) == "1":
        SNAPSHOT.parent.mkdir(exist_ok=True)
        SNAPSHOT.write_text(rendered)
    assert SNAPSHOT.exists(), f"no snapshot yet: run with {UPDATE_VARIABLE}=1 to write {SNAPSHOT}"
    expected = SNAPSHOT.read_text()
    if rendered != expected:
        import difflib

        diff = "".join(
            difflib.unified_diff(
                expected.splitlines(keepends=True), rendered.splitlines(keepends=True), "snapshot", "definitions"
            )
        )
        raise AssertionError(
            f"the asset graph differs from {SNAPSHOT.relative_to(REPO)}. If the change is intended, run with "
            f"{UPDATE_VARIABLE}=1 to regenerate it and commit the diff:\n{diff[:20000]}"
        )


if __name__ == "__main__":
    sys.stdout.write(render())
