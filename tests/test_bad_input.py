"""Malformed and hostile requests against a live server: each is a 4xx problem+json whose detail
names the problem, never a 500, and never a queued job (a queued job would crash a worker later).

Also: the limits' arithmetic (parameter counts without torch) against the models the worker really
builds, and the static torchvision table against the installed torchvision.
"""

from __future__ import annotations

import base64
import json
import socket
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from app.config import Settings
from app.db import upgrade
from app.limits import parameter_count
from app.schemas import RecommendationSpec
from app.torchvision_models import TORCHVISION_NAMES, torchvision_parameters
from tests.db import empty_postgres
from tests.helpers import SMALL_SPEC, api_key, assert_problem, live_server

MB = 1_000_000
JSON = {"content-type": "application/json"}


def spec(**parts: Any) -> dict[str, Any]:
    return {**SMALL_SPEC, **parts}


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def yaml_alias_bomb() -> bytes:
    # "Billion laughs": 9 levels of 9 references each, 9⁹ leaves if anything expanded them.
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, 9):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]")
    lines.append("model: {type: mlp, hidden: *l8}")
    return "\n".join(lines).encode()


def chunked_2mb() -> Iterator[bytes]:
    # A generator body goes out chunked, with no Content-Length to check up front.
    for _ in range(2 * MB // 65_536 + 1):
        yield b" " * 65_536


# (request, expected status, text the problem's detail must contain)
CASES = [
    pytest.param({"json": spec(seed="zero")}, 422, "seed:", id="wrong-type"),
    pytest.param({"json": spec(seed=-1)}, 422, "seed:", id="negative-seed"),
    pytest.param(
        {"json": spec(model={"type": "mlp", "hidden": [-5]})},
        422,
        "model.hidden.0: Input should be greater than or equal to 1",
        id="negative-width",
    ),
    pytest.param(
        {"json": spec(model={"type": "mlp", "hidden": [10**9]})}, 422, "model.hidden.0", id="huge"
    ),
    pytest.param(
        {"json": spec(model={"type": "mlp", "hidden": [10] * 100_000})},
        422,
        "model.hidden: List should have at most 64 items",
        id="huge-hidden-list",
    ),
    pytest.param(
        {"json": spec(model={"type": "mlp", "hidden": nested(200)})},
        422,
        "model.hidden.0",
        id="nested-junk-in-field",
    ),
    pytest.param(
        {"content": b'{"budget": {"epochs": NaN}}', "headers": JSON}, 400, "NaN", id="nan-literal"
    ),
    pytest.param(
        {"content": b'{"budget": {"probe_fraction": -Infinity}}', "headers": JSON},
        400,
        "Infinity",
        id="infinity-literal",
    ),
    pytest.param(
        {"content": b'{"budget": {"epochs": 1e999}}', "headers": JSON},
        422,
        "budget.epochs: Input should be a finite number",
        id="overflowing-float",
    ),
    pytest.param(
        {"content": b'{"seed": ' + b"9" * 5000 + b"}", "headers": JSON},
        400,
        "digits",
        id="5000-digit-integer",
    ),
    pytest.param(
        {"json": spec(dataset={"name": "mnist", "path": "../../../../etc"})},
        422,
        "dataset.path",
        id="path-traversal",
    ),
    pytest.param(
        {"json": spec(dataset={"name": "npz", "path": "/etc/passwd"})},
        422,
        "outside the data roots",
        id="absolute-path-outside-roots",
    ),
    pytest.param(
        {"json": spec(dataset={"name": "npz", "path": "link-out/passwd"})},
        422,
        "outside the data roots",
        id="symlink-out-of-root",
    ),
    pytest.param(
        {"json": spec(dataset={"name": "mnist", "path": "empty"})},
        422,
        "missing",
        id="data-files-missing",
    ),
    pytest.param(
        {"json": spec(dataset={"name": "npz", "path": "not-an-npz.npz"})},
        422,
        "cannot read dataset",
        id="corrupt-npz",
    ),
    pytest.param(
        {"json": spec(dataset={"name": "mnist", "path": "a\x00b"})},
        422,
        "dataset.path",
        id="nul-in-path",
    ),
    pytest.param(
        {"json": spec(model={"type": "torchvision", "name": "resnet19"})},
        422,
        "model.name: 'resnet19' is not a torchvision classification model",
        id="unknown-torchvision",
    ),
    pytest.param(
        {"json": spec(model={"type": "torchvision", "name": "__import__('os').system('id')"})},
        422,
        "model.name",
        id="code-as-model-name",
    ),
    pytest.param(
        {"json": spec(model={"type": "transformer", "layers": 96})},
        422,
        "model:",
        id="unknown-model-type",
    ),
    pytest.param({"json": spec(modle={"type": "mlp"})}, 422, "modle", id="unknown-field"),
    pytest.param(
        {"json": spec(optimizer={"learning_rate": "0.1; DROP TABLE jobs"})},
        422,
        "optimizer.learning_rate",
        id="sql-in-number",
    ),
    pytest.param(
        {"json": spec(model={"type": "mlp", "hidden": [16_384] * 4})},
        422,
        "over this server's limit 20,000,000",
        id="too-many-parameters",
    ),
    pytest.param(
        {
            "json": spec(
                model={"type": "mlp", "hidden": [4096]}, dataset={"name": "npz", "path": "big.npz"}
            )
        },
        422,
        "parameters",
        id="too-many-parameters-for-npz-shape",
    ),
    pytest.param(
        {"json": spec(budget={"epochs": 2, "probe_fraction": 50})},
        422,
        "budget.probe_fraction: probe budget of 50 exceeds this server's limit 2",
        id="probe-budget",
    ),
    pytest.param(
        {"json": spec(budget={"epochs": 5000})},
        422,
        "budget.epochs: budget of 5000 exceeds this server's limit 200",
        id="epochs-budget",
    ),
    pytest.param(
        {"json": spec(dataset={"name": "synthetic", "max_train_samples": 10**9})},
        422,
        "dataset.max_train_samples",
        id="dataset-size",
    ),
    pytest.param(
        {"json": spec(callback_url="file:///etc/passwd")},
        422,
        "callback_url",
        id="non-http-callback",
    ),
    pytest.param(
        {"json": spec(callback_url="https://ci.example.com/\x00hook")},
        422,
        "callback_url: Value error, must not contain control characters",
        id="nul-in-callback-url",
    ),
    # F6: the memory a worker would need is estimated before anything is allocated.
    pytest.param(
        {
            "json": spec(
                dataset={
                    "name": "synthetic",
                    "synthetic_samples": 1_000_000,
                    "synthetic_features": 65_536,
                }
            )
        },
        422,
        "dataset.synthetic_samples: the data needs about 488 GiB in a worker",
        id="data-over-the-memory-limit",
    ),
    pytest.param(
        {
            "json": spec(
                model={"type": "cnn", "blocks": [{"channels": 4096}], "hidden": [8]},
                dataset={"name": "npz", "path": "big.npz"},
                optimizer={"batch_size": 65536},
            )
        },
        422,
        "optimizer.batch_size: the probes' activations need about",
        id="activations-over-the-memory-limit",
    ),
    pytest.param(
        {"json": spec(dataset={"name": "image-folder", "path": "images", "image_size": 8})},
        422,
        "dataset.path images/train links outside the data roots",
        id="image-folder-train-links-out",
    ),
    pytest.param(
        {"json": spec(dataset={"name": "npz", "path": "s3://bucket/x.npz"})},
        422,
        "dataset.path: Value error, path must be a local path under the workers' data roots",
        id="url-as-dataset-path",
    ),
    pytest.param(
        {"json": spec(model={"type": "cnn", "blocks": [{"channels": 8}]})},
        422,
        "model.type: a CNN needs image input",
        id="cnn-on-flat-data",
    ),
    pytest.param(
        {
            "json": spec(
                model={"type": "cnn", "blocks": [{"channels": 4, "pool": 4}] * 3},
                dataset={"name": "digits"},
            )
        },
        422,
        "model.blocks.1: the feature map vanishes",
        id="vanishing-feature-map",
    ),
    pytest.param(
        {"json": spec(model={"type": "torchvision", "name": "resnet18"})},
        422,
        "model.type: torchvision models need 1- or 3-channel images",
        id="torchvision-on-flat-data",
    ),
    pytest.param({"content": b"x" * (10 * MB), "headers": JSON}, 413, "1000000 bytes", id="10MB"),
    pytest.param({"content": chunked_2mb, "headers": JSON}, 413, "over 1000000", id="2MB-chunked"),
    pytest.param(
        {"content": json.dumps(SMALL_SPEC), "headers": {"content-type": "text/plain"}},
        415,
        "application/json",
        id="wrong-content-type",
    ),
    pytest.param({"data": {"seed": "1"}}, 415, "x-www-form-urlencoded", id="form-data"),
    pytest.param({"content": b'{"seed": 0', "headers": JSON}, 400, "not valid JSON", id="bad-json"),
    pytest.param({"content": b"", "headers": JSON}, 400, "empty", id="empty-body"),
    pytest.param({"content": b"[" * 200_000, "headers": JSON}, 400, "nested", id="deep-json"),
    pytest.param({"json": [SMALL_SPEC]}, 422, "valid dictionary", id="array-not-object"),
    pytest.param(
        {"content": b"\xff\xfe\x00garbage", "headers": JSON}, 400, "JSON", id="invalid-utf8"
    ),
    pytest.param(
        {
            "content": b"!!python/object/apply:os.system ['touch /tmp/pwned']",
            "headers": {"content-type": "application/yaml"},
        },
        400,
        "YAML",
        id="yaml-code-tag",
    ),
    pytest.param(
        {"content": b"model: " + b"[" * 100_000, "headers": {"content-type": "application/yaml"}},
        400,
        "nesting depth",
        id="deep-yaml",
    ),
    pytest.param(
        {"content": yaml_alias_bomb(), "headers": {"content-type": "application/yaml"}},
        422,
        "model.hidden.0",
        id="yaml-alias-bomb",
    ),
    pytest.param({"json": {}}, 422, "model: Field required; dataset: Field", id="empty-spec"),
    pytest.param(
        {"json": {"dataset": SMALL_SPEC["dataset"]}}, 422, "model: Field required", id="no-model"
    ),
    pytest.param(
        {"json": {"model": SMALL_SPEC["model"]}}, 422, "dataset: Field required", id="no-dataset"
    ),
    pytest.param(
        {"json": spec(budget={"epochs": True})},
        422,
        "budget.epochs: Input should be a valid number",
        id="boolean-as-number",
    ),
    pytest.param(
        {"json": spec(optimizer={"learning_rate": False})},
        422,
        "optimizer.learning_rate: Input should be a valid number",
        id="boolean-as-optional-number",
    ),
    pytest.param(
        {"json": spec(verify="yes")},
        422,
        "verify: Input should be a valid boolean",
        id="string-as-boolean",
    ),
    pytest.param(
        {"json": spec(verify=1)},
        422,
        "verify: Input should be a valid boolean",
        id="number-as-boolean",
    ),
    pytest.param(
        {"json": spec(model={"type": "mlp", "hidden": [8], "hidden_bias": "false"})},
        422,
        "model.hidden_bias: Input should be a valid boolean",
        id="string-as-nested-boolean",
    ),
    pytest.param(
        {"content": json.dumps(SMALL_SPEC)[:-1] + ', "seed": 1, "seed": 2}', "headers": JSON},
        422,
        "seed: given more than once",
        id="repeated-key",
    ),
    pytest.param(
        {
            "content": json.dumps(SMALL_SPEC).replace(
                '"hidden": [32]', '"hidden": [32], "hidden": [8]'
            ),
            "headers": JSON,
        },
        422,
        "model.hidden: given more than once",
        id="repeated-nested-key",
    ),
    pytest.param(
        {
            "content": b"model: {type: mlp}\ndataset: {name: digits}\nseed: 1\nseed: 2\n",
            "headers": {"content-type": "application/yaml"},
        },
        400,
        "found duplicate key 'seed' (line 4, column 1)",
        id="repeated-yaml-key",
    ),
    pytest.param(
        {"json": SMALL_SPEC, "headers": {"Idempotency-Key": "k" * 300}},
        400,
        "Idempotency-Key",
        id="idempotency-key-too-long",
    ),
]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("datasets")
    (root / "empty").mkdir()
    (root / "not-an-npz.npz").write_bytes(b"PK\x03\x04 this is not a zip archive")
    # 3×64×64 inputs: an MLP of 4096 then has 50 M parameters in its first layer alone.
    np.savez(
        root / "big.npz",
        x=np.zeros((20, 3, 64, 64), np.float32),
        y=np.arange(20) % 4,
    )
    (root / "link-out").symlink_to("/etc")
    # F4: an image folder inside the root whose train/ links out of it.
    outside = tmp_path_factory.mktemp("outside")
    (outside / "cats").mkdir()
    (root / "images").mkdir()
    (root / "images" / "train").symlink_to(outside)
    return root


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def client(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, data_root: Path
) -> Iterator[httpx.Client]:
    """One server per backend for the whole table (each case checks it queued nothing)."""
    if request.param == "sqlite":
        folder = tmp_path_factory.mktemp("sqlite")
        settings = Settings(database_url=f"sqlite:///{folder / 'edgetune.db'}", data_dir=folder)
        upgrade(settings)
    else:
        url = request.getfixturevalue("pg_database")
        empty_postgres(url)
        settings = Settings(database_url=url, data_dir=tmp_path_factory.mktemp("pg"))
    settings = settings.model_copy(update={"data_root": str(data_root)})
    headers = api_key(settings)
    with (
        live_server(settings) as base,
        httpx.Client(base_url=base, timeout=30, headers=headers) as client,
    ):
        yield client


def job_count(client: httpx.Client) -> int:
    return len(client.get("/v1/jobs", params={"page_size": 100}).json()["jobs"])


@pytest.mark.parametrize(("request_kwargs", "status", "detail"), CASES)
def test_bad_request_is_a_named_problem_and_queues_nothing(
    client: httpx.Client, request_kwargs: dict[str, Any], status: int, detail: str
) -> None:
    before = job_count(client)
    if callable(request_kwargs.get("content")):
        request_kwargs = {**request_kwargs, "content": request_kwargs["content"]()}
    response = client.post("/v1/recommendations", **request_kwargs)
    body = assert_problem(response, status, detail=detail)
    if status == 422:
        assert body["errors"] and all(e["field"] and e["message"] for e in body["errors"])
    assert job_count(client) == before


def page_token(created: str, job_id: str = "0" * 32) -> str:
    """A token shaped like the server's own (app.service._encode_token) with these values."""
    raw = json.dumps([created, job_id, None], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


# Hostile ids and page tokens on the read side: (method, path, query, status, detail).
READ_CASES = [
    *(
        pytest.param(method, f"/v1/jobs/%00{tail}", {}, 404, "no job", id=f"nul-id-{name}")
        for method, tail, name in [
            ("GET", "", "job"),
            ("GET", "/probes", "probes"),
            ("GET", "/recommendation", "recommendation"),
            ("GET", "/plots/order", "plot"),
            ("POST", "/cancel", "cancel"),
        ]
    ),
    pytest.param("GET", "/v1/jobs/a%00" + "0" * 30, {}, 404, "no job", id="nul-in-hex-id"),
    pytest.param("GET", "/v1/jobs/" + "f" * 33, {}, 404, "no job", id="id-too-long"),
    pytest.param(
        "GET",
        "/v1/jobs",
        {"page_token": page_token("2026-01-01T00:00:00+00:00", "a\x00b")},
        400,
        "page_token",
        id="nul-in-page-token-id",
    ),
    pytest.param(
        "GET",
        "/v1/jobs",
        {"page_token": page_token("0001-01-01T00:00:00+14:00")},
        400,
        "page_token",
        id="page-token-before-year-1-in-utc",
    ),
    pytest.param(
        "GET",
        "/v1/jobs",
        {"page_token": page_token("9999-12-31T23:59:59-14:00")},
        400,
        "page_token",
        id="page-token-after-year-9999-in-utc",
    ),
]


@pytest.mark.parametrize(("method", "path", "params", "status", "detail"), READ_CASES)
def test_bad_id_or_token_is_a_named_problem(
    client: httpx.Client, method: str, path: str, params: dict[str, str], status: int, detail: str
) -> None:
    assert_problem(client.request(method, path, params=params), status, detail=detail)


@pytest.mark.parametrize("length", [b"abc", b"12abc", b"-1", b"1 2", b"0x10", b"9" * 30])
def test_malformed_content_length_is_a_problem(client: httpx.Client, length: bytes) -> None:
    """uvicorn's HTTP parser refuses these before the app runs; the answer is still a problem."""
    url = client.base_url
    request = (
        b"POST /v1/recommendations HTTP/1.1\r\nHost: edgetune\r\n"
        b"Content-Type: application/json\r\nContent-Length: " + length + b"\r\n\r\n{}"
    )
    reply = b""
    with socket.create_connection((url.host, url.port or 80), timeout=10) as sock:
        sock.sendall(request)
        while chunk := sock.recv(65_536):  # the server closes the connection after a 400
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in header_lines)
    assert status_line == "HTTP/1.1 400 Bad Request", reply
    assert headers["content-type"] == "application/problem+json"
    assert int(headers["content-length"]) == len(body)
    problem = json.loads(body)
    assert problem["status"] == 400 and "Content-Length" in problem["detail"]


def test_the_table_is_big_enough() -> None:
    assert len(CASES) >= 20


def test_a_spec_within_the_limits_is_accepted(client: httpx.Client) -> None:
    # The same kinds of spec as the table, just within the limits and with data present.
    for accepted in (
        spec(dataset={"name": "npz", "path": "big.npz"}, model={"type": "mlp", "hidden": [64]}),
        spec(model={"type": "cnn", "blocks": [{"channels": 4}]}, dataset={"name": "digits"}),
        spec(model={"type": "torchvision", "name": "resnet18"}, dataset={"name": "digits"}),
        spec(callback_url="https://ci.example.com/hooks/edgetune"),
    ):
        response = client.post("/v1/recommendations", json=accepted)
        assert response.status_code == 202, response.text


# The limits' arithmetic against what the worker really builds (torch; test side only).
SPECS_TO_COUNT = [
    ({"type": "mlp", "hidden": [784]}, (1, 28, 28), 10),
    ({"type": "mlp", "hidden": [64, 32, 16], "hidden_bias": True, "output_bias": False}, (7,), 3),
    (
        {
            "type": "cnn",
            "blocks": [
                {"channels": 8, "kernel": 5, "stride": 2, "pool": 2},
                {"channels": 16, "kernel": 3},
            ],
            "hidden": [32],
        },
        (1, 28, 28),
        10,
    ),
    ({"type": "cnn", "blocks": [{"channels": 6, "kernel": 4, "stride": 3}]}, (3, 17, 13), 5),
    ({"type": "torchvision", "name": "resnet18"}, (3, 32, 32), 10),
    ({"type": "torchvision", "name": "squeezenet1_1", "num_classes": 7}, (1, 64, 64), 10),
    ({"type": "torchvision", "name": "mobilenet_v3_small"}, (3, 32, 32), 100),
]


@pytest.mark.parametrize(("model", "input_shape", "classes"), SPECS_TO_COUNT)
def test_parameter_count_matches_the_built_model(
    model: dict[str, Any], input_shape: tuple[int, ...], classes: int
) -> None:
    torch = pytest.importorskip("torch")
    from edgetune.nets import build_model, count_parameters

    model_spec = RecommendationSpec.model_validate({"model": model, "dataset": {}}).model
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        built = build_model(model_spec, input_shape, classes)
    assert parameter_count(model_spec, input_shape, classes) == count_parameters(built)


def test_torchvision_table_matches_installed_torchvision() -> None:
    """Fails when torchvision adds or drops a model: regenerate app/torchvision_models.py."""
    torch = pytest.importorskip("torch")
    models = pytest.importorskip("torchvision.models")
    assert tuple(sorted(models.list_models(module=models))) == TORCHVISION_NAMES
    # Counts of a few cheap ones (meta device: no memory, no init) at an odd class count.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in ("alexnet", "densenet121", "efficientnet_b0", "vit_b_16", "googlenet"):
            with torch.device("meta"):
                net = models.get_model(name, weights=None, num_classes=37)
            assert torchvision_parameters(name, 37) == sum(p.numel() for p in net.parameters())
