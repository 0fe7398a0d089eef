"""`dispatcher users` (the console's users) as an operator runs it, against a real Redis."""

from __future__ import annotations

import json

import pytest
import redis

from dispatcher.backend import get_backend
from dispatcher.settings import Settings
from dispatcher.users import UserStore
from tests.conftest import make_settings
from tests.test_cli import check, run_cli


@pytest.fixture
def us(redis_url: str) -> Settings:
    return make_settings(redis_url)


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
    short = run_cli(us, "users", "add", "carol", "--password-stdin", input="short\n")
    check(short, 2)
    assert "password: must be at least 10 characters" in short.stderr
    bad_name = run_cli(
        us, "users", "add", "no spaces", "--password-stdin", input="long-enough-pw\n"
    )
    check(bad_name, 2)
    assert "name 'no spaces'" in bad_name.stderr
    check(
        run_cli(us, "users", "add", "carol", "--role", "admin", "--password-stdin", input="x" * 12),
        2,
    )
    no_stdin = run_cli(us, "users", "add", "carol")
    check(no_stdin, 2)
    assert "--password-stdin" in no_stdin.stderr
    check(run_cli(us, "users", "add", "carol", "--password-stdin", input="carol-password\n"))
    again = run_cli(us, "users", "add", "carol", "--password-stdin", input="other-password\n")
    check(again, 1)
    assert "exists" in again.stderr
    check(
        run_cli(
            us,
            "users",
            "add",
            "carol",
            "--role",
            "operator",
            "--replace",
            "--password-stdin",
            input="other-password\n",
        )
    )
    assert UserStore(get_backend(us)).authenticate("carol", "other-password") is not None
    missing = run_cli(us, "users", "remove", "nobody")
    check(missing, 1)
    assert "no user 'nobody'" in missing.stderr
    # Nothing half-written by the refused commands.
    assert [u.name for u in UserStore(get_backend(us)).list()] == ["carol"]
    empty = run_cli(us, "users", "list")
    assert "carol" in empty.stdout
