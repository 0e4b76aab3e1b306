"""benchmarks/api_load.py: its lean HTTP client against the real server, and a short run of the
whole script (uvicorn subprocess, embedded SQLite) so CI guards the benchmark."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from app.config import Settings
from benchmarks import api_load
from tests.helpers import SMALL_SPEC, live_server, new_key


def test_lean_client_reads_what_the_api_sends(sqlite_settings: Settings) -> None:
    async def exchange(url: str) -> None:
        client = api_load.LeanClient(url, {"X-API-Key": key})
        try:
            created = await client.post("/v1/recommendations", json=SMALL_SPEC)
            assert created.status_code == 202
            job = created.json()["id"]
            # Several requests on one kept-alive connection, each read to its exact length.
            for _ in range(3):
                got = await client.get(f"/v1/jobs/{job}")
                assert got.status_code == 200 and got.json()["id"] == job
            page = await client.get("/v1/jobs", params={"page_size": 1})
            assert [j["id"] for j in page.json()["jobs"]] == [job]
            missing = await client.get("/v1/jobs/nope")
            assert missing.status_code == 404 and missing.json()["status"] == 404
        finally:
            await client.aclose()

    key = new_key(sqlite_settings, "load")
    with live_server(sqlite_settings) as url:
        asyncio.run(exchange(url))


def test_api_load_smoke(tmp_path: Path) -> None:
    out = tmp_path / "api_load.json"
    argv = ["--backends", "sqlite", "--workers", "1", "--modes", "closed", "--requests", "60"]
    assert api_load.main([*argv, "--clients", "4", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    [run] = result["runs"]
    assert result["client"] == "lean" and run["database"] == "sqlite"
    assert {p["endpoint"] for p in run["phases"]} == {
        "GET /v1/jobs/{id}",
        "POST /v1/recommendations",
    }
    for phase in run["phases"]:
        assert phase["requests"] == 60 and phase["errors"] == 0, phase
        assert 0 < phase["p50_ms"] <= phase["p99_ms"] <= phase["max_ms"]
