"""The HTTP intake (``dispatcher serve``): enqueue leads over HTTP, Prometheus metrics.

:func:`create_app` builds the ASGI app (Starlette) for a :class:`~dispatcher.Settings`;
:data:`serve_command` is the click command that runs it on uvicorn. Importing this
package does not import Starlette or uvicorn (``create_app`` is loaded on first
use), so the ``dispatcher`` CLI keeps starting fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dispatcher.intake.cli import serve_command

if TYPE_CHECKING:
    from dispatcher.intake.app import create_app

__all__ = ["create_app", "serve_command"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from dispatcher.intake.app import create_app

        return create_app
    raise AttributeError(name)
