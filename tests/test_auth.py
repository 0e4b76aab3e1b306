"""API keys and tenants through real HTTP on real SQLite and PostgreSQL: isolation, 401s, keys
stored hashed and shown once, revocation, the `edgetune keys` commands, and where auth may be off.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest
import uvicorn
from sqlalchemy import text

from app.auth import AuthConfigError, create_key, list_keys, revoke_key
from app.config import Settings
from app.db import make_engine, session_factory
from app.main import create_app
from tests.helpers import SMALL_SPEC, assert_problem, live_server, new_key

REPO = Path(__file__).resolve().parents[1]
EDGETUNE = str(Path(sys.executable).with_name("edgetune"))


def test_tenants_see_only_their_own_jobs(db_settings: Settings) -> None:
    a, b = new_key(db_settings, "tenant-a"), new_key(db_settings, "tenant-b")
    with (
        live_server(db_settings) as url,
        httpx.Client(base_url=url, headers={"X-API-Key": a}) as alice,
        httpx.Client(base_url=url, headers={"X-API-Key": b}) as bob,
    ):
        job = alice.post("/v1/recommendations", json=SMALL_SPEC).json()["id"]
        assert alice.get(f"/v1/jobs/{job}").json()["status"] == "queued"
        for path in (f"/v1/jobs/{job}", f"/v1/jobs/{job}/probes", f"/v1/jobs/{job}/recommendation"):
            assert_problem(bob.get(path), 404, detail="no job")
        assert_problem(bob.post(f"/v1/jobs/{job}/cancel"), 404, detail="no job")
        assert bob.get("/v1/jobs").json()["jobs"] == []
        assert [j["id"] for j in alice.get("/v1/jobs").json()["jobs"]] == [job]
        # Bob's cancel attempt changed nothing; the same Idempotency-Key is per tenant.
        assert alice.get(f"/v1/jobs/{job}").json()["status"] == "queued"
        key = {"Idempotency-Key": "shared"}
        first = alice.post("/v1/recommendations", json=SMALL_SPEC, headers=key).json()["id"]
        other = bob.post("/v1/recommendations", json=SMALL_SPEC, headers=key)
        assert other.status_code == 202 and other.json()["id"] != first


def test_missing_invalid_and_revoked_keys_are_401(db_settings: Settings) -> None:
    key = new_key(db_settings, "acme")
    with live_server(db_settings) as url, httpx.Client(base_url=url) as http:
        for headers in ({}, {"X-API-Key": "et_not-a-key"}, {"X-API-Key": ""}):
            response = http.get("/v1/jobs", headers=headers)
            assert_problem(response, 401)
            assert "X-API-Key" in response.headers["www-authenticate"]
        # The key is checked before the body is read: no 422 for an unauthenticated bad body.
        assert_problem(http.post("/v1/recommendations", json={"model": 1}), 401)
        assert http.get("/v1/jobs", headers={"X-API-Key": key}).status_code == 200

        engine = make_engine(db_settings)
        with session_factory(engine)() as session:
            # The key is checked in the request's own transaction; its use is saved with it.
            [used] = list_keys(session, tenant="acme")
            assert used.last_used_at is not None
            revoked = revoke_key(session, key[:12])
            assert revoked.revoked_at is not None
        engine.dispose()
        assert_problem(http.get("/v1/jobs", headers={"X-API-Key": key}), 401, detail="revoked")

        # What needs no key: health, metrics and the API's description.
        for path in ("/livez", "/readyz", "/metrics", "/openapi.json", "/docs"):
            assert http.get(path).status_code == 200, path
        openapi = http.get("/openapi.json").json()
        scheme = openapi["components"]["securitySchemes"]["ApiKey"]
        assert scheme == {"type": "apiKey", "in": "header", "name": "X-API-Key"}
        get_job = openapi["paths"]["/v1/jobs/{job_id}"]["get"]
        assert get_job["security"] == [{"ApiKey": []}] and "401" in get_job["responses"]
        assert "security" not in openapi["paths"]["/livez"]["get"]


def test_keys_are_stored_hashed_and_listed_by_prefix(db_settings: Settings) -> None:
    engine = make_engine(db_settings)
    with session_factory(engine)() as session:
        created = create_key(session, tenant="acme", name="ci")
        second = create_key(session, tenant="acme")
        assert created.key.startswith("et_") and len(created.key) > 40
        assert created.new_tenant_secret and created.new_tenant_secret.startswith("whsec_")
        assert second.new_tenant_secret is None  # the tenant existed: its secret is not re-shown
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT * FROM api_keys")).all()
        assert len(rows) == 2
        # No column of any row holds the key, or any long piece of it.
        assert created.key[3:20] not in repr(rows)
        row = next(r._mapping for r in rows if r._mapping["id"] == created.id)
        assert row["key_hash"] == hashlib.sha256(created.key.encode()).hexdigest()
        assert row["prefix"] == created.key[:12] and row["name"] == "ci"
        listed = {k.id: k for k in list_keys(session, tenant="acme")}
        assert set(listed) == {created.id, second.id}
        assert list_keys(session, tenant="nobody") == []
        with pytest.raises(ValueError, match="no key"):
            revoke_key(session, "et_nothing")
    engine.dispose()


def test_auth_can_be_off_only_for_the_embedded_default_on_loopback(tmp_path: Path) -> None:
    embedded = Settings(data_dir=tmp_path / "home", data_root=str(tmp_path))
    assert embedded.embedded and embedded.auth == "disabled"
    with live_server(embedded) as url, httpx.Client(base_url=url) as http:
        assert http.post("/v1/recommendations", json=SMALL_SPEC).status_code == 202
        assert len(http.get("/v1/jobs").json()["jobs"]) == 1

    assert Settings(data_dir=tmp_path, host="0.0.0.0").auth == "required"
    explicit = f"sqlite:///{tmp_path / 'x.db'}"
    assert Settings(database_url=explicit).auth == "required"
    for refused in (
        Settings(database_url=explicit, auth="disabled"),
        Settings(data_dir=tmp_path, host="0.0.0.0", auth="disabled"),
    ):
        with pytest.raises(AuthConfigError, match="loopback"):
            create_app(refused)

    env = {**os.environ, "EDGETUNE_AUTH": "disabled", "EDGETUNE_DATA_DIR": str(tmp_path)}
    env.pop("EDGETUNE_DATABASE_URL", None)
    serve = subprocess.run(
        [EDGETUNE, "serve", "--host", "0.0.0.0", "--port", "1"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert serve.returncode == 1
    assert "only allowed for the embedded default on a loopback host" in serve.stderr
    assert "Traceback" not in serve.stderr


def test_keys_commands(sqlite_settings: Settings) -> None:
    # SQLite only: each command is a process start (about 1.5 s here); the functions behind them
    # run on both databases in the tests above.
    db_settings = sqlite_settings
    env = {**os.environ, "EDGETUNE_DATABASE_URL": db_settings.database_url}

    def edgetune(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [EDGETUNE, "keys", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
        )

    tenant = f"t-{uuid.uuid4().hex[:6]}"
    created = edgetune("create", "--tenant", tenant, "--name", "pipeline")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("et_") and "shown only this once" in created.stderr
    assert "whsec_" in created.stderr  # a new tenant's webhook secret, also shown once

    listed = edgetune("list", "--tenant", tenant, "--json")
    assert listed.returncode == 0, listed.stderr
    assert key not in listed.stdout and key[:12] in listed.stdout
    with live_server(db_settings) as url:
        assert httpx.get(f"{url}/v1/jobs", headers={"X-API-Key": key}).status_code == 200
        revoked = edgetune("revoke", key[:12])
        assert revoked.returncode == 0 and "revoked" in revoked.stdout, revoked.stderr
        assert httpx.get(f"{url}/v1/jobs", headers={"X-API-Key": key}).status_code == 401
    assert '"revoked_at": null' not in edgetune("list", "--tenant", tenant, "--json").stdout

    secret = edgetune("secret", "--tenant", tenant)
    rotated = edgetune("secret", "--tenant", tenant, "--rotate")
    assert secret.stdout.startswith("whsec_") and rotated.stdout.startswith("whsec_")
    assert secret.stdout != rotated.stdout
    assert edgetune("secret", "--tenant", tenant).stdout == rotated.stdout

    missing = edgetune("revoke", "et_nope")
    assert missing.returncode == 1 and "no key" in missing.stderr
    bad = edgetune("create", "--tenant", "no spaces allowed")
    assert bad.returncode == 1 and "tenant names" in bad.stderr


def this_machines_address() -> str:
    """A non-loopback IPv4 address of this machine (the one its default route would use)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("10.255.255.255", 1))  # UDP: no packet is sent
        address = str(probe.getsockname()[0])
    if address.startswith("127."):
        pytest.skip("this machine has no non-loopback IPv4 address")
    return address


def test_auth_off_still_refuses_requests_from_elsewhere(tmp_path: Path) -> None:
    """`uvicorn --host 0.0.0.0` with the embedded default (settings still say 127.0.0.1): only
    requests from this machine get in without a key."""
    settings = Settings(data_dir=tmp_path / "home", data_root=str(tmp_path))
    assert settings.auth == "disabled"
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("0.0.0.0", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(settings), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        while not server.started:
            assert thread.is_alive()
            time.sleep(0.01)
        assert httpx.get(f"http://127.0.0.1:{port}/v1/jobs").status_code == 200
        outside = httpx.get(f"http://{this_machines_address()}:{port}/v1/jobs")
        assert_problem(outside, 401, detail="from this machine only")
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        sock.close()
