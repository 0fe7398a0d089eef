"""The HTTP intake (the real app on uvicorn) served from a thread, on a loopback port."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import uvicorn

from dispatcher.config.settings import Settings
from dispatcher.devtools.redis_server import free_port
from dispatcher.intake import create_app
from tests.support.waiting import wait_for

__all__ = ["ThreadedIntake", "start_intake"]


@dataclass
class ThreadedIntake:
    """A running intake: its base URL, stopped with :meth:`stop`."""

    url: str
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def start_intake(settings: Settings) -> ThreadedIntake:
    """``create_app(settings)`` on uvicorn in a daemon thread, once it serves."""
    port = free_port()
    config = uvicorn.Config(
        create_app(settings),
        host="127.0.0.1",
        port=port,
        access_log=False,
        log_config=None,
        lifespan="off",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, timeout=10, message="uvicorn to start")
    return ThreadedIntake(f"http://127.0.0.1:{port}", server, thread)
