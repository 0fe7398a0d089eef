"""The worker side: ``celery -A workers worker`` finds the Celery app here.

The app is built on first access of ``workers.app`` (it reads the settings), so
importing a module of this package builds nothing and needs no settings.
``workers`` imports ``dispatcher``; ``dispatcher`` never imports ``workers``
(producers send the task by name).
"""

from __future__ import annotations

from typing import Any

__all__ = ["app"]


def __getattr__(name: str) -> Any:
    if name in ("app", "celery"):
        from workers.celery_app import get_app

        return get_app()
    raise AttributeError(f"module 'workers' has no attribute {name!r}")
