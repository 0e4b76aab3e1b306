"""Model and dataset plugins: the entry points of the test package in tests/plugins (installed by
`make install`, as a user's own package would be) run end to end, HTTP → worker →
recommendation, on real SQLite and real PostgreSQL. The API refuses a name no worker advertises
(422 naming the field, no job); a worker refuses an entry point outside edgetune's groups; a job
whose plugins only stopped workers had waits, queued, saying why."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path

import httpx
import pytest
import torch
from sqlalchemy import select
from sqlalchemy.orm import Session

import edgetune
from app import fleet, queue, service
from app.config import Settings
from app.datasets import DatasetPathError
from app.db import make_engine, session_factory
from app.models import Worker, utcnow
from app.schemas import (
    DATASET_PLUGINS,
    MODEL_PLUGINS,
    PluginModelSpec,
    Recommendation,
    RecommendationSpec,
)
from edgetune import plugins
from edgetune.nets import PluginNet, SpecError, build_model, layer_infos
from tests.helpers import api_key, assert_problem, live_server
from worker.data import load_dataset
from worker.plan import plan_probes
from worker.probe import init_model

VERSION = "edgetune-test-plugins 0.1.0"
MODEL = {"type": "plugin", "name": "residual-cnn", "kwargs": {"width": 8}}
DATA = {"name": "plugin", "plugin": "fashion-mnist-view", "kwargs": {"train": 512, "test": 128}}
# Seconds on a CPU: 469 training images (the rest of 512 is validation), a 3-conv residual CNN.
SPEC = {"model": MODEL, "dataset": DATA, "budget": {"epochs": 5, "probe_fraction": 1.0}}
GREY = (1, 28, 28)


def test_the_test_package_registers_its_plugins_with_their_versions() -> None:
    assert plugins.installed(MODEL_PLUGINS) == {"residual-cnn": VERSION}
    assert plugins.installed(DATASET_PLUGINS) == {
        "fashion-mnist-view": VERSION,
        "fashion-mnist-tensors": VERSION,
    }
    assert "outsider" in {e.name for e in entry_points(group="edgetune_test_plugins.other")}


def test_a_plugin_model_is_built_from_its_entry_point_and_nothing_else() -> None:
    model = build_model(PluginModelSpec.model_validate(MODEL), GREY, 10)
    assert isinstance(model, PluginNet) and model(torch.rand(2, *GREY)).shape == (2, 10)
    # stem, two residual convs; the Linear head is the read-out. Residual convs map onto
    # themselves (8 → 8 channels, 3×3, padding 1).
    infos = layer_infos(model)
    assert [(i.kind, i.fan_in, i.square) for i in infos] == [
        ("conv", 9, False),
        ("conv", 72, True),
        ("conv", 72, True),
    ]
    # Installed, callable, but registered in another group: refused, naming what is installed.
    with pytest.raises(SpecError) as refused:
        build_model(PluginModelSpec(name="outsider"), GREY, 10)
    assert refused.value.field == "model.name" and "residual-cnn" in refused.value.message
    with pytest.raises(SpecError) as bad:
        build_model(PluginModelSpec(name="residual-cnn", kwargs={"depth": 3}), GREY, 10)
    assert bad.value.field == "model.kwargs"


def test_build_model_gives_the_plugin_module_the_probes_trained(data_root: Path) -> None:
    spec = RecommendationSpec.model_validate(SPEC)
    dataset = load_dataset(spec.dataset, [data_root], spec.seed)
    probed = init_model(spec.model, dataset, plan_probes(spec, dataset)[0].config.seed)
    built = edgetune.build_model(SPEC, input_shape=GREY, num_classes=10)
    assert str(built) == str(probed)
    pairs = list(zip(built.state_dict().items(), probed.state_dict().items(), strict=True))
    assert all(a[0] == b[0] and torch.equal(a[1], b[1]) for a, b in pairs)


def test_a_dataset_plugin_gives_tensors_or_datasets_split_like_any_data(data_root: Path) -> None:
    views = {
        name: load_dataset(
            RecommendationSpec.model_validate(
                {**SPEC, "dataset": {**DATA, "plugin": name}}
            ).dataset,
            [data_root],
        )
        for name in ("fashion-mnist-view", "fashion-mnist-tensors")
    }
    a, b = views.values()
    assert (a.input_shape, a.num_classes) == (GREY, 10)
    assert a.train_size + len(a.x_val) == 512 and len(a.x_test) == 128
    assert round(512 / 12) == len(a.x_val)  # the default validation fraction, carved from train
    for part in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        assert torch.equal(getattr(a, part), getattr(b, part)), part
    outside = RecommendationSpec.model_validate({**SPEC, "dataset": {**DATA, "plugin": "outsider"}})
    with pytest.raises(DatasetPathError) as refused:
        load_dataset(outside.dataset, [data_root])
    assert refused.value.field == "dataset.plugin" and "fashion-mnist-view" in str(refused.value)


def test_a_worker_claims_only_jobs_whose_plugins_it_has(session: Session) -> None:
    spec = RecommendationSpec.model_validate(SPEC).model_dump(mode="json")
    job, _ = queue.create_job(session, spec=spec)
    assert (job.model_plugin, job.dataset_plugin) == ("residual-cnn", "fashion-mnist-view")
    assert queue.claim(session, worker_id="bare", lease_seconds=60) is None
    only_model = {"models": ["residual-cnn"], "datasets": ["fashion-mnist-tensors"]}
    assert queue.claim(session, worker_id="half", lease_seconds=60, **only_model) is None
    claimed = queue.claim(
        session,
        worker_id="full",
        lease_seconds=60,
        models=["residual-cnn"],
        datasets=["fashion-mnist-view"],
    )
    assert claimed is not None and claimed.id == job.id
    plain, _ = queue.create_job(session, spec={"model": {"type": "mlp"}, "dataset": {}})
    assert queue.claim(session, worker_id="bare", lease_seconds=60).id == plain.id


@pytest.fixture
def settings(db_settings: Settings, data_root: Path) -> Settings:
    return db_settings.model_copy(update={"data_root": str(data_root), "poll_seconds": 0.1})


class RunningWorker:
    """The real worker loop in a thread, until `stop()`."""

    def __init__(self, settings: Settings) -> None:
        from worker.main import run_worker

        self.event = threading.Event()
        self.thread = threading.Thread(
            target=run_worker,
            args=(settings,),
            kwargs={"device": "cpu", "stop": self.event, "worker_id": "plugin-test-worker"},
        )
        self.thread.start()

    def stop(self) -> None:
        self.event.set()
        self.thread.join(timeout=60)
        assert not self.thread.is_alive()


@pytest.fixture
def reader(settings: Settings) -> Iterator[Session]:
    """A session on the test's database, beside the server's and the worker's."""
    engine = make_engine(settings)
    with session_factory(engine)() as session:
        yield session
    engine.dispose()


def _advertised(session: Session, timeout: float = 20) -> Worker:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        session.expire_all()
        worker = session.scalars(select(Worker)).first()
        if worker is not None:
            return worker
        time.sleep(0.05)
    raise AssertionError("the worker never advertised")


def _wait(http: httpx.Client, job_id: str, timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = http.get(f"/v1/jobs/{job_id}").json()
        if job["status"] not in ("queued", "running"):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish: {job}")


def test_plugins_run_end_to_end_and_unknown_names_are_refused(
    settings: Settings, reader: Session
) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny nets: more threads only synchronise
    worker = RunningWorker(settings)
    try:
        with (
            live_server(settings) as url,
            httpx.Client(base_url=url, headers=api_key(settings), timeout=30) as http,
        ):
            advert = _advertised(reader)
            assert advert.models == {"residual-cnn": VERSION}
            assert advert.datasets == plugins.installed(DATASET_PLUGINS)
            assert advert.device.startswith("cpu") and advert.stopped_at is None
            _refused(http)

            job = http.post("/v1/recommendations", json=SPEC).json()
            done = _wait(http, job["id"])
            assert done["status"] == "succeeded", done
            result = Recommendation.model_validate(
                http.get(f"/v1/jobs/{job['id']}/recommendation").json()
            )
            assert result.hyperparameters is not None, result.validity
            assert result.edge.order_parameter.name == "J2"
            # No scaling law was validated on a user's own model: the result says so.
            assert result.validity.flags["outside_validated_regime"]
            assert any("plugin models" in w for w in result.validity.warnings)
            probes = http.get(f"/v1/jobs/{job['id']}/probes").json()["probes"]
            assert probes and all(p["records"] for p in probes)

            worker.stop()
            _waits_when_its_workers_are_gone(http, reader)
    finally:
        worker.stop()
        torch.set_num_threads(threads)


def _refused(http: httpx.Client) -> None:
    """Names no worker advertises: 422 naming the field and listing the known names, no job."""
    cases = [
        ({**SPEC, "model": {**MODEL, "name": "no-such-model"}}, "model.name", "residual-cnn"),
        ({**SPEC, "model": {**MODEL, "name": "outsider"}}, "model.name", "residual-cnn"),
        ({**SPEC, "dataset": {**DATA, "plugin": "nope"}}, "dataset.plugin", "fashion-mnist-view"),
    ]
    for spec, field, known in cases:
        body = assert_problem(http.post("/v1/recommendations", json=spec), 422)
        assert [e["field"] for e in body["errors"]] == [field], body
        assert known in body["errors"][0]["message"], body
    assert http.get("/v1/jobs").json()["jobs"] == []


def _waits_when_its_workers_are_gone(http: httpx.Client, reader: Session) -> None:
    reader.expire_all()
    (gone,) = reader.scalars(select(Worker)).all()
    assert gone.stopped_at is not None  # a clean stop retires the advert at once
    response = http.post("/v1/recommendations", json={**SPEC, "seed": 1})
    assert response.status_code == 202, response.text
    time.sleep(0.5)  # no worker would claim it anyway; this is what a poll shows meanwhile
    job = http.get(f"/v1/jobs/{response.json()['id']}").json()
    assert job["status"] == "queued"
    message = job["progress"]["message"]
    assert "waiting for a worker with 'residual-cnn' and 'fashion-mnist-view'" in message, job
    # The job list says so too (the CLI's and the dashboard's view of every job).
    (listed,) = [j for j in http.get("/v1/jobs").json()["jobs"] if j["id"] == job["id"]]
    assert listed["progress"]["message"] == message
    check = fleet.check_plugins(reader, RecommendationSpec.model_validate(SPEC), 60)
    assert check.unknown == [] and check.waiting is not None


def test_adverts_make_plugins_live_known_or_forgotten(session: Session) -> None:
    spec = RecommendationSpec.model_validate(SPEC)
    assert fleet.check_plugins(session, spec, 60).unknown[0][0] == "model.name"  # no worker yet
    advert = fleet.Advert(
        models=plugins.installed(MODEL_PLUGINS),
        datasets=plugins.installed(DATASET_PLUGINS),
        device="cpu",
    )
    fleet.advertise(session, "w1", advert)
    fleet.advertise(session, "w1", advert)  # every poll: the same row, seen again
    assert fleet.check_plugins(session, spec, 60) == fleet.PluginCheck([], None)
    # Seen longer ago than a lease (here: a lease of 0 s): known but not live, so the job waits.
    waiting = fleet.check_plugins(session, spec, 0).waiting
    assert waiting is not None and "none is live" in waiting
    # Queued while w1 was live; read after w1 stopped, the job says what it waits for.
    job, _ = queue.create_job(session, spec=spec.model_dump(mode="json"))
    assert (
        service.get_job(session, job_id=job.id, tenant="default", lease_seconds=60).progress.message
        is None
    )
    fleet.retire(session, "w1")
    assert "none is live" in (fleet.check_plugins(session, spec, 60).waiting or "")
    read = service.get_job(session, job_id=job.id, tenant="default", lease_seconds=60)
    assert read.status == "queued" and "none is live" in (read.progress.message or "")
    assert fleet.forget_stale(session, now=utcnow() + fleet.FORGET_AFTER / 2) == 0
    assert fleet.forget_stale(session, now=utcnow() + 2 * fleet.FORGET_AFTER) == 1
    (field, message), *_ = fleet.check_plugins(session, spec, 60).unknown
    assert field == "model.name" and "known: none" in message


def test_a_plugin_over_the_servers_limits_fails_in_the_worker(settings: Settings) -> None:
    """The API cannot size a plugin model (it never imports one); the worker does, and fails the
    job at once, naming the limit."""
    from worker.main import run_worker

    tight = settings.model_copy(update={"max_parameters": 1000})
    engine = make_engine(tight)
    with session_factory(engine)() as session:
        spec = RecommendationSpec.model_validate(SPEC).model_dump(mode="json")
        job, _ = queue.create_job(session, spec=spec)
        assert run_worker(tight, device="cpu", once=True) == 0
        failed = queue.get_job(session, job.id)
    engine.dispose()
    assert failed is not None and failed.status == "failed" and failed.attempts == 1
    assert "plugin 'residual-cnn' has 1,314 parameters" in (failed.error or ""), failed.error
    assert "over this server's limit 1,000" in (failed.error or "")
