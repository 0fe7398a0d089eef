"""The console tests' fixtures: console settings on a real Redis, the app, a logged-in
operator and viewer, and the same with two dialers (east, the default; west).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

from dispatcher.config.settings import Settings
from dispatcher.intake import create_app
from tests.support.console import OPERATOR, SECRET, TOKEN, VIEWER, seed_users, session_client
from tests.support.settings import make_settings


@pytest.fixture
def cs(redis_url: str) -> Settings:
    """Console settings: a real Redis, a VICIdial password that must never show."""
    return make_settings(
        redis_url,
        intake_tokens=(TOKEN,),
        vicidial_url="http://127.0.0.1:9/agc/api.php",
        vicidial_user="6666",
        vicidial_pass=SECRET,
    )


@pytest.fixture
def app(cs: Settings) -> Any:
    seed_users(cs)
    return create_app(cs)


@pytest.fixture
def operator(app: Any) -> Iterator[TestClient]:
    with session_client(app, OPERATOR[0]) as client:
        yield client


@pytest.fixture
def viewer(app: Any) -> Iterator[TestClient]:
    with session_client(app, VIEWER[0]) as client:
        yield client


DIALERS_TOML = """
default = "east"

[dialers.east]
url = "http://127.0.0.1:9/agc/api.php"
user = "6666"
pass_env = "CONSOLE_EAST_PASS"
rate_limit = 50

[dialers.west]
url = "http://127.0.0.1:9/west/agc/api.php"
user = "6666"
pass_env = "CONSOLE_WEST_PASS"
"""


@pytest.fixture
def two(redis_url: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Console settings with two dialers (east, the default, at 50 calls/s; west)."""
    monkeypatch.setenv("CONSOLE_EAST_PASS", SECRET)
    monkeypatch.setenv("CONSOLE_WEST_PASS", "west-Sekr1t-abc")
    path = tmp_path / "dialers.toml"
    path.write_text(DIALERS_TOML)
    settings = make_settings(redis_url, intake_tokens=(TOKEN,), dialers_file=str(path))
    seed_users(settings)
    return settings


@pytest.fixture
def two_operator(two: Settings) -> Iterator[TestClient]:
    with session_client(create_app(two), OPERATOR[0]) as client:
        yield client
