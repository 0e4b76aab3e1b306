"""deploy/kubernetes/, checked without a cluster: every manifest parses; every command and flag the
containers run is one the real CLI has (its argparse parser, walked); every EDGETUNE_* variable
they set is a Settings field; the probes and the scrape annotation name routes the real app
serves; the images are Dockerfile targets; and the workers ask for a GPU and enough grace to give
their job back on SIGTERM. The Dockerfile helpers are tests/test_docker.py's.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from app.config import Settings
from app.db import upgrade
from app.main import create_app
from edgetune_cli.main import build_parser
from tests.helpers import live_server
from tests.test_docker import REPO, dockerfile_stages, image_command

DEPLOY = REPO / "deploy" / "kubernetes"
POD_KINDS = {"Deployment", "Job"}
# The longest gap between two measurements seen (issue 10, F8: a 3×128-channel CNN on
# Fashion-MNIST on a CPU, 76-98 s); on a GPU intervals are seconds.
LONGEST_MEASUREMENT_INTERVAL_SECONDS = 98


def manifests() -> dict[str, list[dict[str, Any]]]:
    """File name → its documents (PyYAML safe_load_all), for every manifest."""
    files = sorted(DEPLOY.glob("*.yaml")) + sorted(DEPLOY.glob("*.yml"))
    return {f.name: [d for d in yaml.safe_load_all(f.read_text()) if d] for f in files}


def documents() -> list[dict[str, Any]]:
    return [doc for docs in manifests().values() for doc in docs]


def one(kind: str, name: str) -> dict[str, Any]:
    [doc] = [d for d in documents() if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = doc["spec"]["template"]["spec"]
    return spec


def containers() -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(workload, container) for every container of every Deployment and Job."""
    return [
        (doc, c)
        for doc in documents()
        if doc["kind"] in POD_KINDS
        for c in pod_spec(doc).get("initContainers", []) + pod_spec(doc)["containers"]
    ]


def image_target(image: str) -> str:
    """`registry/edgetune-api:tag` → `api`: the images are named after their Dockerfile target,
    as the Dockerfile's header says (`docker build --target api -t edgetune-api .`)."""
    name = image.rsplit("/", 1)[-1].split(":", 1)[0].split("@", 1)[0]
    assert name.startswith("edgetune-"), image
    return name.removeprefix("edgetune-")


def container_command(container: dict[str, Any]) -> list[str]:
    """What the container runs: its command + args, or the image's CMD when it sets neither."""
    if "command" in container:
        return [str(w) for w in container["command"] + container.get("args", [])]
    assert "args" not in container, "args without command would replace the image's CMD"
    return image_command(image_target(container["image"]))


def subcommand(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser | None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found: argparse.ArgumentParser | None = action.choices.get(name)
            return found
    return None


def check_cli(command: list[str]) -> None:
    """`edgetune a b --flag value ...`: a, b are subcommands of the real parser, in that order,
    every --flag is an option (spelled out, not an abbreviation argparse would also take) of
    the command it follows, and the whole line parses to a command with a handler."""
    assert command[0] == "edgetune", command
    parser = build_parser()
    words = command[1:]
    current = parser
    for word in words:
        if word.startswith("-"):
            break
        nested = subcommand(current, word)
        if nested is None:
            break
        current = nested
    assert current is not parser, f"{command}: no such command"
    for word in words:
        if word.startswith("--"):
            flag = word.split("=", 1)[0]
            assert flag in current._option_string_actions, f"{command}: {flag} is not an option"
    try:
        args = parser.parse_args(words)
    except SystemExit as exc:  # argparse's answer to an unknown command or flag
        pytest.fail(f"{command} does not parse: exit {exc.code}")
    assert callable(getattr(args, "handler", None)), command


def test_every_manifest_parses_and_is_namespaced() -> None:
    found = manifests()
    assert set(found) >= {
        "namespace.yaml",
        "config.yaml",
        "migrate-job.yaml",
        "api.yaml",
        "worker.yaml",
    }
    kinds = sorted(d["kind"] for d in documents())
    for kind in ("Namespace", "Secret", "ConfigMap", "Job", "Deployment", "Service"):
        assert kind in kinds, kind
    for doc in documents():
        assert doc.get("apiVersion") and doc["metadata"]["name"], doc
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "edgetune", doc["metadata"]


def test_readme_applies_every_manifest_in_a_working_order() -> None:
    readme = (DEPLOY / "README.md").read_text()
    applied = re.findall(r"kubectl apply -f deploy/kubernetes/(\S+)", readme)
    order = list(dict.fromkeys(applied))
    assert set(order) >= set(manifests()), set(manifests()) - set(order)
    # The namespace and settings exist before anything uses them; the schema is at head (the
    # Job waited for) before the API and workers start.
    position = {name: order.index(name) for name in order}
    assert position["namespace.yaml"] == 0
    assert position["config.yaml"] < position["migrate-job.yaml"]
    wait = readme.index("wait --for=condition=complete job/edgetune-migrate")
    assert readme.index("apply -f deploy/kubernetes/migrate-job.yaml") < wait
    assert wait < readme.index("apply -f deploy/kubernetes/api.yaml")
    assert wait < readme.index("apply -f deploy/kubernetes/worker.yaml")


def test_every_edgetune_command_and_flag_exists_in_the_cli() -> None:
    commands = [container_command(c) for _, c in containers()]
    assert ["edgetune", "db", "upgrade"] in commands
    assert ["edgetune", "worker", "--device", "cuda:0"] in commands
    for command in commands:
        if command[0] == "edgetune":
            check_cli(command)
        else:
            # Only the api image's own CMD (uvicorn, checked to serve by test_docker.py).
            assert command == image_command("api"), command
    # The checker itself refuses what the CLI lacks.
    for wrong in (["edgetune", "wroker"], ["edgetune", "worker", "--gpu", "0"]):
        with pytest.raises((AssertionError, pytest.fail.Exception)):
            check_cli(wrong)


def settings_variables() -> set[str]:
    prefix = Settings.model_config.get("env_prefix", "")
    return {f"{prefix}{name}".upper() for name in Settings.model_fields}


def set_variables() -> dict[str, str]:
    """Every EDGETUNE_* variable the manifests set: in containers' env, in the Secret and the
    ConfigMap their envFrom reads, by name → where."""
    found: dict[str, str] = {}
    for doc in documents():
        if doc["kind"] in ("Secret", "ConfigMap"):
            for key in {**doc.get("data", {}), **doc.get("stringData", {})}:
                found[key] = f"{doc['kind']} {doc['metadata']['name']}"
    for doc, container in containers():
        for entry in container.get("env", []):
            found[entry["name"]] = f"{doc['metadata']['name']}/{container['name']}"
    return {name: where for name, where in found.items() if name.startswith("EDGETUNE_")}


def test_every_edgetune_variable_is_a_settings_field() -> None:
    variables = set_variables()
    assert "EDGETUNE_DATABASE_URL" in variables
    known = settings_variables()
    unknown = {name: where for name, where in variables.items() if name not in known}
    assert not unknown, f"not fields of app.config.Settings: {unknown}"
    # ... and the values are ones Settings accepts.
    values = {
        key: value
        for doc in documents()
        if doc["kind"] in ("Secret", "ConfigMap")
        for key, value in {**doc.get("data", {}), **doc.get("stringData", {})}.items()
    }
    settings = Settings(**{k.removeprefix("EDGETUNE_").lower(): v for k, v in values.items()})
    assert settings.database_url.startswith("postgresql+psycopg://")
    assert not settings.embedded and settings.auth == "required"


def test_every_container_reads_the_settings_it_needs() -> None:
    sources = {
        doc["metadata"]["name"]: doc["kind"]
        for doc in documents()
        if doc["kind"] in ("Secret", "ConfigMap")
    }
    for _, container in containers():
        refs = {
            (ref.get("secretRef") or ref.get("configMapRef"))["name"]
            for ref in container.get("envFrom", [])
        }
        assert "edgetune-database" in refs, container["name"]
        assert refs <= set(sources), refs - set(sources)


def test_images_are_dockerfile_targets() -> None:
    stages = dockerfile_stages()
    wanted = {"edgetune-migrate": "api", "edgetune-api": "api", "edgetune-worker": "worker"}
    for doc, container in containers():
        target = image_target(container["image"])
        assert target in stages, container["image"]
        assert wanted[doc["metadata"]["name"]] == target, (doc["metadata"]["name"], target)


def get_paths(routes: Any, prefix: str = "") -> Iterator[str]:
    """The paths an app answers GETs on, through included routers (FastAPI wraps those)."""
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:
            context = getattr(route, "include_context", None)
            yield from get_paths(included.routes, prefix + getattr(context, "prefix", ""))
        elif "GET" in (getattr(route, "methods", None) or ()):
            yield prefix + route.path


def test_probes_and_scrape_annotations_name_real_routes(tmp_path: Path) -> None:
    # An explicit database, so API keys are required as in the cluster.
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'edgetune.db'}", data_dir=tmp_path)
    upgrade(settings)
    routes = set(get_paths(create_app(settings).routes))
    api = one("Deployment", "edgetune-api")
    [container] = pod_spec(api)["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    # The image's CMD serves on the port the pod declares.
    command = container_command(container)
    assert ports["http"] == int(command[command.index("--port") + 1])

    probes = {"livenessProbe": "/livez", "readinessProbe": "/readyz"}
    for probe, path in probes.items():
        get = container[probe]["httpGet"]
        assert get["path"] == path and path in routes, (path, routes)
        assert ports.get(get["port"], get["port"]) == ports["http"]
    annotations = api["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == ports["http"]
    assert annotations["prometheus.io/path"] == "/metrics" and "/metrics" in routes

    # Asked as the kubelet and Prometheus ask: plain GETs without a key, over real HTTP.
    with live_server(settings) as url:
        for path in [*probes.values(), annotations["prometheus.io/path"]]:
            response = httpx.get(url + path, timeout=10)
            assert response.status_code == 200, (path, response.text)
        assert "edgetune_queue_depth" in response.text


def test_service_routes_to_the_api_pods() -> None:
    api = one("Deployment", "edgetune-api")
    service = one("Service", "edgetune-api")
    labels = api["spec"]["template"]["metadata"]["labels"]
    assert api["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    [container] = pod_spec(api)["containers"]
    names = {p["name"] for p in container["ports"]}
    assert all(p["targetPort"] in names for p in service["spec"]["ports"])
    # The worker pods are not behind it.
    worker = one("Deployment", "edgetune-worker")
    assert (
        not service["spec"]["selector"].items()
        <= worker["spec"]["template"]["metadata"]["labels"].items()
    )


def test_migrations_run_as_a_job_once() -> None:
    job = one("Job", "edgetune-migrate")
    spec = pod_spec(job)
    assert spec["restartPolicy"] in ("OnFailure", "Never")
    [container] = spec["containers"]
    assert container_command(container) == ["edgetune", "db", "upgrade"]


def test_workers_request_one_gpu_and_outlast_a_measurement_interval() -> None:
    worker = one("Deployment", "edgetune-worker")
    spec = pod_spec(worker)
    [container] = spec["containers"]
    # Extended resources go in limits (requests, when given, must equal them).
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["resources"].get("requests", {}).get("nvidia.com/gpu", 1) == 1
    assert container_command(container)[:2] == ["edgetune", "worker"]
    # Past the grace period the kubelet's SIGKILL would leave the job to wait out its lease
    # instead of being given back at its next measurement.
    grace = spec["terminationGracePeriodSeconds"]
    assert grace > LONGEST_MEASUREMENT_INTERVAL_SECONDS, grace
    # A worker serves no HTTP: nothing to probe.
    assert "livenessProbe" not in container and "readinessProbe" not in container
