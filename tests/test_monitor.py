"""The training-loop monitor (edgetune.monitor): its J agrees with the probe engine's on the paper
model at equal steps (same init, same SGD, same batches); it measures arbitrary modules, warns
once past the edge, and reports a real run to a live server, which stores it idempotently,
per tenant, and plots it beside the predicted trajectory (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import warnings
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sqlalchemy.orm import Session
from torch import nn

from app import queue, service
from app.config import Settings
from app.errors import ProblemError
from app.schemas import DatasetSpec, MLPSpec, RecommendationSpec
from edgetune.client import AsyncClient, Client
from edgetune.measured import MeasuredTrajectories, TrajectoryPoint, TrajectoryReport
from edgetune.monitor import EdgeWarning, Monitor, hidden_weights
from edgetune.nets import seeded_model
from tests.helpers import SMALL_SPEC, api_key, assert_problem, live_server
from worker.data import Dataset, load_dataset
from worker.probe import ProbeConfig, _order_generator, run_population

EVERY = 100
STEPS = 400


@pytest.fixture(scope="module")
def fashion(data_root: Path) -> Dataset:
    return load_dataset(DatasetSpec(), [data_root])


def _plain_loop(dataset: Dataset, config: ProbeConfig) -> list[list[float]]:
    """A user's loop: the probe's initial model, torch.optim.SGD, the probe's batches."""
    model = seeded_model(MLPSpec(), dataset.input_shape, dataset.num_classes, config.seed)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=config.learning_rate, momentum=config.momentum
    )
    monitor = Monitor(model, every=EVERY, steps_per_epoch=dataset.train_size // 32)
    generator = _order_generator(config.seed)  # the probe's data order: seed + 1, per epoch
    steps_per_epoch = dataset.train_size // config.batch_size
    order = torch.empty(0, dtype=torch.long)
    for step in range(config.steps):
        position = step % steps_per_epoch
        if position == 0:
            order = torch.randperm(dataset.train_size, generator=generator)
        idx = order[position * config.batch_size : (position + 1) * config.batch_size]
        loss = F.cross_entropy(model(dataset.x_train[idx]), dataset.y_train[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        monitor.step()
    assert [m.step for m in monitor.measurements] == list(range(0, STEPS + 1, EVERY))
    assert monitor.measurements[-1].epoch == pytest.approx(STEPS / steps_per_epoch)
    return [m.J for m in monitor.measurements]


def test_the_monitor_measures_the_probe_engines_J_on_the_paper_model(fashion: Dataset) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        config = ProbeConfig(0.05, 0.9, 0.0, 32, 7, STEPS)
        (probe,) = run_population(
            MLPSpec(),
            fashion,
            [config],
            device=torch.device("cpu"),
            measure_every=EVERY,
            eval_every=0,
        )
        measured = _plain_loop(fashion, config)
    finally:
        torch.set_num_threads(threads)
    engine = [r.J for r in probe.records]
    assert [r.step for r in probe.records] == list(range(0, STEPS + 1, EVERY))
    relative = np.abs(np.array(measured) - np.array(engine)) / np.array(engine)
    print(f"monitor vs engine J, max relative difference over steps 0..{STEPS}: {relative.max()}")
    assert relative.max() < 0.01, (measured, engine)
    # J moved by far more than the tolerance over the run: agreement is not trivial.
    assert measured[-1][0] > 1.05 * measured[0][0]
    assert measured[0][0] == pytest.approx(0.5, rel=0.01)  # the paper's J_init


def test_any_module_is_measured_and_drifting_past_the_edge_warns_once() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(4 * 6 * 6, 32),
        nn.Tanh(),
        nn.Linear(32, 10),
    )
    # Hidden layers: the conv (fan-in 1·3·3) and the first Linear; the last Linear is the read-out.
    assert [fan_in for _, fan_in in hidden_weights(model)] == [9, 144]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        monitor = Monitor(model, every=2)
        first = monitor.measurements[0]
        for layer, (w, fan_in) in zip((0, 3), hidden_weights(model), strict=True):
            expected = np.sqrt(fan_in) * w.detach().numpy().std()  # population std
            assert first.J[[0, 3].index(layer)] == pytest.approx(expected, rel=1e-5)
        assert monitor.step() is None and caught == []
        with torch.no_grad():
            model[3].weight.mul_(20.0)  # far into the chaotic phase
        assert monitor.step() is not None and monitor.drifted_at == 2
        for _ in range(4):
            monitor.step()
    assert [w.category for w in caught] == [EdgeWarning]
    assert "step 2" in str(caught[0].message)
    with pytest.raises(ValueError, match="no hidden"):
        Monitor(nn.Linear(4, 2))


@pytest.fixture
def settings(db_settings: Settings, data_root: Path) -> Settings:
    return db_settings.model_copy(update={"data_root": str(data_root)})


def _succeeded_job(http: httpx.Client, settings: Settings) -> str:
    from worker.main import run_worker

    job = http.post("/v1/recommendations", json=SMALL_SPEC).json()
    assert run_worker(settings, device="cpu", once=True) == 0
    assert http.get(f"/v1/jobs/{job['id']}").json()["status"] == "succeeded"
    return str(job["id"])


def test_a_monitored_run_is_reported_stored_once_and_plotted(settings: Settings) -> None:
    headers = api_key(settings)
    with live_server(settings) as url, httpx.Client(base_url=url, headers=headers) as http:
        job_id = _succeeded_job(http, settings)
        before = http.get(f"/v1/jobs/{job_id}/plots/trajectory.png").content
        model = seeded_model(MLPSpec(hidden=[32]), (16,), 4, 0)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(64, 16, generator=generator)
        y = torch.randint(0, 4, (64,), generator=generator)
        with (
            pytest.warns(EdgeWarning, match="passed the edge"),  # η = 0.5, α = 0.9: it will
            Monitor(
                model, every=5, steps_per_epoch=8, job=job_id, url=url, api_key=headers["X-API-Key"]
            ) as monitor,
        ):
            for _ in range(130):  # 27 measurements: one report at 20, the rest on close
                loss = F.cross_entropy(model(x), y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                monitor.step()
        stored = http.get(f"/v1/jobs/{job_id}/trajectory").json()
        (run,) = stored["runs"]
        assert run["run"] == "default" and run["kind"] == "J2"
        assert [p["step"] for p in run["points"]] == [m.step for m in monitor.measurements]
        assert [p["value"] for p in run["points"]] == pytest.approx(
            [m.J2 for m in monitor.measurements]
        )
        assert run["points"][-1]["epoch"] == pytest.approx(130 / 8)
        after = http.get(f"/v1/jobs/{job_id}/plots/trajectory.png")
        assert after.status_code == 200 and after.content != before
        _idempotent_and_scoped(http, settings, url, job_id, headers["X-API-Key"])


def _idempotent_and_scoped(
    http: httpx.Client, settings: Settings, url: str, job_id: str, key: str
) -> None:
    point = TrajectoryPoint(step=5, epoch=0.625, value=0.3, J=[0.5477])
    report = TrajectoryReport(run="second", points=[point])
    with Client(url, api_key=key) as client:
        once = client.report_trajectory(job_id, report)
        twice = client.report_trajectory(job_id, report)
        assert once == twice and [r.run for r in twice.runs] == ["default", "second"]
        assert client.trajectory(job_id) == twice

    async def from_async() -> MeasuredTrajectories:
        async with AsyncClient(url, api_key=key) as client:
            await client.report_trajectory(job_id, report)
            return await client.trajectory(job_id)

    assert asyncio.run(from_async()) == twice
    # Another tenant's job is not found; a malformed report is a 422 naming the field.
    other = {"X-API-Key": api_key(settings, tenant="other")["X-API-Key"]}
    body = report.model_dump(mode="json")
    assert_problem(http.post(f"/v1/jobs/{job_id}/trajectory", json=body, headers=other), 404)
    assert_problem(http.get(f"/v1/jobs/{job_id}/trajectory", headers=other), 404)
    bad = http.post(f"/v1/jobs/{job_id}/trajectory", json={**body, "points": []})
    assert "points" in str(assert_problem(bad, 422))


def test_a_run_holds_a_bounded_number_of_points(
    session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    job, _ = queue.create_job(
        session, spec=RecommendationSpec.model_validate(SMALL_SPEC).model_dump(mode="json")
    )
    monkeypatch.setattr(service, "MAX_POINTS_PER_RUN", 3)
    points = [TrajectoryPoint(step=s, value=0.25, J=[0.5]) for s in range(3)]
    report = TrajectoryReport(points=points)
    stored = service.report_trajectory(session, job_id=job.id, tenant="default", report=report)
    assert [p.step for p in stored.runs[0].points] == [0, 1, 2]
    more = TrajectoryReport(points=[TrajectoryPoint(step=3, value=0.25, J=[0.5])])
    with pytest.raises(ProblemError) as full:
        service.report_trajectory(session, job_id=job.id, tenant="default", report=more)
    assert full.value.status == 422 and "more than 3 points" in str(full.value)
    # Another run of the same job has its own bound; the full run kept its points.
    other = TrajectoryReport(run="other", points=more.points)
    assert (
        len(service.report_trajectory(session, job_id=job.id, tenant="default", report=other).runs)
        == 2
    )


def test_the_lightning_callback_exists_exactly_where_lightning_does() -> None:
    import importlib.util

    from edgetune import monitor

    installed = any(importlib.util.find_spec(n) for n in ("lightning", "pytorch_lightning"))
    assert hasattr(monitor, "EdgeCallback") == installed
    if not installed:
        pytest.skip("neither lightning nor pytorch_lightning is installed (optional)")
    pl = pytest.importorskip(
        "lightning.pytorch" if importlib.util.find_spec("lightning") else "pytorch_lightning"
    )

    class Tiny(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 2))

        def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> torch.Tensor:
            return F.cross_entropy(self.net(batch[0]), batch[1])

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    data = torch.utils.data.TensorDataset(torch.randn(64, 8), torch.randint(0, 2, (64,)))
    callback = monitor.EdgeCallback(every=4)
    trainer = pl.Trainer(
        max_steps=16,
        callbacks=[callback],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(Tiny(), torch.utils.data.DataLoader(data, batch_size=8))
    assert callback.monitor is not None
    assert [m.step for m in callback.monitor.measurements] == [0, 4, 8, 12, 16]


def test_an_unreachable_service_never_stops_the_training_loop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    # Port 9 (discard) on loopback: nothing listens, the connection is refused.
    with Monitor(model, every=1, job="0" * 32, url="http://127.0.0.1:9") as monitor:
        for _ in range(3):
            monitor.step()
    assert len(monitor.measurements) == 4
    assert "could not report" in caplog.text and len(monitor._unsent) == 4


def test_the_overhead_benchmark_runs(tmp_path: Path, data_root: Path) -> None:
    import json
    import subprocess
    import sys

    out = tmp_path / "overhead.json"
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "monitor_overhead.py"
    done = subprocess.run(
        [sys.executable, str(script), "--steps", "20", "--repeats", "2", "--every", "5"]
        + ["--data-root", str(data_root), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert "overhead" in done.stdout and len(result["pairs"]) == 2
    assert result["git"]["revision"] and result["machine"]["torch_threads"] == 1
    assert 0 < result["overhead"]["accounted"] < 1
