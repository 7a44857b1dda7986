"""The deployment files can't run here (no container engine), so they are checked for what can drift:
every variable they give OptiBid's own containers is one the settings module reads."""

from __future__ import annotations

from pathlib import Path

import yaml

from infra.settings import Settings

DEPLOY = Path(__file__).resolve().parents[2] / "infra" / "deploy"


def settings_variables() -> set[str]:
    names: set[str] = set()
    for field in Settings.model_fields.values():
        alias = field.validation_alias
        if isinstance(alias, str):
            names.add(alias)
        elif alias is not None:
            names.update(str(choice) for choice in alias.choices)
    return names


def test_compose_sets_only_known_variables() -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    ours = {name: svc for name, svc in compose["services"].items() if svc.get("x-optibid")}
    assert {"user-code", "dagster-webserver", "dagster-daemon", "api"} <= set(ours)
    known = settings_variables()
    for name, service in ours.items():
        unknown = set(service["environment"]) - known
        assert not unknown, f"{name} sets variables the settings module does not read: {sorted(unknown)}"


def test_kubernetes_config_sets_only_known_variables() -> None:
    docs = [d for d in yaml.safe_load_all((DEPLOY / "k8s" / "optibid.yaml").read_text()) if d]
    config = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "optibid-config")
    unknown = set(config["data"]) - settings_variables()
    assert not unknown, f"optibid-config sets variables the settings module does not read: {sorted(unknown)}"
    deployments = {d["metadata"]["name"] for d in docs if d["kind"] == "Deployment"}
    assert {"optibid-user-code", "optibid-dagster-webserver", "optibid-dagster-daemon", "optibid-api"} <= deployments


def test_only_the_settings_module_reads_the_environment() -> None:
    root = Path(__file__).resolve().parents[2]
    offenders = []
    for path in root.rglob("*.py"):
        if any(part in {".venv", "tests", "benchmarks", ".optibid"} for part in path.parts):
            continue
        text = path.read_text()
        if ("os.environ[" in text or "os.getenv(" in text or "os.environ.get(" in text) and path.name not in {
            "settings.py",
            "cli.py",  # the CLI exports service addresses to the child processes it starts
        }:
            offenders.append(str(path.relative_to(root)))
    assert not offenders, f"only infra/settings.py reads the environment: {offenders}"
