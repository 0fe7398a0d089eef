"""The console without the intake: ``create_app(intake=False)`` and
``dispatcher serve --no-intake`` (dispatcher/cli/serve.py, run as
``dispatcher serve``) need no token and serve no /v1 route.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Any

import httpx
import pytest

from dispatcher.config.settings import Settings
from dispatcher.devtools.localfleet import settings_env
from dispatcher.devtools.redis_server import free_port
from dispatcher.intake import create_app
from dispatcher.model.errors import ConfigError
from tests.support.console import OPERATOR, seed_users, session_client
from tests.support.settings import ROOT, make_settings
from tests.support.waiting import wait_for


def test_console_only_app_needs_no_token_and_has_no_v1_routes(cs: Settings) -> None:
    settings = cs.replace(intake_tokens=())
    seed_users(settings)
    app = create_app(settings, intake=False)
    with session_client(app, OPERATOR[0]) as client:
        assert client.get("/ui/").status_code == 200
        assert client.get("/healthz").status_code == 200
        assert client.post("/v1/leads", json={}).status_code == 401
    with pytest.raises(ConfigError):
        create_app(settings)


def test_serve_no_intake_runs_the_console_alone_without_a_token(
    redis_url: str, tmp_path: Any
) -> None:
    """`dispatcher serve` still refuses to start without a token; --no-intake is the way."""
    settings = make_settings(redis_url)
    env = {**os.environ, **settings_env(settings)}
    env.pop("DISPATCHER_INTAKE_TOKENS", None)
    refused = subprocess.run(
        [sys.executable, "-m", "dispatcher.cli", "serve", "--port", str(free_port())],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2 and "--no-intake" in refused.stderr
    port = free_port()
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "dispatcher.cli", "serve", "--no-intake", "--port", str(port)],
        env=env,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:

        def up() -> bool:
            try:
                return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
            except httpx.TransportError:
                assert proc.poll() is None, (tmp_path / "serve.log").read_text()
                return False

        wait_for(up, timeout=30, message="serve --no-intake to answer")
        assert httpx.get(f"{base}/ui/login").status_code == 200
        assert httpx.get(f"{base}/ui/", follow_redirects=False).status_code == 303
        assert httpx.post(f"{base}/v1/leads", json={}).status_code == 401
        assert httpx.get(f"{base}/openapi.json").status_code == 404  # no intake, no document
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
        log.close()
