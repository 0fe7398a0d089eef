"""The project's root and the tests' settings: short timings on a real Redis."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from dispatcher.config.settings import Settings

if TYPE_CHECKING:
    from dispatcher.simulator import Simulator

__all__ = ["FAST", "ROOT", "make_settings"]

#: The checkout (README.md, pyproject.toml, dispatcher/, tests/).
ROOT = Path(__file__).resolve().parents[2]

#: Short timings so that retries, agent waits and pauses fit in a test.
FAST = {
    "retry_base_s": 0.05,
    "retry_cap_s": 0.3,
    "agent_wait_s": 3.0,
    "http_timeout_s": 1.0,
    "visibility_timeout_s": 8.0,
    "scheduler_interval_s": 0.05,
    "breaker_pause_s": 0.3,
    "pause_s": 1.0,
    "reconcile_after_s": 0.3,
    "log_format": "json",
}


def make_settings(redis_url: str, sim: Simulator | None = None, **overrides: Any) -> Settings:
    """:data:`FAST` settings on ``redis_url``, calling ``sim`` (if given) as user 6666."""
    values: dict[str, Any] = dict(FAST)
    values.update(redis_url=redis_url)
    if sim is not None:
        values.update(vicidial_url=sim.url, vicidial_user="6666", vicidial_pass="1234")
    values.update(overrides)
    return Settings(**values)
