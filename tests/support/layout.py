"""Layout migrations with steps of the tests' own, and a contestant in a race of several
processes starting together (tests/store/test_layout.py starts each with
``python -c "from tests.support.layout import race; race(URL, GO)"``)."""

from __future__ import annotations

import json
import os
import time

from structlog.testing import capture_logs

from dispatcher.store.backend import Backend
from dispatcher.store.layout import Migration, check_layout
from tests.support.settings import make_settings

__all__ = ["counting_step", "race"]


def counting_step(version: int, *, pause_s: float = 0.3) -> Migration:
    """A step that counts its runs in Redis and takes a while (so starters overlap)."""

    def run(backend: Backend) -> None:
        backend.redis.incr(f"{backend.keys.prefix}:test:runs:{version}")
        time.sleep(pause_s)
        backend.redis.set(f"{backend.keys.prefix}:test:moved:{version}", "1")

    return Migration(version, f"test step {version} -> {version + 1}", run)


def race(redis_url: str, go: str) -> None:
    """One of several processes starting together: check the layout up to version 3."""
    settings = make_settings(redis_url)
    backend = Backend(settings)
    steps = {1: counting_step(1), 2: counting_step(2)}
    print("ready", flush=True)
    while not os.path.exists(go):  # the starting gun: every process imported and waiting
        time.sleep(0.005)
    with capture_logs() as logs:
        state = check_layout(
            backend, role="worker", migrate=True, current=3, migrations=steps, poll_s=0.02
        )
    print(
        json.dumps(
            {
                "found": state.found,
                "version": state.version,
                "migrated": list(state.migrated),
                "events": [(e["event"], e.get("from_version"), e.get("to_version")) for e in logs],
            }
        )
    )
