"""The compare-and-set answers of execution.lua's commands, command by command (real Redis).

``retry`` and ``await_lookup`` share one compare-and-set (the claim's holder ends it and
the next publication waits in ``scheduled``); ``claim`` and ``gate`` share one rate-limit
slot. Each pair must answer alike in every case: these tests pin those answers.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import redis

from dispatcher.store.execution import Execution, new_token
from dispatcher.store.keys import Keys

KEYS = Keys(prefix="cas", queue="casq")


@pytest.fixture
def r(redis_url: str) -> redis.Redis:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    for key in client.scan_iter(match="cas*"):
        client.delete(key)
    return client


@pytest.fixture
def execution(r: redis.Redis) -> Execution:
    return Execution(r, prefix=KEYS.prefix, queue=KEYS.queue)


def _claim(execution: Execution, job_id: str, token: str, *, interval: float = 0.0) -> str:
    return execution.claim(
        job_id,
        seq=1,
        token=token,
        lease_s=30,
        ttl=600,
        rate_interval_s=interval,
        worker="w",
        max_rate_wait_s=1.0,
        server="s1",
    ).verdict


def _retry(execution: Execution, job_id: str, token: str) -> list[str]:
    return execution.retry(
        job_id,
        token=token,
        seq=1,
        envelope=f"env-{job_id}",
        delay_s=5.0,
        ttl=600,
        attempts=1,
        reason="network",
        error="refused",
        http_status=None,
        server="s1",
    )


def _await_lookup(execution: Execution, job_id: str, token: str) -> list[str]:
    return execution.await_lookup(
        job_id,
        token=token,
        seq=1,
        envelope=f"env-{job_id}",
        delay_s=5.0,
        ttl=600,
        attempts=1,
        error="read timeout",
        http_status=None,
        server="s1",
    )


Reschedule = Callable[[Execution, str, str], list[str]]


@pytest.mark.parametrize("reschedule", [_retry, _await_lookup], ids=["retry", "await_lookup"])
def test_retry_and_await_lookup_answer_alike(
    execution: Execution, r: redis.Redis, reschedule: Reschedule
) -> None:
    holder, other = new_token(), new_token()
    assert _claim(execution, "a", holder) == "ok"
    before = time.time()
    answer = reschedule(execution, "a", other)
    assert answer == ["superseded"]  # another delivery's token: nothing changes
    assert r.hget(KEYS.execution("a"), "state") == "claimed"
    answer = reschedule(execution, "a", holder)
    assert answer[0] == "ok" and before + 4 < float(answer[1]) < time.time() + 6
    assert r.hmget(KEYS.execution("a"), "state", "seq") == ["scheduled", "2"]
    assert r.hget(KEYS.execution("a"), "lease_until") is None
    assert r.zscore(KEYS.scheduled, "env-a") == pytest.approx(float(answer[1]), abs=1e-5)
    assert 0 < r.ttl(KEYS.execution("a")) <= 600
    assert r.hget(KEYS.job("a"), "state") == "retrying"
    # The same call again (its reply was lost): recognised, nothing written twice.
    assert reschedule(execution, "a", holder) == ["again"]
    assert r.zcard(KEYS.scheduled) == 1
    # A copy whose claim lapsed and was scheduled by nobody: superseded, not again.
    assert _claim(execution, "b", holder) == "ok"
    r.hset(KEYS.execution("b"), "state", "queued")
    assert reschedule(execution, "b", holder) == ["superseded"]
    # Added meanwhile: done, whoever asks.
    assert _claim(execution, "c", holder) == "ok"
    execution.succeed(
        "c",
        token=holder,
        lead_id="7",
        list_id="101",
        campaign="C",
        done_ttl=600,
        ttl=600,
        attempts=1,
        latency_field="latency_le_100",
        latency_ms=5.0,
        server="s1",
    )
    assert reschedule(execution, "c", holder) == ["done"]
    assert reschedule(execution, "c", other) == ["done"]


def test_claim_and_gate_share_the_rate_limit_slots(execution: Execution, r: redis.Redis) -> None:
    # Two slots a second: a claim takes the first at once, a gated request the next.
    assert _claim(execution, "a", new_token(), interval=0.5) == "ok"
    gated = execution.gate("s1", rate_interval_s=0.5, max_rate_wait_s=1.0)
    assert gated.verdict == "ok" and 0.4 < gated.delay_s <= 0.5
    claim = execution.claim(
        "b",
        seq=1,
        token=new_token(),
        lease_s=30,
        ttl=600,
        rate_interval_s=0.5,
        worker="w",
        max_rate_wait_s=1.0,
        server="s1",
    )
    assert claim.verdict == "ok" and 0.9 < claim.delay_s <= 1.0
    # The next slot is more than max_rate_wait_s away: throttled, nothing reserved.
    tat = r.get(KEYS.rate("s1"))
    gated = execution.gate("s1", rate_interval_s=0.5, max_rate_wait_s=1.0)
    assert gated.verdict == "throttled" and 1.4 < gated.delay_s <= 1.5
    assert _claim(execution, "c", new_token(), interval=0.5) == "throttled"
    assert r.get(KEYS.rate("s1")) == tat
    assert r.hget(KEYS.execution("c"), "state") is None
    # No rate limit: no slot taken, no delay.
    assert execution.gate("s2", rate_interval_s=0.0, max_rate_wait_s=0.0).delay_s == 0.0
    assert not r.exists(KEYS.rate("s2"))
