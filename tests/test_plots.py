"""The plots (app/plots.py) of a real job, served at /v1/jobs/{id}/plots/{name}, the compare
plot of several jobs at /v1/plots/order, and the CLI's `plots` and `reproduce` commands through
the installed `edgetune` entry point.

One small job (synthetic data, verification on) is run by the real worker against a live server,
and a second one for the compare plot; every plot must come back as a valid PNG (800×500, Pillow
opens it) and SVG (an <svg> document). The job list's result summary (what the dashboard lists)
is checked against those real results, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from app import plots
from app.config import Settings
from app.db import upgrade
from app.schemas import PLOT_NAMES, ProbeList, Recommendation
from edgetune_cli.main import reproduce_script
from tests.helpers import SMALL_SPEC, api_key, assert_problem, live_server

EDGETUNE = Path(sys.executable).parent / "edgetune"


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    path = tmp_path_factory.mktemp("plots")
    settings = Settings(
        database_url=f"sqlite:///{path / 'edgetune.db'}", data_dir=path, data_root=str(path)
    )
    upgrade(settings)
    return settings


def run_job(client: httpx.Client, settings: Settings, spec: dict) -> str:
    """Submit `spec` and run the real worker on it to the end; the job's id."""
    from worker.main import run_worker  # torch: only the worker side imports it

    job_id = str(client.post("/v1/recommendations", json=spec).json()["id"])
    worker = threading.Thread(
        target=run_worker, args=(settings,), kwargs={"device": "cpu", "once": True}
    )
    worker.start()
    worker.join(timeout=120)
    assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "succeeded"
    return job_id


@pytest.fixture(scope="module")
def server(settings: Settings) -> Iterator[tuple[httpx.Client, str]]:
    """A live server with one finished job (verified), and a client holding an API key."""
    headers = api_key(settings)
    with live_server(settings) as url, httpx.Client(base_url=url, headers=headers) as client:
        yield client, run_job(client, settings, {**SMALL_SPEC, "verify": True})


@pytest.fixture(scope="module")
def second_job(server: tuple[httpx.Client, str], settings: Settings) -> str:
    """Another finished job of the same server (not verified, a longer budget): its id."""
    client, _ = server
    return run_job(
        client, settings, {**SMALL_SPEC, "seed": 3, "budget": {"epochs": 8, "probe_fraction": 1.0}}
    )


def check_png(body: bytes) -> None:
    image = Image.open(io.BytesIO(body))
    image.verify()
    assert image.format == "PNG" and image.size == (800, 500)


def check_svg(body: bytes) -> ET.Element:
    root = ET.fromstring(body)
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    return root


@pytest.mark.parametrize("name", PLOT_NAMES)
def test_each_plot_renders_from_a_real_job_as_png_and_svg(
    server: tuple[httpx.Client, str], name: str
) -> None:
    client, job_id = server
    png = client.get(f"/v1/jobs/{job_id}/plots/{name}")
    assert png.status_code == 200, png.text
    assert png.headers["content-type"] == "image/png"
    check_png(png.content)
    svg = client.get(f"/v1/jobs/{job_id}/plots/{name}", params={"format": "svg"})
    assert svg.headers["content-type"].startswith("image/svg+xml")
    root = check_svg(svg.content)
    # The suffix form gives the same document.
    assert client.get(f"/v1/jobs/{job_id}/plots/{name}.svg").content == svg.content
    # Titles and axis labels are there as text (SVG text is drawn as paths; their ids remain).
    assert len(list(root.iter())) > 100


def test_plots_show_what_the_job_measured(server: tuple[httpx.Client, str]) -> None:
    """The figures are drawn from the job's own numbers: probes, fit and verification."""
    client, job_id = server
    listed = ProbeList.model_validate(client.get(f"/v1/jobs/{job_id}/probes").json())
    recommendation = client.get(f"/v1/jobs/{job_id}/recommendation").json()
    data = plots.PlotData(
        job_id, "succeeded", listed.probes, Recommendation.model_validate(recommendation)
    )
    assert plots.order_kind(data) == recommendation["edge"]["order_parameter"]["name"]
    probes = [p.model_dump(mode="json") for p in listed.probes]

    order = plots.plot_order(data)
    lines = order.axes[0].get_lines()
    # One line per probe plus the edge, which sits at 1.
    assert len(lines) == len(probes) + 1
    assert list(lines[-1].get_ydata()) == [1.0, 1.0]
    first = probes[0]["records"]
    assert list(lines[0].get_xdata()) == [r["epoch"] for r in first]
    assert lines[0].get_ydata()[0] == pytest.approx(first[0]["J"][0] ** 2)

    growth = plots.plot_growth(data)
    ax = growth.axes[0]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    assert "per epoch" in ax.get_ylabel() and "η/((1−α)B)" in ax.get_xlabel()

    trajectory = plots.plot_trajectory(data)
    labels = [line.get_label() for line in trajectory.axes[0].get_lines()]
    assert any(label.startswith("measured") for label in labels), labels
    predicted = recommendation["edge"]["predicted_trajectory"]
    assert list(trajectory.axes[0].get_lines()[0].get_ydata()) == predicted["value"]


def test_an_edge_at_the_end_of_the_run_is_drawn_at_the_end(
    server: tuple[httpx.Client, str],
) -> None:
    """Stumble 5: an edge predicted 0.3 % past the run's end is at its end, as the dashboard
    says, not "beyond this run"; one 20 % past it is beyond."""
    client, job_id = server
    listed = ProbeList.model_validate(client.get(f"/v1/jobs/{job_id}/probes").json())
    result = Recommendation.model_validate(client.get(f"/v1/jobs/{job_id}/recommendation").json())
    assert result.hyperparameters is not None and result.edge.predicted_trajectory is not None
    end = max(result.edge.predicted_trajectory.epoch)

    def drawn(edge_epoch: float) -> tuple[list[str], list[str]]:
        edge = result.edge.model_copy(update={"predicted_edge_epoch": edge_epoch})
        moved = result.model_copy(update={"edge": edge})
        data = plots.PlotData(job_id, "succeeded", listed.probes, moved)
        ax = plots.plot_trajectory(data).axes[0]
        return [str(line.get_label()) for line in ax.get_lines()], [t.get_text() for t in ax.texts]

    labels, texts = drawn(end * 1.003)
    assert f"edge reached at {end:.3g} epochs" in labels, labels
    assert not any("beyond" in t for t in texts), texts
    labels, texts = drawn(end * 1.2)
    assert not any(label.startswith("edge reached") for label in labels), labels
    assert any("beyond this run" in t for t in texts), texts


def test_unknown_plots_and_jobs_without_data_are_problems(
    server: tuple[httpx.Client, str],
) -> None:
    client, job_id = server
    unknown = client.get(f"/v1/jobs/{job_id}/plots/histogram")
    assert unknown.status_code == 404
    assert unknown.headers["content-type"] == "application/problem+json"
    assert "order, collapse, growth, trajectory" in unknown.json()["detail"]
    assert client.get("/v1/jobs/nope/plots/order").status_code == 404
    conflict = client.get(f"/v1/jobs/{job_id}/plots/order.png", params={"format": "svg"})
    assert conflict.status_code == 400
    assert client.get(f"/v1/jobs/{job_id}/plots/order", params={"format": "gif"}).status_code == 400

    queued = client.post("/v1/recommendations", json={**SMALL_SPEC, "seed": 5}).json()
    try:
        for name in PLOT_NAMES:
            response = client.get(f"/v1/jobs/{queued['id']}/plots/{name}")
            assert response.status_code == 409, (name, response.text)
            assert "queued" in response.json()["detail"]
    finally:
        client.post(f"/v1/jobs/{queued['id']}/cancel")


def test_cli_plots_downloads_every_plot(server: tuple[httpx.Client, str], tmp_path: Path) -> None:
    client, job_id = server
    env = {**os.environ, "EDGETUNE_API_KEY": client.headers["X-API-Key"]}
    out = tmp_path / "plots"
    done = subprocess.run(
        [str(EDGETUNE), "plots", job_id, "--out", str(out), "--url", str(client.base_url)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{name}.{fmt}" for name in PLOT_NAMES for fmt in ("png", "svg")
    )
    for name in PLOT_NAMES:
        check_png((out / f"{name}.png").read_bytes())
        check_svg((out / f"{name}.svg").read_bytes())
    missing = subprocess.run(
        [str(EDGETUNE), "plots", "nope", "--out", str(out), "--url", str(client.base_url)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 1 and "Job not found" in missing.stderr


def test_cli_reproduce_runs_the_benchmark_script() -> None:
    done = subprocess.run(
        [str(EDGETUNE), "reproduce", "--help"], capture_output=True, text=True, timeout=60
    )
    if reproduce_script().is_file():
        # --help reaches the script's own parser.
        assert done.returncode == 0, done.stderr
        # Its usage names the command the user typed, and every option says what it is.
        assert "usage: edgetune reproduce" in done.stdout
        assert "folder for the result JSON" in done.stdout
    else:
        assert done.returncode == 1
        assert "reproduce_paper.py is missing" in done.stderr


# --- the compare plot: several jobs' trajectories on one plot ------------------------------


def compare(client: httpx.Client, *ids: str, **params: str) -> httpx.Response:
    return client.get("/v1/plots/order", params={"jobs": ",".join(ids), **params})


def test_compare_plot_of_two_real_jobs_as_png_and_svg(
    server: tuple[httpx.Client, str], second_job: str
) -> None:
    client, first = server
    png = compare(client, first, second_job)
    assert png.status_code == 200, png.text
    assert png.headers["content-type"] == "image/png"
    check_png(png.content)
    svg = compare(client, first, second_job, format="svg")
    assert svg.headers["content-type"].startswith("image/svg+xml")
    check_svg(svg.content)
    # Unique starts of ids are as good as ids, and one job named twice is drawn once.
    again = compare(client, first[:8], second_job, first)
    assert again.status_code == 200 and again.content == png.content


def test_compare_plot_draws_each_jobs_own_trajectory(
    server: tuple[httpx.Client, str], second_job: str
) -> None:
    """Built from what the API serves of two real jobs: one solid line per job through its
    predicted trajectory, the verified job's measured one dotted beside it, and the edge."""
    client, first = server
    jobs = []
    for job_id in (first, second_job):
        job = client.get(f"/v1/jobs/{job_id}").json()
        result = Recommendation.model_validate(
            client.get(f"/v1/jobs/{job_id}/recommendation").json()
        )
        jobs.append(plots.JobTrajectory(job_id, job["status"], result, "mlp · synthetic"))
    ax = plots.plot_compare(jobs).axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    for job in jobs:
        assert job.recommendation is not None and job.recommendation.edge.predicted_trajectory
        label = next(label for label in lines if label.startswith(job.job_id[:8]))
        assert "mlp · synthetic" in label and "η=" in label and "B=" in label
        predicted = job.recommendation.edge.predicted_trajectory
        assert list(lines[label].get_xdata()) == predicted.epoch
        assert list(lines[label].get_ydata()) == predicted.value
    dotted = [line for line in ax.get_lines() if line.get_linestyle() == ":"]
    verification = jobs[0].recommendation.verification  # only the first job was verified
    assert verification is not None
    assert [list(line.get_ydata()) for line in dotted] == [verification.trajectory.measured]
    assert "edge of chaos (= 1)" in lines
    # A job with nothing to show is named on the plot instead of failing it.
    queued = plots.JobTrajectory("f" * 32, "queued", None, "mlp · synthetic")
    texts = [t.get_text() for t in plots.plot_compare([*jobs, queued]).axes[0].texts]
    assert any("ffffffff (queued, no recommendation)" in text for text in texts), texts
    with pytest.raises(plots.PlotUnavailable, match="queued"):
        plots.plot_compare([queued])


def test_compare_plot_problems(
    server: tuple[httpx.Client, str], settings: Settings, second_job: str
) -> None:
    client, first = server
    unknown = compare(client, first, uuid.uuid4().hex)
    assert_problem(unknown, 404, detail="no job")
    too_many = compare(client, *(uuid.uuid4().hex for _ in range(plots.MAX_COMPARED + 1)))
    body = assert_problem(too_many, 422, detail="jobs")
    assert body["errors"][0]["field"] == "jobs"
    assert_problem(compare(client, " , "), 422, detail="1 to 10")
    assert_problem(client.get("/v1/plots/order"), 422)  # no ?jobs= at all
    assert_problem(compare(client, first, format="gif"), 400, detail="png or svg")
    # Another tenant's job is no job of yours.
    other = api_key(settings, tenant="someone-else")
    assert_problem(client.get("/v1/plots/order", params={"jobs": first}, headers=other), 404)
    # Only jobs without a recommended run: nothing to draw yet.
    queued = client.post("/v1/recommendations", json={**SMALL_SPEC, "seed": 77}).json()["id"]
    try:
        assert_problem(compare(client, queued), 409, detail="queued")
        assert compare(client, queued, second_job).status_code == 200
    finally:
        client.post(f"/v1/jobs/{queued}/cancel")
    # Documented: the parameters and the problem responses.
    operation = client.get("/openapi.json").json()["paths"]["/v1/plots/order"]["get"]
    assert {p["name"] for p in operation["parameters"]} == {"jobs", "format"}
    assert {"200", "404", "409", "422"} <= set(operation["responses"])


# --- the job list's result summary (what the dashboard lists for each finished job) --------


def test_the_job_list_carries_each_results_verdict_and_numbers(
    server: tuple[httpx.Client, str], db_settings: Settings
) -> None:
    """A real result (the module's finished job's) stored for a job of a fresh database by the
    queue's own `complete`: GET /v1/jobs and GET /v1/jobs/{id} carry its verdict, learning rate
    and batch size; a queued job has none; OpenAPI documents the field."""
    from app.db import make_engine, session_factory
    from app.queue import claim, complete

    source, finished = server
    result = source.get(f"/v1/jobs/{finished}/recommendation").json()
    headers = api_key(db_settings)
    with (
        live_server(db_settings) as url,
        httpx.Client(base_url=url, headers=headers) as client,
    ):
        done = client.post("/v1/recommendations", json=SMALL_SPEC).json()["id"]
        engine = make_engine(db_settings)
        try:
            with session_factory(engine)() as session:
                assert claim(session, worker_id="w1", lease_seconds=60) is not None
                assert complete(session, done, worker_id="w1", result=result)
        finally:
            engine.dispose()
        queued = client.post("/v1/recommendations", json={**SMALL_SPEC, "seed": 9}).json()["id"]
        listed = {job["id"]: job for job in client.get("/v1/jobs").json()["jobs"]}
        expected = {
            "verdict": result["verdict"],
            "learning_rate": result["hyperparameters"]["learning_rate"],
            "batch_size": result["hyperparameters"]["batch_size"],
        }
        assert listed[done]["result"] == expected
        assert listed[queued]["result"] is None
        assert client.get(f"/v1/jobs/{done}").json()["result"] == expected
        schema = client.get("/openapi.json").json()["components"]["schemas"]
        assert "ResultSummary" in str(schema["JobOut"]["properties"]["result"])
        assert set(schema["ResultSummary"]["properties"]) == set(expected)
