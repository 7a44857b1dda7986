"""The deployment files can't run here (no container engine), so they are checked for what can drift: they
are valid against the Kubernetes schemas (`kubernetes-validate`, which ships them) and the compose spec (the
schema vendored by `check-jsonschema`, from SchemaStore, licence in its `vendor/licenses`), they run the
Dagster services exactly as `orchestration/dagster_services.py` and the local platform do, on the instance of
`infra/dagster_instance.py`, and every variable they give OptiBid's own containers is one the settings
module reads. The services themselves run as separate processes in `tests/platform/test_dagster_services.py`."""

from __future__ import annotations

import copy
import json
from importlib.resources import files
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from infra.dagster_instance import DAGSTER_YAML
from infra.settings import Settings
from orchestration.dagster_services import CODE_SERVER_PORT, SERVICES, WEBSERVER_PORT, service_argv, workspace_yaml

DEPLOY = Path(__file__).resolve().parents[2] / "infra" / "deploy"
KUBERNETES_VERSION = "1.33"  # the oldest minor release still supported upstream when this was written
COMPOSE_SERVICES = {"code_server": "user-code", "daemon": "dagster-daemon", "webserver": "dagster-webserver"}
K8S_DEPLOYMENTS = {
    "code_server": "optibid-user-code",
    "daemon": "optibid-dagster-daemon",
    "webserver": "optibid-dagster-webserver",
}


def compose_file() -> dict:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def k8s_documents() -> list[dict]:
    return [d for d in yaml.safe_load_all((DEPLOY / "k8s" / "optibid.yaml").read_text()) if d]


def compose_validator() -> jsonschema.protocols.Validator:
    schema = json.loads(files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json").read_text())
    return jsonschema.validators.validator_for(schema)(schema)


def compose_errors(compose: dict) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in compose_validator().iter_errors(compose)]


def k8s_errors(documents: list[dict]) -> list[str]:
    errors = []
    for doc in documents:
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            errors.append(f"{doc['kind']}/{doc['metadata']['name']}: {error.message}")
    return errors


def test_compose_file_follows_the_compose_spec() -> None:
    assert compose_errors(compose_file()) == []


def test_compose_spec_validation_catches_a_broken_file() -> None:
    broken = copy.deepcopy(compose_file())
    broken["services"]["dagster-daemon"]["depends_on"] = "user-code"  # a list or a mapping, never a string
    broken["services"]["api"]["restart_policy"] = "always"  # not a service key
    errors = compose_errors(broken)
    assert any(e.startswith("services/dagster-daemon") for e in errors), errors
    assert any(e.startswith("services/api") for e in errors), errors


def test_kubernetes_manifest_follows_the_kubernetes_schemas() -> None:
    assert k8s_errors(k8s_documents()) == []


def test_kubernetes_validation_catches_a_broken_manifest() -> None:
    documents = k8s_documents()
    deployment = next(d for d in documents if d["metadata"]["name"] == "optibid-dagster-daemon")
    broken = copy.deepcopy(deployment)
    broken["spec"]["replicas"] = "one"
    typo = copy.deepcopy(deployment)
    typo["spec"]["template"]["spec"]["containers"][0]["enviroment"] = []  # strict: unknown fields are errors
    assert len(k8s_errors([broken, typo])) == 2


def _compose_argv(name: str) -> list[str]:
    command = compose_file()["services"][COMPOSE_SERVICES[name]]["command"]
    assert isinstance(command, list), "exec form: the same argv as orchestration/dagster_services.py"
    return command


def _k8s_container(name: str) -> dict:
    deployment = next(d for d in k8s_documents() if d["metadata"]["name"] == K8S_DEPLOYMENTS[name])
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


@pytest.mark.parametrize("name", SERVICES)
def test_deploy_files_run_the_dagster_services_of_the_platform(name: str) -> None:
    ports = {"code_server_host": "0.0.0.0", "code_server_port": CODE_SERVER_PORT}
    ports |= {"webserver_host": "0.0.0.0", "webserver_port": WEBSERVER_PORT}
    assert _compose_argv(name) == service_argv(name, workspace="/opt/dagster/workspace.yaml", **ports)
    assert _k8s_container(name)["args"] == service_argv(name, workspace="/opt/dagster/home/workspace.yaml", **ports)


def test_deploy_files_share_the_platform_instance_and_workspace() -> None:
    instance = yaml.safe_load(DAGSTER_YAML)
    assert yaml.safe_load((DEPLOY / "dagster.yaml").read_text()) == instance
    config = next(d for d in k8s_documents() if d["metadata"]["name"] == "dagster-instance")
    assert yaml.safe_load(config["data"]["dagster.yaml"]) == instance
    assert yaml.safe_load((DEPLOY / "workspace.yaml").read_text()) == yaml.safe_load(
        workspace_yaml("user-code", CODE_SERVER_PORT)
    )
    assert yaml.safe_load(config["data"]["workspace.yaml"]) == yaml.safe_load(
        workspace_yaml("optibid-user-code", CODE_SERVER_PORT)
    )
    # One daemon, never two at once, even during a rollout.
    daemon = next(d for d in k8s_documents() if d["metadata"]["name"] == K8S_DEPLOYMENTS["daemon"])
    assert (daemon["spec"]["replicas"], daemon["spec"]["strategy"]) == (1, {"type": "Recreate"})
    # Every Dagster service, the code server too (its runs write events), mounts that instance.
    compose = compose_file()
    for name in SERVICES:
        volumes = compose["services"][COMPOSE_SERVICES[name]]["volumes"]
        assert "./dagster.yaml:/opt/dagster/home/dagster.yaml:ro" in volumes, name
        mounts = _k8s_container(name)["volumeMounts"]
        assert {"name": "instance", "mountPath": "/opt/dagster/home"} in mounts, name


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
    compose = compose_file()
    ours = {name: svc for name, svc in compose["services"].items() if svc.get("x-optibid")}
    assert {"user-code", "dagster-webserver", "dagster-daemon", "api"} <= set(ours)
    known = settings_variables()
    for name, service in ours.items():
        unknown = set(service["environment"]) - known
        assert not unknown, f"{name} sets variables the settings module does not read: {sorted(unknown)}"


def test_kubernetes_config_sets_only_known_variables() -> None:
    docs = k8s_documents()
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
