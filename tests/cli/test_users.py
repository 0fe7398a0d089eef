"""`dispatcher users` (the console's users) as an operator runs it, against a real Redis.

The first test runs the real `dispatcher` executable (a pipe on its standard
input); the error cases run the same click command in this process (CliRunner),
because each `dispatcher` process costs seconds of start-up on a busy machine.
"""

from __future__ import annotations

import json
import logging

import pytest
import redis
from click.testing import CliRunner, Result

from dispatcher.cli import cli
from dispatcher.config import logs
from dispatcher.config.settings import Settings, get_settings
from dispatcher.devtools.localfleet import settings_env
from dispatcher.store.backend import get_backend
from dispatcher.store.users import UserStore
from tests.support.cli import check, run_cli
from tests.support.settings import make_settings


@pytest.fixture
def us(redis_url: str) -> Settings:
    return make_settings(redis_url)


def users_cli(settings: Settings, *args: str, input: str | None = None) -> Result:
    """`dispatcher users ARGS` in this process, with ``settings`` as its environment."""
    get_settings.cache_clear()
    configured = logs.is_configured()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        return CliRunner(env=settings_env(settings)).invoke(
            cli, ["users", *args], input=input, prog_name="dispatcher"
        )
    finally:
        get_settings.cache_clear()
        if not configured:
            # The command configured logging onto CliRunner's streams, closed now:
            # put this process back as it was for the tests that follow.
            logs.reset_logging()
            root.handlers[:] = handlers
            root.setLevel(level)


def expect(result: Result, code: int) -> None:
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_add_list_remove(us: Settings) -> None:
    check(
        run_cli(
            us,
            "users",
            "add",
            "alice",
            "--role",
            "operator",
            "--password-stdin",
            input="alice-password-1\n",
        )
    )
    check(run_cli(us, "users", "add", "bob", "--password-stdin", input="bob-password-12"))
    listed = run_cli(us, "users", "list", "--json")
    check(listed)
    users = json.loads(listed.stdout)
    assert [(u["name"], u["role"]) for u in users] == [("alice", "operator"), ("bob", "viewer")]
    assert all(u["created_at"] for u in users)
    # The password is stored only as a salted Argon2id hash; the newline was not part of it.
    r = redis.Redis.from_url(us.redis_url, decode_responses=True)
    stored = r.hget(f"{us.key_prefix}:user:alice", "password_hash") or ""
    assert stored.startswith("$argon2id$") and "alice-password-1" not in json.dumps(
        r.hgetall(f"{us.key_prefix}:user:alice")
    )
    store = UserStore(get_backend(us))
    assert store.authenticate("alice", "alice-password-1") is not None
    assert store.authenticate("alice", "alice-password-1\n") is None
    check(run_cli(us, "users", "remove", "bob"))
    assert [u["name"] for u in json.loads(run_cli(us, "users", "list", "--json").stdout)] == [
        "alice"
    ]
    table = run_cli(us, "users", "list")
    check(table)
    assert "alice" in table.stdout and "operator" in table.stdout


def test_bad_input_and_failures_have_clear_errors_and_exit_codes(us: Settings) -> None:
    short = users_cli(us, "add", "carol", "--password-stdin", input="short\n")
    expect(short, 2)
    assert "password: must be at least 10 characters" in short.stderr
    bad_name = users_cli(us, "add", "no spaces", "--password-stdin", input="long-enough-pw\n")
    expect(bad_name, 2)
    assert "name 'no spaces'" in bad_name.stderr
    expect(users_cli(us, "add", "carol", "--role", "admin", "--password-stdin", input="x" * 12), 2)
    no_stdin = users_cli(us, "add", "carol")  # no terminal to ask on, and no --password-stdin
    expect(no_stdin, 2)
    assert "--password-stdin" in no_stdin.stderr
    expect(users_cli(us, "add", "carol", "--password-stdin", input="carol-password\n"), 0)
    again = users_cli(us, "add", "carol", "--password-stdin", input="other-password\n")
    expect(again, 1)
    assert "exists" in again.stderr
    replaced = users_cli(
        us,
        "add",
        "carol",
        "--role",
        "operator",
        "--replace",
        "--password-stdin",
        input="other-password\n",
    )
    expect(replaced, 0)
    assert UserStore(get_backend(us)).authenticate("carol", "other-password") is not None
    missing = users_cli(us, "remove", "nobody")
    expect(missing, 1)
    assert "no user 'nobody'" in missing.stderr
    # Nothing half-written by the refused commands.
    assert [(u.name, u.role) for u in UserStore(get_backend(us)).list()] == [("carol", "operator")]
    listed = users_cli(us, "list", "--json")
    expect(listed, 0)
    assert [u["name"] for u in json.loads(listed.stdout)] == ["carol"]
