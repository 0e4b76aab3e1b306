"""The HTTP API through real HTTP: uvicorn on a free loopback port, httpx as the client, on a real
SQLite file and a real PostgreSQL database (tests/conftest.py), migrated by the real migrations.

Jobs are driven through their states with the real queue functions (what a worker calls), and
end to end by the real worker on a small synthetic dataset.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from sqlalchemy.orm import Session

from app import queue
from app.config import Settings
from app.db import DatabaseNotMigrated, make_engine, session_factory, upgrade
from app.main import create_app
from app.schemas import EdgeSummary, OrderParameter, Recommendation, Validity
from tests.db import admin_connect, pg_url, postgres_unavailable
from tests.helpers import SMALL_SPEC, api_key, assert_problem, live_server


def with_data_root(settings: Settings, root: Path) -> Settings:
    return settings.model_copy(update={"data_root": str(root)})


@pytest.fixture
def api_settings(db_settings: Settings, tmp_path: Path) -> Settings:
    root = tmp_path / "datasets"
    root.mkdir()
    return with_data_root(db_settings, root)


@pytest.fixture
def client(api_settings: Settings) -> Iterator[httpx.Client]:
    headers = api_key(api_settings)
    with (
        live_server(api_settings) as url,
        httpx.Client(base_url=url, timeout=30, headers=headers) as client,
    ):
        yield client


@pytest.fixture
def worker_session(api_settings: Settings) -> Iterator[Session]:
    """A session on the same database as the server, for the worker's side of a job's life."""
    engine = make_engine(api_settings)
    with session_factory(engine)() as session:
        yield session
    engine.dispose()


def submit(client: httpx.Client, spec: dict | None = None, **headers: str) -> httpx.Response:
    return client.post("/v1/recommendations", json=spec or SMALL_SPEC, headers=headers)


def test_health_openapi_and_docs(client: httpx.Client) -> None:
    assert client.get("/livez").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ok"}
    openapi = client.get("/openapi.json").json()
    for path in (
        "/v1/recommendations",
        "/v1/jobs",
        "/v1/jobs/{job_id}",
        "/v1/jobs/{job_id}/cancel",
        "/v1/jobs/{job_id}/recommendation",
        "/v1/jobs/{job_id}/probes",
    ):
        assert path in openapi["paths"]
    body = openapi["paths"]["/v1/recommendations"]["post"]["requestBody"]
    assert body["content"]["application/json"]["schema"]["$ref"].endswith("/RecommendationSpec")
    schemas = openapi["components"]["schemas"]
    assert "MLPSpec" in schemas and "hidden" in schemas["MLPSpec"]["properties"]
    docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    # Offline: the page loads nothing from elsewhere, and what it loads is served here.
    assert "http://" not in docs.text and "https://" not in docs.text
    assets = re.findall(r'(?:src|href)="([^"]+)"', docs.text)
    assert assets and all(a.startswith("/docs-assets/") for a in assets), assets
    for asset in assets:
        served = client.get(asset)
        assert served.status_code == 200 and len(served.content) > 500, asset


def test_openapi_documents_the_recommendation_as_typed_properties(client: httpx.Client) -> None:
    openapi = client.get("/openapi.json").json()
    get = openapi["paths"]["/v1/jobs/{job_id}/recommendation"]["get"]
    schema = get["responses"]["200"]["content"]["application/json"]["schema"]
    assert schema["$ref"].endswith("/Recommendation")
    schemas = openapi["components"]["schemas"]

    def untyped(name: str) -> list[str]:
        # A property that is an object of anything (`additionalProperties: true` or no schema).
        found = []
        for prop, spec in schemas[name].get("properties", {}).items():
            for option in spec.get("anyOf", [spec]):
                if option.get("type") == "object" and option.get("additionalProperties") in (
                    None,
                    True,
                ):
                    found.append(f"{name}.{prop}")
        return found

    for name in ("Recommendation", "Hyperparameters", "EdgeSummary", "Validity", "Cost",
                 "Verification", "ProbeGrowth", "GrowthFit", "ScalingFit", "Estimate"):
        assert name in schemas, name
        assert not untyped(name), untyped(name)
    hyper = schemas["Hyperparameters"]["properties"]
    assert {"learning_rate", "momentum", "batch_size", "weight_decay", "epochs"} <= set(hyper)


def test_post_returns_202_with_location_and_the_job(client: httpx.Client) -> None:
    response = submit(client)
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert int(response.headers["retry-after"]) >= 1
    assert job["status"] == "queued" and job["attempts"] == 0
    assert job["spec"]["model"]["hidden"] == [32]
    assert job["spec"]["optimizer"]["learning_rate"] is None  # defaults filled in

    got = client.get(response.headers["location"]).json()
    assert set(got) >= {
        "id",
        "status",
        "progress",
        "attempts",
        "created_at",
        "started_at",
        "finished_at",
        "error",
    }
    assert got["id"] == job["id"] and got["created_at"] == job["created_at"]
    assert got["progress"] == {
        "phase": "queued",
        "probes_done": 0,
        "probes_total": 0,
        "fraction": 0.0,
        "eta_seconds": None,
        "message": None,
    }
    assert got["links"]["recommendation"] == f"/v1/jobs/{job['id']}/recommendation"


def test_post_accepts_yaml(client: httpx.Client) -> None:
    body = "model: {type: mlp, hidden: [8, 8], activation: relu}\ndataset: {name: digits}\n"
    response = client.post(
        "/v1/recommendations", content=body, headers={"content-type": "application/yaml"}
    )
    assert response.status_code == 202, response.text
    assert response.json()["spec"]["model"]["hidden"] == [8, 8]


def test_idempotency_key(client: httpx.Client) -> None:
    first = submit(client, **{"Idempotency-Key": "run-42"})
    assert first.status_code == 202
    # Same key, same spec (once with a default spelled out): the same job, not a new one.
    again = submit(client, **{"Idempotency-Key": "run-42"})
    spelled = submit(client, {**SMALL_SPEC, "seed": 0}, **{"Idempotency-Key": "run-42"})
    for replay in (again, spelled):
        assert replay.status_code == 200, replay.text
        assert replay.json()["id"] == first.json()["id"]
        assert replay.headers["location"] == first.headers["location"]
    other = submit(client, {**SMALL_SPEC, "seed": 1}, **{"Idempotency-Key": "run-42"})
    assert_problem(other, 409, detail=first.json()["id"])
    # No key: every POST is a new job.
    assert submit(client).json()["id"] != submit(client).json()["id"]
    assert len(client.get("/v1/jobs").json()["jobs"]) == 3


def test_list_pages_through_all_jobs(client: httpx.Client) -> None:
    ids = [submit(client).json()["id"] for _ in range(7)]
    seen: list[str] = []
    token = None
    pages = 0
    while True:
        params: dict[str, str | int] = {"page_size": 3}
        if token:
            params["page_token"] = token
        page = client.get("/v1/jobs", params=params).json()
        pages += 1
        seen += [job["id"] for job in page["jobs"]]
        token = page["next_page_token"]
        if token is None:
            break
    assert pages == 3
    assert seen == list(reversed(ids))  # newest first, each exactly once
    assert len(client.get("/v1/jobs").json()["jobs"]) == 7  # default page_size 20

    for job_id in ids[:2]:
        assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 200
    cancelled = client.get("/v1/jobs", params={"status": "cancelled", "page_size": 1}).json()
    assert [j["id"] for j in cancelled["jobs"]] == [ids[1]]
    rest = client.get(
        "/v1/jobs",
        params={"status": "cancelled", "page_size": 1, "page_token": cancelled["next_page_token"]},
    ).json()
    assert [j["id"] for j in rest["jobs"]] == [ids[0]] and rest["next_page_token"] is None
    queued = client.get("/v1/jobs", params={"status": "queued"}).json()["jobs"]
    assert {j["id"] for j in queued} == set(ids[2:])

    # A token belongs to its query; garbage is no token at all.
    mismatched = client.get(
        "/v1/jobs", params={"status": "queued", "page_token": cancelled["next_page_token"]}
    )
    assert_problem(mismatched, 400, detail="page_token")
    for bad in ("garbage", "eyJ4IjoxfQ", "W10", "%%%"):
        assert_problem(client.get("/v1/jobs", params={"page_token": bad}), 400, detail="page_token")
    assert_problem(client.get("/v1/jobs", params={"page_size": 0}), 422, detail="page_size")
    assert_problem(client.get("/v1/jobs", params={"page_size": 101}), 422, detail="page_size")
    assert_problem(client.get("/v1/jobs", params={"status": "done"}), 422, detail="status")


def test_cancel_semantics(
    client: httpx.Client, api_settings: Settings, worker_session: Session
) -> None:
    queued = submit(client).json()["id"]
    response = client.post(f"/v1/jobs/{queued}/cancel")
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled" and response.json()["finished_at"]
    assert_problem(client.post(f"/v1/jobs/{queued}/cancel"), 409, detail="already cancelled")

    running = submit(client).json()["id"]
    claimed = queue.claim(worker_session, worker_id="w1", lease_seconds=60)
    assert claimed is not None and claimed.id == running
    response = client.post(f"/v1/jobs/{running}/cancel")
    assert response.status_code == 200
    # Still running until the worker's next measurement, which sees the request.
    assert response.json()["status"] == "running" and response.json()["cancel_requested"]
    beat = queue.heartbeat(worker_session, running, worker_id="w1", lease_seconds=60, progress=None)
    assert beat == "cancel"
    assert queue.mark_cancelled(worker_session, running, worker_id="w1")
    assert client.get(f"/v1/jobs/{running}").json()["status"] == "cancelled"

    done = submit(client).json()["id"]
    assert queue.claim(worker_session, worker_id="w1", lease_seconds=60) is not None
    assert queue.complete(worker_session, done, worker_id="w1", result={"ok": True})
    assert_problem(client.post(f"/v1/jobs/{done}/cancel"), 409, detail="already succeeded")
    assert client.get(f"/v1/jobs/{done}").json()["status"] == "succeeded"
    assert_problem(client.post(f"/v1/jobs/{uuid.uuid4().hex}/cancel"), 404, detail="no job")


def test_recommendation_is_409_until_the_job_succeeded(
    client: httpx.Client, worker_session: Session
) -> None:
    job_id = submit(client).json()["id"]
    url = f"/v1/jobs/{job_id}/recommendation"
    assert_problem(client.get(url), 409, detail="queued")
    assert queue.claim(worker_session, worker_id="w1", lease_seconds=60) is not None
    progress = {
        "phase": "probing",
        "probes_done": 1,
        "probes_total": 4,
        "fraction": 0.25,
        "eta_seconds": 12.5,
    }
    queue.heartbeat(worker_session, job_id, worker_id="w1", lease_seconds=60, progress=progress)
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "running" and job["attempts"] == 1 and job["started_at"]
    assert job["progress"] == {**progress, "message": None}  # a running job waits for nothing
    assert_problem(client.get(url), 409, detail="running")

    # The smallest valid result: the route serves the stored document as a typed Recommendation.
    result = Recommendation(
        hyperparameters=None,
        edge=EdgeSummary(order_parameter=OrderParameter(name="J2", description="J²")),
        validity=Validity(ok=False, reason="none", flags={}, warnings=[]),
    ).model_dump(mode="json")
    assert queue.complete(worker_session, job_id, worker_id="w1", result=result)
    response = client.get(url)
    assert response.status_code == 200 and response.json() == result
    assert client.get(f"/v1/jobs/{job_id}").json()["finished_at"]

    failed = submit(client).json()["id"]
    assert queue.claim(worker_session, worker_id="w1", lease_seconds=60) is not None
    queue.fail_or_retry(
        worker_session, failed, worker_id="w1", error="SpecError: boom", retry=False
    )
    body = assert_problem(client.get(f"/v1/jobs/{failed}/recommendation"), 409, detail="boom")
    assert "failed" in body["detail"]
    assert_problem(client.get(f"/v1/jobs/{uuid.uuid4().hex}/recommendation"), 404)


def test_probes_show_stored_time_series(client: httpx.Client, worker_session: Session) -> None:
    job_id = submit(client).json()["id"]
    assert client.get(f"/v1/jobs/{job_id}/probes").json() == {"job_id": job_id, "probes": []}
    assert queue.claim(worker_session, worker_id="w1", lease_seconds=60) is not None
    records = [
        {
            "step": 0,
            "epoch": 0.0,
            "J": [0.5],
            "chi": [0.3],
            "train_loss": 2.3,
            "val_accuracy": None,
        },
        {
            "step": 10,
            "epoch": 0.5,
            "J": [0.7],
            "chi": [0.5],
            "train_loss": 1.1,
            "val_accuracy": 0.6,
        },
    ]
    config = {"learning_rate": 0.01, "momentum": 0.9, "batch_size": 32, "seed": 0}
    result = {"config": config, "outcome": "completed", "records": records, "steps_done": 10}
    queue.store_probe(
        worker_session,
        job_id,
        key="p00",
        config=config,
        outcome="completed",
        result=result,
        seconds=1.5,
    )
    probes = client.get(f"/v1/jobs/{job_id}/probes").json()["probes"]
    assert len(probes) == 1
    assert probes[0]["key"] == "p00" and probes[0]["outcome"] == "completed"
    assert probes[0]["config"] == config and probes[0]["seconds"] == 1.5
    assert probes[0]["records"] == records
    assert probes[0]["summary"]["steps_done"] == 10 and "records" not in probes[0]["summary"]
    assert_problem(client.get(f"/v1/jobs/{uuid.uuid4().hex}/probes"), 404, detail="no job")


def test_unknown_routes_methods_and_jobs_are_problems(client: httpx.Client) -> None:
    assert_problem(client.get("/v2/anything"), 404, detail="/v2/anything")
    assert_problem(client.get(f"/v1/jobs/{uuid.uuid4().hex}"), 404, detail="no job")
    body = assert_problem(client.delete("/v1/jobs"), 405, detail="allowed: GET")
    assert body["type"].endswith("method-not-allowed")
    assert_problem(client.get("/v1/recommendations"), 405, detail="POST")
    assert_problem(client.put("/v1/jobs/x/cancel"), 405)


def test_end_to_end_with_a_real_worker(client: httpx.Client, api_settings: Settings) -> None:
    from worker.main import run_worker  # torch: only the worker side imports it

    started = time.monotonic()
    response = submit(client, **{"Idempotency-Key": "e2e"})
    assert response.status_code == 202
    location = response.headers["location"]
    worker = threading.Thread(
        target=run_worker, args=(api_settings,), kwargs={"device": "cpu", "once": True}
    )
    worker.start()
    phases = set()
    while worker.is_alive() and time.monotonic() - started < 90:
        phases.add(client.get(location).json()["progress"]["phase"])
        time.sleep(0.05)
    worker.join(timeout=90)
    job = client.get(location).json()
    assert job["status"] == "succeeded", job
    assert job["progress"]["fraction"] == 1.0 and job["attempts"] == 1
    recommendation = client.get(f"{location}/recommendation").json()
    assert recommendation["validity"]["flags"].get("no_recommendation") is not True
    hyper = recommendation["hyperparameters"]
    assert hyper["learning_rate"] > 0 and 0 <= hyper["momentum"] < 1 and hyper["batch_size"] >= 1
    probes = client.get(f"{location}/probes").json()["probes"]
    assert probes and job["progress"]["probes_done"] == len(probes)
    series = probes[0]["records"]
    assert series and {"step", "epoch", "J", "train_loss"} <= set(series[0])
    assert phases & {"probing", "fitting"}, phases
    assert time.monotonic() - started < 60


def test_embedded_default_migrates_itself(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "home", data_root=str(tmp_path))
    assert settings.embedded
    with live_server(settings) as url, httpx.Client(base_url=url) as client:
        assert client.get("/readyz").status_code == 200
        assert submit(client).status_code == 202
    assert (tmp_path / "home" / "edgetune.db").is_file()


def test_an_unmigrated_database_is_refused(tmp_path: Path) -> None:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'empty.db'}", data_dir=tmp_path)
    app = create_app(settings)

    async def start() -> None:
        async with app.router.lifespan_context(app):
            pass

    with pytest.raises(DatabaseNotMigrated, match="edgetune db upgrade"):
        asyncio.run(start())


@pytest.fixture
def scratch_pg(tmp_path: Path) -> Iterator[tuple[Settings, str]]:
    """A PostgreSQL database of this test's own (the test drops it under the running server)."""
    try:
        admin = admin_connect()
    except psycopg.OperationalError as exc:
        postgres_unavailable(str(exc).strip())
    name = f"edgetune_h5_{uuid.uuid4().hex[:10]}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    settings = Settings(database_url=pg_url(name), data_dir=tmp_path, data_root=str(tmp_path))
    upgrade(settings)
    yield settings, name
    with admin_connect() as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_database_loss_is_503_with_retry_after_and_no_traceback(
    scratch_pg: tuple[Settings, str],
) -> None:
    """While the database is gone every request that needs it is a 503 the client can retry
    (Retry-After), not a 500; the driver's message stays in the server log."""
    settings, name = scratch_pg
    headers = api_key(settings)
    with live_server(settings) as url, httpx.Client(base_url=url, headers=headers) as client:
        assert client.get("/readyz").status_code == 200
        assert client.get("/v1/jobs").status_code == 200
        with admin_connect() as admin:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        assert client.get("/livez").status_code == 200  # alive, just not ready
        for response in (
            client.get("/readyz"),
            client.get("/v1/jobs"),
            client.get(f"/v1/jobs/{'0' * 32}"),
            client.post("/v1/recommendations", json=SMALL_SPEC),
        ):
            body = assert_problem(response, 503, detail="the database does not answer")
            assert int(response.headers["Retry-After"]) > 0
            assert "psycopg" not in str(body) and "sqlalchemy" not in str(body).lower()


def _problem_kinds_in_code() -> set[str]:
    """Every problem type slug app/ passes as a literal (ProblemError, _field_problem)."""
    import ast

    kinds: set[str] = set()
    for path in (Path(__file__).resolve().parents[1] / "app").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "id", getattr(node.func, "attr", ""))
            if name not in ("ProblemError", "_field_problem"):
                continue
            values = [k.value for k in node.keywords if k.arg == "type"]
            values += node.args[3:4]
            kinds |= {v.value for v in values if isinstance(v, ast.Constant)}
    return kinds - {"about:blank"}


def test_every_problem_type_uri_resolves_to_its_meaning(client: httpx.Client) -> None:
    from app.errors import PROBLEM_TYPES

    used = _problem_kinds_in_code()
    assert used and used <= set(PROBLEM_TYPES), used - set(PROBLEM_TYPES)
    missing = client.get(f"/v1/jobs/{uuid.uuid4().hex}")
    kind = missing.json()["type"]
    assert kind == "/problems/job-not-found"
    page = client.get(kind)  # a relative reference: it resolves against the API's base URL
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert PROBLEM_TYPES["job-not-found"] in page.text
    assert client.get("/problems/no-such-type").status_code == 404


def test_openapi_documents_the_202_headers_and_problem_media(client: httpx.Client) -> None:
    openapi = client.get("/openapi.json").json()
    post = openapi["paths"]["/v1/recommendations"]["post"]["responses"]
    assert {"Location", "Retry-After"} <= set(post["202"]["headers"])
    get = openapi["paths"]["/v1/jobs/{job_id}"]["get"]["responses"]
    assert "Retry-After" in get["200"]["headers"]
    for path, operations in openapi["paths"].items():
        for method, operation in operations.items():
            for status, answer in operation["responses"].items():
                if status[0] in "45":
                    assert list(answer["content"]) == ["application/problem+json"], (
                        path,
                        method,
                        status,
                    )


def test_a_job_that_has_not_ended_says_when_to_poll_again(client: httpx.Client) -> None:
    job = submit(client, {**SMALL_SPEC, "seed": 4242}).json()
    polled = client.get(f"/v1/jobs/{job['id']}")
    assert polled.json()["status"] == "queued" and int(polled.headers["retry-after"]) >= 1
    client.post(f"/v1/jobs/{job['id']}/cancel")
    ended = client.get(f"/v1/jobs/{job['id']}")
    assert ended.json()["status"] == "cancelled" and "retry-after" not in ended.headers


def test_a_unique_start_of_a_job_id_is_as_good_as_the_id(client: httpx.Client) -> None:
    job = submit(client, {**SMALL_SPEC, "seed": 777}).json()
    prefix = job["id"][:10]
    got = client.get(f"/v1/jobs/{prefix}")
    assert got.status_code == 200 and got.json()["id"] == job["id"]
    assert client.get(f"/v1/jobs/{prefix}/probes").json()["job_id"] == job["id"]
    # Too short to be an id's start, or nobody's: the usual 404.
    assert client.get(f"/v1/jobs/{job['id'][:4]}").status_code == 404
    assert client.get("/v1/jobs/ffffffffff").status_code in (404, 409)
