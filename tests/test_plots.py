"""The plots (app/plots.py) of a real job, served at /v1/jobs/{id}/plots/{name}, and the CLI's
`plots` and `reproduce` commands through the installed `edgetune` entry point.

One small job (synthetic data, verification on) is run by the real worker against a live server;
every plot must come back as a valid PNG (800×500, Pillow opens it) and SVG (an <svg> document).
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
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
from tests.helpers import SMALL_SPEC, api_key, live_server

EDGETUNE = Path(sys.executable).parent / "edgetune"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[httpx.Client, str]]:
    """A live server with one finished job (verified), and a client holding an API key."""
    from worker.main import run_worker  # torch: only the worker side imports it

    path = tmp_path_factory.mktemp("plots")
    settings = Settings(
        database_url=f"sqlite:///{path / 'edgetune.db'}", data_dir=path, data_root=str(path)
    )
    upgrade(settings)
    headers = api_key(settings)
    with live_server(settings) as url, httpx.Client(base_url=url, headers=headers) as client:
        response = client.post("/v1/recommendations", json={**SMALL_SPEC, "verify": True})
        job_id = response.json()["id"]
        worker = threading.Thread(
            target=run_worker, args=(settings,), kwargs={"device": "cpu", "once": True}
        )
        worker.start()
        worker.join(timeout=120)
        assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "succeeded"
        yield client, job_id


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
