"""The Python client (edgetune.Client, edgetune.AsyncClient) against a live server.

uvicorn serves the real app on a loopback port over a real SQLite file; the real worker trains
the jobs (a small synthetic dataset, seconds on a CPU). The README's "Use from a pipeline" block
is extracted and run as written.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from email.utils import formatdate
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from app import queue
from app.config import Settings
from app.db import make_engine, session_factory, upgrade
from app.schemas import JobOut, ProbeList, RecommendationSpec
from edgetune import (
    AsyncClient,
    Client,
    EdgetuneError,
    InvalidSpec,
    JobCancelled,
    JobFailed,
    ProblemError,
    Unreachable,
    WaitTimeout,
    build_model,
)
from edgetune.client import MAX_POLL_SECONDS, Backoff, load_spec, retry_after
from edgetune.schemas import Recommendation
from tests.helpers import SMALL_SPEC, api_key, live_server

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    path = tmp_path_factory.mktemp("client")
    settings = Settings(
        database_url=f"sqlite:///{path / 'edgetune.db'}",
        data_dir=path / "data",
        data_root=str(path),
        poll_seconds=0.1,
    )
    upgrade(settings)
    return settings


@pytest.fixture(scope="module")
def url(settings: Settings) -> Iterator[str]:
    with live_server(settings) as base:
        yield base


@pytest.fixture(scope="module")
def key(settings: Settings) -> str:
    """An API key (an explicit database means keys are required, as in any deployment)."""
    return api_key(settings)["X-API-Key"]


@pytest.fixture
def worker(settings: Settings) -> Iterator[None]:
    """The real worker loop, polling every 0.1 s, for the length of one test."""
    from worker.main import run_worker  # torch: only the worker side imports it

    stop = threading.Event()
    thread = threading.Thread(
        target=run_worker, args=(settings,), kwargs={"device": "cpu", "stop": stop}
    )
    thread.start()
    yield
    stop.set()
    thread.join(timeout=60)


@pytest.fixture
def sessions(settings: Settings) -> Iterator[Session]:
    engine = make_engine(settings)
    with session_factory(engine)() as session:
        yield session
    engine.dispose()


def test_importing_the_client_imports_neither_torch_nor_the_service(tmp_path: Path) -> None:
    code = (
        "import sys; import edgetune; from edgetune import Client, AsyncClient; "
        "from edgetune.schemas import RecommendationSpec; "
        "bad = sorted(m for m in sys.modules "
        "if m.split('.')[0] in ('torch', 'worker', 'numpy', 'app')); "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    # A user's own top-level `app` package, first on sys.path, does not break the client.
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "__init__.py").write_text("USER_APP = True\n")
    code = "import app; assert app.USER_APP; from edgetune import Client; print('ok')"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode == 0 and "ok" in done.stdout, done.stdout + done.stderr


def test_sync_client_runs_a_job_to_its_recommendation(url: str, key: str, worker: None) -> None:
    with Client(url, api_key=key) as client:
        job = client.submit(SMALL_SPEC, idempotency_key="client-sync")
        assert isinstance(job, JobOut) and job.status in ("queued", "running")
        # The same key and spec: the same job, not a second one.
        assert client.submit(SMALL_SPEC, idempotency_key="client-sync").id == job.id
        done = client.wait(job.id, timeout=60, poll=0.1)
        assert done.status == "succeeded" and done.progress.fraction == 1.0
        result = client.recommendation(job.id)
        assert isinstance(result, Recommendation)
        hyper = result.hyperparameters
        assert hyper is not None
        assert hyper.learning_rate > 0 and hyper.batch_size >= 1
        kwargs = set(hyper.torch_sgd_kwargs.model_dump())
        assert kwargs == {"lr", "momentum", "weight_decay", "nesterov"}
        probes = client.probes(job.id)
        assert isinstance(probes, ProbeList) and len(probes.probes) == done.progress.probes_done
        assert probes.probes[0].records[0]["epoch"] == 0.0
        assert job.id in [j.id for j in client.jobs(status="succeeded")]
        # A job that cannot finish in 0.2 s (its verification trains 200 epochs): wait gives up
        # with WaitTimeout, and the job keeps running until cancelled.
        slow = client.submit(
            {**SMALL_SPEC, "verify": True, "budget": {"epochs": 200, "probe_fraction": 1.0}}
        )
        with pytest.raises(WaitTimeout) as timed_out:
            client.wait(slow.id, timeout=0.2, poll=0.05)
        assert isinstance(timed_out.value, TimeoutError)
        assert timed_out.value.job.id == slow.id and "keeps running" in str(timed_out.value)
        client.cancel(slow.id)


def test_async_client_recommend_and_paging(url: str, key: str, worker: None) -> None:
    spec = RecommendationSpec.model_validate({**SMALL_SPEC, "seed": 1})

    async def main() -> tuple[dict, list[JobOut], list[JobOut]]:
        async with AsyncClient(url, api_key=key) as client:
            result = await client.recommend(spec, timeout=60)
            paged = [job async for job in client.jobs(page_size=1)]
            everything = [job async for job in client.jobs()]
            return result, paged, everything

    result, paged, everything = asyncio.run(main())
    assert isinstance(result, Recommendation)
    assert result.hyperparameters is not None and result.hyperparameters.momentum < 1
    assert result.seed == 1
    # page_size=1 walks every page: the same jobs, in the same (newest first) order.
    assert len(paged) >= 2 and [j.id for j in paged] == [j.id for j in everything]


def test_a_spec_from_a_yaml_file_and_wait_false(url: str, key: str, tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(
        "model: {type: mlp, hidden: [8]}\n"
        "dataset: {name: synthetic, synthetic_samples: 64, synthetic_features: 4}\n"
        "budget: {epochs: 1}\nseed: 7\n"
    )
    with Client(url, api_key=key) as client:
        job = client.recommend(path, wait=False)
        assert isinstance(job, JobOut) and job.spec["seed"] == 7
        # No worker in this test: the job is still queued, so cancelling ends it at once.
        assert client.cancel(job.id).status == "cancelled"
        with pytest.raises(JobCancelled) as cancelled:
            client.wait(job.id, timeout=5)
        assert cancelled.value.job.status == "cancelled"
        with pytest.raises(ProblemError) as finished:
            client.cancel(job.id)
        assert finished.value.status == 409 and "already cancelled" in finished.value.detail


def test_errors_are_typed_and_carry_the_problem(url: str, key: str) -> None:
    with Client(url, api_key="") as anonymous, pytest.raises(ProblemError) as unauthorized:
        anonymous.job("no-such-job")
    assert unauthorized.value.status == 401 and "X-API-Key" in unauthorized.value.detail
    with Client(url, api_key=key) as client:
        with pytest.raises(ProblemError) as missing:
            client.job("no-such-job")
        assert missing.value.status == 404 and missing.value.title == "Job not found"
        assert missing.value.type.endswith("job-not-found")
        # Valid as a spec, over this server's limit (max_probe_fraction 2): the server's 422.
        with pytest.raises(ProblemError) as rejected:
            client.submit({**SMALL_SPEC, "budget": {"epochs": 5, "probe_fraction": 50}})
        assert rejected.value.status == 422
        assert rejected.value.errors[0]["field"] == "budget.probe_fraction"
        assert "budget.probe_fraction" in str(rejected.value)

        job = client.submit({**SMALL_SPEC, "seed": 99})
        with pytest.raises(ProblemError) as not_ready:
            client.recommendation(job.id)
        assert not_ready.value.status == 409
        client.cancel(job.id)  # leave nothing queued for the next test's worker


def test_job_failed_carries_the_workers_error(url: str, key: str, sessions: Session) -> None:
    with Client(url, api_key=key) as client:
        job = client.submit({**SMALL_SPEC, "seed": 98})
        # Fail it the way a worker does: claim it, then record a permanent error.
        claimed = queue.claim(sessions, worker_id="test", lease_seconds=60)
        assert claimed is not None and claimed.id == job.id
        queue.fail_or_retry(
            sessions, job.id, worker_id="test", error="ValueError: boom", retry=False
        )
        with pytest.raises(JobFailed) as failed:
            client.wait(job.id, timeout=5)
        assert failed.value.error == "ValueError: boom"
        assert isinstance(failed.value, EdgetuneError)


def test_local_validation_and_an_unreachable_server() -> None:
    with Client("http://127.0.0.1:9") as client:
        with pytest.raises(ValueError, match="hidden"):
            client.submit({"model": {"type": "mlp", "hidden": "wide"}})
        with pytest.raises(Unreachable, match="cannot reach"):
            client.job("x")


def test_a_bad_spec_is_an_edgetune_error_naming_the_field(tmp_path: Path) -> None:
    """Checked before anything is sent (nothing listens at this URL): the same field names and
    `errors` list (an attribute, as on ProblemError) as the server's 422."""
    with Client("http://127.0.0.1:9") as client:
        with pytest.raises(EdgetuneError) as bad:
            client.submit({**SMALL_SPEC, "model": {"type": "mlp", "hidden": "wide"}})
        assert isinstance(bad.value, InvalidSpec)
        assert bad.value.errors[0]["field"] == "model.hidden"
        assert "model.hidden" in str(bad.value)
        broken = tmp_path / "broken.yaml"
        broken.write_text("model: [unclosed\n")
        with pytest.raises(InvalidSpec) as unparsable:
            client.submit(broken)
        assert unparsable.value.errors[0]["field"] == "body"


def test_backoff_grows_with_jitter_honours_retry_after_and_the_deadline() -> None:
    backoff = Backoff(1.0, deadline=None)
    pauses = [backoff.next(None) for _ in range(12)]
    assert 0.8 <= pauses[0] <= 1.2 and 1.2 <= pauses[1] <= 1.8
    assert max(pauses) <= MAX_POLL_SECONDS and pauses[-1] >= 0.8 * MAX_POLL_SECONDS
    # A Retry-After longer than the backoff wins; the deadline wins over both.
    assert Backoff(0.1, deadline=None).next(5.0) == 5.0
    assert Backoff(0.1, deadline=time.monotonic() + 0.5).next(5.0) <= 0.5
    assert retry_after({"retry-after": "3"}) == 3.0
    assert 8 <= (retry_after({"Retry-After": formatdate(time.time() + 10, usegmt=True)}) or 0) <= 10
    assert retry_after({"retry-after": "soon"}) is None and retry_after({}) is None


def readme_example() -> str:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Use from a pipeline", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
    assert len(blocks) == 1, "the section holds one python example"
    return blocks[0]


def test_the_readme_pipeline_example_runs_as_written(
    url: str, key: str, worker: None, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """Run as written (in this process, so that its `model` can be looked at after): it trains
    the very module the job's first probe started from, and trains it well."""
    import torch  # the example's, and the worker side's

    from edgetune.nets import seeded_model
    from worker.data import load_dataset

    monkeypatch.setenv("EDGETUNE_URL", url)
    monkeypatch.setenv("EDGETUNE_API_KEY", key)
    monkeypatch.chdir(REPO)
    namespace: dict = {}
    exec(compile(readme_example(), "README.md", "exec"), namespace)
    out = capsys.readouterr().out
    found = re.search(r"trained \d+(\.\d+)? epochs at batch size \d+: accuracy (\S+)", out)
    assert found and float(found[2]) > 0.9, out
    # The job the example asked for: the seed its first probe stored rebuilds the model the
    # example started from, and the example trained that module away from those weights.
    spec = load_spec(namespace["spec"])
    with Client(url, api_key=key) as client:
        job = next(j for j in client.jobs() if j.spec == spec.model_dump(mode="json"))
        first = next(p for p in client.probes(job.id).probes if p.key == "p00")
    dataset = load_dataset(spec.dataset, [], spec.seed)
    start = seeded_model(spec.model, dataset.input_shape, dataset.num_classes, first.config["seed"])
    rebuilt = build_model(namespace["spec"])
    trained = namespace["model"]
    assert str(trained) == str(start) == str(rebuilt)
    pairs = list(zip(start.parameters(), trained.parameters(), rebuilt.parameters(), strict=True))
    assert all(torch.equal(s, r) for s, _, r in pairs)
    assert not any(torch.equal(s, t) for s, t, _ in pairs)

