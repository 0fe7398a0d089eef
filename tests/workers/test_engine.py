"""The lead engine (workers/engine.py): the runner's rules, on one event loop.

In-process engines against a real Redis and the simulator over real HTTP; the
consumer's ack and reject are recorded instead of sent (the end-to-end tests run
the engine inside real Celery workers). Lost and late Redis replies come from a
real TCP proxy (:mod:`tests.support.faultproxy`); the harness is
:mod:`tests.support.engine`.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import structlog
from structlog.testing import capture_logs as _capture_logs

from dispatcher import DeadLetterStore
from dispatcher.config import logs as logs_module
from dispatcher.config.settings import Settings
from dispatcher.simulator import Simulator
from dispatcher.store.backend import get_backend
from dispatcher.store.connection import async_redis_client
from dispatcher.store.execution import Execution
from tests.support.engine import Harness, engine_connections, enqueue_message, job_state
from tests.support.faultproxy import FaultProxy
from tests.support.settings import make_settings
from tests.support.tlsproxy import TlsProxy
from tests.support.waiting import wait_for
from workers import engine as engine_module
from workers.batching import LoopPipeline


def capture_logs() -> Any:
    return _capture_logs(processors=[structlog.contextvars.merge_contextvars])


@pytest.fixture
def harness(settings: Settings) -> Iterator[Callable[..., Harness]]:
    made: list[Harness] = []

    def make(s: Settings | None = None, **kwargs: Any) -> Harness:
        made.append(Harness(s or settings, **kwargs))
        return made[-1]

    yield make
    for h in made:
        h.close()


def test_many_leads_in_flight_are_each_added_once_and_acked_after_their_outcome(
    settings: Settings, simulator: Simulator, harness: Callable[..., Harness]
) -> None:
    simulator.set_latency(200)
    h = harness(capacity=40)
    messages = [enqueue_message(settings, f"72755{i:05d}") for i in range(40)]
    started = time.monotonic()
    with capture_logs() as logs:
        for message in messages:
            h.submit(message)
        h.wait(40)
    # 40 calls of 200 ms in flight together, not one after another (8 s).
    assert time.monotonic() - started < 4.0
    assert h.kinds() == ["ack"] * 40
    assert all(job_state(settings, m) == "added" for m in messages)
    counts = simulator.count_by_phone()
    assert all(counts[f"72755{i:05d}"] == 1 for i in range(40))
    added = [e for e in logs if e["event"] == "lead.added"]
    assert len(added) == 40 and {e["job_id"] for e in added} == {m["job_id"] for m in messages}
    assert all(e["lead_id"] and e["dialer"] == "default" for e in added)
    assert h.engine.held == 0


class _SlowStream:
    """A log stream whose every write takes 30 ms; records when each one ended."""

    def __init__(self) -> None:
        self.written: list[tuple[float, str]] = []

    def write(self, text: str) -> int:
        time.sleep(0.03)
        self.written.append((time.time(), text))
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


def test_no_request_leaves_before_its_attempt_line_is_written(
    settings: Settings, simulator: Simulator, harness: Callable[..., Harness]
) -> None:
    """A call absent from the logs was never made: each request reaches VICIdial only
    after the write of its lead.attempt line has ended (slow writes make a request
    sent too early arrive while its line is still being written). The second round
    reuses the first one's connections: a request then goes out in its line's turn."""
    stream = _SlowStream()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    logs_module.configure_logging(fmt="json", stream=stream, force=True)  # type: ignore[arg-type]
    structlog.configure(cache_logger_on_first_use=False)  # later tests capture again
    try:
        h = harness(capacity=20)
        for round_ in range(2):
            for i in range(20):
                h.submit(enqueue_message(settings, f"72755{round_ * 20 + i:05d}"))
            h.wait(20 * (round_ + 1))
    finally:
        logs_module.reset_logging()
        root.handlers[:] = handlers
        root.setLevel(level)
    written: dict[str, float] = {}
    for ended, text in stream.written:
        for line in text.splitlines():
            event = json.loads(line)
            if event["event"] == "lead.attempt":
                written[event["phone"]] = ended
    assert h.kinds() == ["ack"] * 40 and len(simulator.requests) == 40
    for request in simulator.requests:
        masked = logs_module.mask_phone(request.fields["phone_number"])
        assert request.at >= written[masked], masked


def test_a_copy_arriving_while_the_first_calls_is_deferred_not_called(
    settings: Settings, simulator: Simulator, harness: Callable[..., Harness]
) -> None:
    simulator.set_latency(400)
    h = harness()
    message = enqueue_message(settings, "7275551212")
    h.submit(message)
    wait_for(lambda: simulator.call_count >= 1, message="the first call")
    h.submit(dict(message))
    h.wait(2)
    assert h.kinds() == ["ack", "ack"]
    assert simulator.count_by_phone()["7275551212"] == 1
    assert job_state(settings, message) == "added"


def test_failures_bad_messages_and_retries_follow_the_runners_rules(
    settings: Settings, simulator: Simulator, harness: Callable[..., Harness]
) -> None:
    h = harness()
    simulator.script_phone("7275550002", ["http_503", None])
    dnc = enqueue_message(settings, "7275550000")  # on the simulator's DNC list
    busy = enqueue_message(settings, "7275550002")
    with capture_logs() as logs:
        h.submit(dnc)
        h.submit(busy)
        h.submit({"job_id": "x", "lead": "not a lead"})
        h.wait(3)
    assert h.kinds() == ["ack", "ack", "ack"]
    letters = {letter.reason for letter in DeadLetterStore(settings=settings).iter()}
    assert letters == {"dnc", "invalid_payload"}
    assert job_state(settings, busy) == "retrying"
    events = [e["event"] for e in logs]
    assert events.count("lead.dead_lettered") == 2 and "lead.retry_scheduled" in events


def test_a_lost_claim_reply_is_recognised_as_our_own_claim(
    settings: Settings, simulator: Simulator, harness: Callable[..., Harness], proxy: FaultProxy
) -> None:
    h = harness(settings.replace(redis_url=proxy.url))
    h.submit(enqueue_message(settings, "7275550100"))  # warm: script loaded, connection made
    h.wait(1)
    message = enqueue_message(settings, "7275551212")
    # The claim's reply is lost twice (the connection cut after it ran): once in the
    # batch, once in its immediate retry; the job goes on on a thread, same token.
    proxy.drop_replies(2)
    h.submit(message)
    h.wait(2)
    assert proxy.dropped == 2
    assert h.kinds() == ["ack", "ack"]
    assert job_state(settings, message) == "added"
    assert simulator.count_by_phone()["7275551212"] == 1


def test_a_lost_success_reply_counts_the_lead_once(
    settings: Settings, simulator: Simulator, harness: Callable[..., Harness], proxy: FaultProxy
) -> None:
    h = harness(settings.replace(redis_url=proxy.url))
    h.submit(enqueue_message(settings, "7275550100"))
    h.wait(1)
    simulator.set_latency(300)
    message = enqueue_message(settings, "7275551212")
    with capture_logs() as logs:
        h.submit(message)
        wait_for(lambda: simulator.call_count >= 2, message="the call")
        proxy.drop_replies(2)  # the success write's reply, and its immediate retry's
        h.wait(2)
    assert proxy.dropped == 2
    assert h.kinds() == ["ack", "ack"]
    stats = redis.Redis.from_url(settings.redis_url, decode_responses=True).hgetall(
        f"{settings.key_prefix}:stats"
    )
    assert stats["added"] == "2" and stats["latency_count"] == "2"
    # Logged once, before it was stored; the retry on a thread does not log it again.
    assert [e["event"] for e in logs].count("lead.added") == 1


def test_redis_away_hands_the_message_back_instead_of_acknowledging_it(
    settings: Settings, simulator: Simulator, harness: Callable[..., Harness], proxy: FaultProxy
) -> None:
    h = harness(settings.replace(redis_url=proxy.url))
    h.runner.writes.hold_s = 1.0  # give up holding the message after 1 s (the visibility timeout)
    h.submit(enqueue_message(settings, "7275550100"))
    h.wait(1)
    message = enqueue_message(settings, "7275551212")
    proxy.refuse(30.0)
    h.submit(message)
    h.wait(2, timeout=30)
    assert h.kinds() == ["ack", "reject"]
    assert simulator.count_by_phone().get("7275551212", 0) == 0


def test_stop_lets_every_call_in_flight_finish_and_store_its_outcome(
    settings: Settings, simulator: Simulator
) -> None:
    simulator.set_latency(500)
    h = Harness(settings)
    messages = [enqueue_message(settings, f"72755{i:05d}") for i in range(5)]
    for message in messages:
        h.submit(message)
    wait_for(lambda: simulator.call_count >= 5, message="the calls")
    assert h.engine.stop(timeout=20)
    h.runner.close()
    assert h.kinds() == ["ack"] * 5
    assert all(job_state(settings, m) == "added" for m in messages)


def _pipeline(settings: Settings, loop: asyncio.AbstractEventLoop, **kwargs: Any) -> LoopPipeline:
    execution: Execution = get_backend(settings).execution
    client = async_redis_client(settings, socket_timeout=1.0, retries=1, max_connections=4)
    return LoopPipeline(client, execution, loop, deadline_s=10.0, **kwargs)


def _close_pipeline(pipeline: LoopPipeline, loop: asyncio.AbstractEventLoop) -> None:
    loop.run_until_complete(pipeline.aclose())
    loop.close()


def test_each_reply_comes_back_in_its_place_and_an_error_reply_stays_its_own(
    redis_url: str,
) -> None:
    settings = make_settings(redis_url)
    backend = get_backend(settings)
    loop = asyncio.new_event_loop()
    pipeline = _pipeline(settings, loop)
    try:
        backend.redis.script_load(backend.execution.source)

        async def run() -> list[Any]:
            calls = [
                pipeline.call("resume", "a"),
                pipeline.call("no_such_command"),
                pipeline.call("resume", "b"),
            ]
            return await asyncio.gather(*calls, return_exceptions=True)

        first, bad, last = loop.run_until_complete(run())
        assert not isinstance(first, BaseException) and not isinstance(last, BaseException)
        assert isinstance(bad, redis.ResponseError) and "unknown command" in str(bad)
        backend.redis.script_flush()  # as after a Redis restart
        # NOSCRIPT: the pipeline loads the script and runs those commands again.
        first, bad, last = loop.run_until_complete(run())
        assert not isinstance(first, BaseException) and not isinstance(last, BaseException)
        assert isinstance(bad, redis.ResponseError) and "unknown command" in str(bad)
    finally:
        _close_pipeline(pipeline, loop)


def test_a_batch_is_one_round_trip_with_no_script_check(
    settings: Settings, proxy: FaultProxy
) -> None:
    """The commands staged in a turn leave as one write and come back as one read:
    no SCRIPT EXISTS (redis-py's Script objects add one to every pipeline)."""
    backend = get_backend(settings)
    backend.redis.script_load(backend.execution.source)
    loop = asyncio.new_event_loop()
    pipeline = _pipeline(settings.replace(redis_url=proxy.url), loop)
    try:
        loop.run_until_complete(pipeline.call("resume", "warm"))  # connect, name, select
        backend.redis.config_resetstat()
        before = proxy.requests

        async def run() -> list[Any]:
            return await asyncio.gather(*[pipeline.call("resume", f"s{i}") for i in range(20)])

        for _ in range(5):
            loop.run_until_complete(run())
        assert proxy.requests - before == 5
        stats = backend.redis.info("commandstats")
        assert stats["cmdstat_evalsha"]["calls"] == 100
        assert "cmdstat_script|exists" not in stats and "cmdstat_script" not in stats
    finally:
        _close_pipeline(pipeline, loop)


def test_the_loop_connection_lost_fails_what_was_in_flight_and_the_next_turn_reconnects(
    settings: Settings, proxy: FaultProxy
) -> None:
    via_proxy = settings.replace(redis_url=proxy.url)
    get_backend(settings).redis.script_load(get_backend(settings).execution.source)
    loop = asyncio.new_event_loop()
    pipeline = _pipeline(via_proxy, loop)
    try:
        assert loop.run_until_complete(pipeline.call("resume", "a")) is not None
        # The reply is lost with the connection twice: the batch and its one retry.
        proxy.drop_replies(2)
        with pytest.raises(redis.ConnectionError):
            loop.run_until_complete(pipeline.call("resume", "b"))
        assert loop.run_until_complete(pipeline.call("resume", "c")) is not None
        assert proxy.dropped == 2
        # Once: the retry on a new connection gets the reply.
        proxy.drop_replies(1)
        assert loop.run_until_complete(pipeline.call("resume", "d")) is not None
        assert proxy.dropped == 3
    finally:
        _close_pipeline(pipeline, loop)


def test_concurrent_submissions_from_many_threads_are_all_settled(
    settings: Settings, simulator: Simulator, harness: Callable[..., Harness]
) -> None:
    h = harness(capacity=64)
    messages = [enqueue_message(settings, f"72756{i:05d}") for i in range(60)]
    threads = [
        threading.Thread(target=lambda chunk=chunk: [h.submit(m) for m in chunk])
        for chunk in (messages[0::3], messages[1::3], messages[2::3])
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    h.wait(60)
    assert h.kinds() == ["ack"] * 60
    assert len(simulator.count_by_phone()) == 60


# -- dropped and half-open connections (issue 23 item 5) ----------------------------------


def _feed_until_added(
    h: Harness, settings: Settings, messages: list[dict[str, Any]], *, timeout: float = 30.0
) -> None:
    """Hand the engine each retry or reconcile step the scheduler would move back,
    until every job is added (a worker's scheduler does this; the harness has none)."""
    fed: set[str] = set()
    end = time.monotonic() + timeout
    while not all(job_state(settings, m) == "added" for m in messages):
        assert time.monotonic() < end, [job_state(settings, m) for m in messages]
        client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
        due = client.zrangebyscore(f"{settings.key_prefix}:scheduled", "-inf", "+inf")
        for envelope in due:
            if envelope in fed:
                continue
            client.zrem(f"{settings.key_prefix}:scheduled", envelope)
            fed.add(envelope)
            body = json.loads(base64.b64decode(json.loads(envelope)["body"]))
            h.submit(body[0][0])
        client.close()
        time.sleep(0.2)


def test_a_half_open_redis_connection_is_noticed_and_replaced_on_the_loop(
    settings: Settings,
    simulator: Simulator,
    harness: Callable[..., Harness],
    proxy: FaultProxy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Redis (or a NAT between) gone silent without closing: the loop's claims and
    success writes time out, the connection is dropped and the batch sent again on a
    new one, on the loop; every lead added once."""
    monkeypatch.setattr(engine_module, "REPLICA_CHECK_S", 0.2)
    h = harness(settings.replace(redis_url=proxy.url, redis_timeout_s=1.0))
    h.submit(enqueue_message(settings, "7275550100"))  # warm: the loop's connections made
    h.wait(1)
    handoffs = h.engine.handoffs
    assert proxy.blackhole() >= 1
    silent_at = time.monotonic()
    messages = [enqueue_message(settings, f"72755{i:05d}") for i in range(1, 6)]
    for message in messages:
        h.submit(message)
    h.wait(6, timeout=30)
    assert h.kinds() == ["ack"] * 6
    assert all(job_state(settings, m) == "added" for m in messages)
    assert all(simulator.count_by_phone()[f"72755{i:05d}"] == 1 for i in range(1, 6))
    assert h.engine.handoffs == handoffs  # recovered on the loop, no job left it
    # The loop's replica check, too, gets its answer again.
    wait_for(lambda: h.engine.replicas_checked_at > silent_at + 0.5, message="replica check")


def test_a_dropped_redis_connection_is_replaced_on_the_loop(
    settings: Settings,
    simulator: Simulator,
    harness: Callable[..., Harness],
    proxy: FaultProxy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(engine_module, "REPLICA_CHECK_S", 0.2)
    h = harness(settings.replace(redis_url=proxy.url))
    h.submit(enqueue_message(settings, "7275550100"))
    h.wait(1)
    handoffs = h.engine.handoffs
    proxy.cut()  # Redis restarted, a proxy or a firewall reset the connection
    cut_at = time.monotonic()
    messages = [enqueue_message(settings, f"72755{i:05d}") for i in range(1, 6)]
    for message in messages:
        h.submit(message)
    h.wait(6, timeout=30)
    assert h.kinds() == ["ack"] * 6
    assert all(job_state(settings, m) == "added" for m in messages)
    assert all(simulator.count_by_phone()[f"72755{i:05d}"] == 1 for i in range(1, 6))
    assert h.engine.handoffs == handoffs
    wait_for(lambda: h.engine.replicas_checked_at > cut_at, message="replica check")


def test_a_stalled_redis_moves_the_jobs_to_threads_which_finish_them_once(
    settings: Settings,
    simulator: Simulator,
    harness: Callable[..., Harness],
    proxy: FaultProxy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Replies held back longer than the loop's tries: the jobs go on on threads with
    the same token (their claims ran: recognised as their own), once Redis answers."""
    h = harness(settings.replace(redis_url=proxy.url, redis_timeout_s=0.5))
    h.submit(enqueue_message(settings, "7275550100"))
    h.wait(1)
    messages = [enqueue_message(settings, f"72755{i:05d}") for i in range(1, 4)]
    proxy.stall(4.0)
    for message in messages:
        h.submit(message)
    h.wait(4, timeout=40)
    assert h.kinds() == ["ack"] * 4
    assert all(job_state(settings, m) == "added" for m in messages)
    assert all(simulator.count_by_phone()[f"72755{i:05d}"] == 1 for i in range(1, 4))
    assert h.engine.handoffs >= 1


@pytest.fixture
def vicidial_proxy(simulator: Simulator) -> Iterator[FaultProxy]:
    proxy = FaultProxy("127.0.0.1", simulator.port).start()
    yield proxy
    proxy.close()


@pytest.mark.parametrize("fault", ["half_open", "dropped"])
def test_a_vicidial_connection_lost_mid_call_ends_once_added(
    fault: str,
    settings: Settings,
    simulator: Simulator,
    harness: Callable[..., Harness],
    vicidial_proxy: FaultProxy,
) -> None:
    """The call in flight when VICIdial's connection goes silent (half-open) or drops:
    ambiguous within the call's deadline, looked up (reconciliation) and found: added
    once. The calls after it go on new connections."""
    url = f"http://127.0.0.1:{vicidial_proxy.port}/agc/api.php"
    s = settings.replace(vicidial_url=url, vicidial_nonagent_url=None)
    h = harness(s)
    h.submit(enqueue_message(s, "7275550100"))  # warm: a kept-alive connection
    h.wait(1)
    simulator.set_latency(400)
    lost = enqueue_message(s, "7275551212")
    started = time.monotonic()
    h.submit(lost)
    wait_for(lambda: simulator.call_count >= 2, message="the call reached VICIdial")
    if fault == "half_open":
        vicidial_proxy.blackhole()
    else:
        vicidial_proxy.cut()
    h.wait(2, timeout=20)
    assert time.monotonic() - started < s.http_timeout_s + 5
    assert job_state(s, lost) in ("retrying", "added")  # reconcile step scheduled
    simulator.set_latency(0)
    later = [enqueue_message(s, f"72755{i:05d}") for i in range(1, 4)]
    for message in later:
        h.submit(message)
    _feed_until_added(h, s, [lost, *later])
    counts = simulator.count_by_phone()
    assert counts["7275551212"] == 1
    assert all(counts[f"72755{i:05d}"] == 1 for i in range(1, 4))


def test_the_engine_speaks_tls_to_redis_on_its_loop(
    settings: Settings,
    simulator: Simulator,
    harness: Callable[..., Harness],
    redis_url: str,
    tmp_path: Path,
) -> None:
    """rediss:// on the loop's own redis.asyncio connections (no thread in between),
    the certificate verified."""
    tls = TlsProxy("127.0.0.1", int(redis_url.rsplit(":", 1)[1].split("/")[0]), tmp_path)
    if tls.start() is None:
        pytest.skip("no openssl command to make a certificate")
    try:
        s = settings.replace(redis_url=tls.url)
        h = harness(s)
        h.submit(enqueue_message(s, "7275550100"))
        h.wait(1)
        handoffs = h.engine.handoffs
        messages = [enqueue_message(s, f"72755{i:05d}") for i in range(1, 4)]
        for message in messages:
            h.submit(message)
        h.wait(4)
        assert h.kinds() == ["ack"] * 4
        assert all(job_state(s, m) == "added" for m in messages)
        assert h.engine.handoffs == handoffs
        assert engine_connections(redis_url)  # the loop's own, through TLS
    finally:
        tls.close()
