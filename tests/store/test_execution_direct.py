"""A worker's execution commands on per-thread connections outside redis-py's pool:
same answers as through the pool, and they survive a flushed script cache, a killed
connection and a fork (real Redis)."""

from __future__ import annotations

import os
import threading

import redis

from dispatcher.store.execution import Execution, new_token


def _claim(execution: Execution, job_id: str) -> str:
    return execution.claim(
        job_id,
        seq=1,
        token=new_token(),
        lease_s=30,
        ttl=600,
        rate_interval_s=0.0,
        worker="w",
        max_rate_wait_s=1.0,
        server="default",
    ).verdict


def test_direct_commands_answer_as_the_pool_does_and_survive_a_flush_and_a_kill(
    redis_url: str,
) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    pooled = Execution(client, prefix="t", queue="q")
    direct = pooled.direct()
    assert direct.connections is not None and pooled.connections is None
    assert _claim(direct, "a") == "ok"
    assert _claim(pooled, "a") == "busy" == _claim(direct, "a")  # the same record
    client.script_flush()  # what a restarted Redis without persistence looks like
    assert _claim(direct, "b") == "ok"
    client.client_kill_filter(_type="normal", skipme=True)  # every other connection
    assert _claim(direct, "c") == "ok"  # a fresh connection, not an error
    # Each thread has its own connection; none of them is taken from the pool.
    names: set[int] = set()

    def run() -> None:
        _claim(direct, f"t{threading.get_ident()}")
        assert direct.connections is not None
        names.add(id(direct.connections.connection()))

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(names) == 4


def test_a_forked_child_opens_its_own_connection(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    direct = Execution(client, prefix="t", queue="q").direct()
    assert _claim(direct, "parent") == "ok"
    connections = direct.connections
    assert connections is not None
    parent_connection = connections.connection()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        ok = _claim(direct, "child") == "ok"
        fresh = connections.connection() is not parent_connection
        os.write(write, b"1" if ok and fresh else b"0")
        os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(read, 1) == b"1"
    assert _claim(direct, "parent-again") == "ok"  # the parent's socket was left alone
