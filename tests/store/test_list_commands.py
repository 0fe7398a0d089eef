"""execution.lua and broker.lua for leads for a list, command by command (real Redis).

* the add_lead lock: a list job's claim takes ``P:addlock:{dialer}:{h}`` for the claim's
  lease; another job's claim for the same dialer and phone is ``locked`` until the
  outcome releases it (any outcome: success, retry, a look-up, a deferral, a dead
  letter, a duplicate) or the lease ends; a claim asked again with the same token keeps
  it; a lock is never released by a job that does not hold it;
* the ``duplicate`` outcome: a compare-and-set on the claim, final like ``done`` for
  every later command (claim, defer, retry, dead, await_dialer, replay), and a late
  SUCCESS still beats it (the lead exists);
* the pause of a dialer's list jobs alone: their claims wait (the one probe after the
  cool-down is ``probe_list``), an agent job's claim goes on, and the fetch skips the
  dialer's list lanes (not its agent lanes) while it runs.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import redis

from dispatcher.store.broker import Broker
from dispatcher.store.execution import Execution, new_token
from dispatcher.store.keys import Keys
from dispatcher.store.replies import Claim, Stored

KEYS = Keys(prefix="lc", queue="lcq")
H = "0123456789abcdef0123456789abcdef"


@pytest.fixture
def r(redis_url: str) -> redis.Redis:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    for key in client.scan_iter(match="lc*"):
        client.delete(key)
    return client


@pytest.fixture
def execution(r: redis.Redis) -> Execution:
    return Execution(r, prefix=KEYS.prefix, queue=KEYS.queue)


def claim(
    execution: Execution,
    job_id: str,
    token: str,
    *,
    lock: str = H,
    scope: str = "s1:list",
    lease_s: float = 30.0,
) -> Claim:
    return execution.claim(
        job_id,
        seq=0,
        token=token,
        lease_s=lease_s,
        ttl=600,
        rate_interval_s=0.0,
        worker="w",
        max_rate_wait_s=1.0,
        server="s1",
        scope=scope,
        lock=lock,
    )


def duplicate(execution: Execution, job_id: str, token: str, existing: str = "7") -> Stored:
    return Stored.from_reply(
        execution.call(
            *execution.duplicate_args(
                job_id,
                token=token,
                existing_lead_id=existing,
                list_id="101",
                check="DUPLIST",
                done_ttl=600,
                ttl=600,
                attempts=1,
                server="s1",
            )
        )
    )


def succeed(execution: Execution, job_id: str, token: str, lead_id: str = "9") -> Stored:
    return Stored.from_reply(
        execution.succeed(
            job_id,
            token=token,
            lead_id=lead_id,
            list_id="101",
            campaign="TESTCAMP",
            done_ttl=600,
            ttl=600,
            attempts=1,
            latency_field="latency_bucket:0.1",
            latency_ms=5.0,
            server="s1",
            state_fields='{"hopper":"added","unfinished":""}',
        )
    )


def outcomes(execution: Execution) -> dict[str, Any]:
    def retry(job_id: str, token: str) -> Any:
        return execution.retry(
            job_id,
            token=token,
            seq=0,
            envelope="env",
            delay_s=5.0,
            ttl=600,
            attempts=1,
            reason="network",
            error="x",
            http_status=None,
            server="s1",
        )

    def await_lookup(job_id: str, token: str) -> Any:
        return execution.await_lookup(
            job_id,
            token=token,
            seq=0,
            envelope="env",
            delay_s=5.0,
            ttl=600,
            attempts=1,
            error="read timeout",
            http_status=None,
            server="s1",
        )

    def defer(job_id: str, token: str) -> Any:
        return execution.defer(job_id, token=token, seq=0, envelope="env", delay_s=1.0, ttl=600)

    def dead(job_id: str, token: str) -> Any:
        return execution.dead(
            job_id,
            token=token,
            seq=0,
            record=json.dumps({"id": job_id, "job_id": job_id, "reason": "dnc"}),
            score=time.time(),
            reason="dnc",
            attempts=1,
            error="x",
            http_status=200,
            ttl=600,
            server="s1",
        )

    return {
        "succeed": lambda j, t: succeed(execution, j, t),
        "duplicate": lambda j, t: duplicate(execution, j, t),
        "retry": retry,
        "await_lookup": await_lookup,
        "defer": defer,
        "dead": dead,
    }


# ---------------------------------------------------------------------------------------------
# The add_lead lock
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "outcome", ["succeed", "duplicate", "retry", "await_lookup", "defer", "dead"]
)
def test_the_lock_holds_other_jobs_of_the_phone_until_the_outcome(
    execution: Execution, r: redis.Redis, outcome: str
) -> None:
    a, b = new_token(), new_token()
    assert claim(execution, "ja", a).verdict == "ok"
    lock = KEYS.add_lock("s1", H)
    assert r.get(lock) == "ja" and 29 < r.pttl(lock) / 1000 <= 30
    held = claim(execution, "jb", b)
    assert held.verdict == "locked" and 29 < held.delay_s <= 30
    assert r.hget(KEYS.execution("jb"), "state") is None  # nothing written for jb
    # Another phone, another dialer, a job without a lock: not held.
    assert claim(execution, "jc", new_token(), lock="f" * 32).verdict == "ok"
    assert claim(execution, "jd", new_token(), lock="").verdict == "ok"
    outcomes(execution)[outcome]("ja", a)
    assert r.exists(lock) == 0 and r.hget(KEYS.execution("ja"), "lock") is None
    assert claim(execution, "jb", b).verdict == "ok" and r.get(lock) == "jb"


def test_the_lock_is_the_claims_own_and_lapses_with_its_lease(
    execution: Execution, r: redis.Redis
) -> None:
    a = new_token()
    assert claim(execution, "ja", a, lease_s=0.3).verdict == "ok"
    lock = KEYS.add_lock("s1", H)
    # Asked again with the same token (a lost reply, or the fence's fresh lease): kept.
    again = claim(execution, "ja", a, lease_s=30)
    assert (again.verdict, again.own) == ("ok", True) and r.pttl(lock) > 29_000
    r.pexpire(lock, 200)
    time.sleep(0.3)  # the holder died: its lock lapses with its lease
    b = new_token()
    assert claim(execution, "jb", b).verdict == "ok" and r.get(lock) == "jb"
    # The first job's claim asked again now finds the phone held: it waits, and its
    # outcome (a deferral) releases nothing of jb's.
    assert claim(execution, "ja", a).verdict == "locked"
    outcomes(execution)["defer"]("ja", a)
    assert r.get(lock) == "jb"


# ---------------------------------------------------------------------------------------------
# The duplicate outcome
# ---------------------------------------------------------------------------------------------


def test_a_duplicate_is_final_for_every_later_command(execution: Execution, r: redis.Redis) -> None:
    a = new_token()
    assert claim(execution, "ja", a).verdict == "ok"
    assert duplicate(execution, "ja", new_token()).verdict == "superseded"  # not the claim's
    assert duplicate(execution, "ja", a).verdict == "ok"
    assert duplicate(execution, "ja", a) == Stored("again", "7")  # the reply was lost
    state = r.hgetall(KEYS.job("ja"))
    assert (state["state"], state["existing_lead_id"], state["list_id"]) == (
        "duplicate",
        "7",
        "101",
    )
    assert state["duplicate_check"] == "DUPLIST" and r.hget(KEYS.stats, "duplicate") == "1"
    assert claim(execution, "ja", new_token()) == Claim("duplicate", lead_id="7")
    for name in ("retry", "await_lookup", "defer", "dead"):
        reply = outcomes(execution)[name]("ja", a)
        assert reply[0] == "done", name
    assert execution.await_dialer(
        "ja", seq=0, envelope="env", delay_s=1.0, wait_s=60.0, dialer="x", error="e", ttl=600
    )[0] == ("done")
    assert r.hget(KEYS.execution("ja"), "state") == "duplicate"
    # A SUCCESS that comes after all (the lead exists) beats it.
    assert succeed(execution, "ja", a).verdict == "ok"
    state = r.hgetall(KEYS.job("ja"))
    assert (state["state"], state["lead_id"], state["hopper"]) == ("added", "9", "added")
    assert "existing_lead_id" not in state and "unfinished" in state


def test_a_duplicate_retires_a_letter_and_a_replay_finds_the_job_final(
    execution: Execution, r: redis.Redis
) -> None:
    a = new_token()
    assert claim(execution, "ja", a).verdict == "ok"
    # A letter of the job another copy wrote (without a claim) stays until the outcome.
    r.set(KEYS.dead_letter("ja"), json.dumps({"id": "ja", "job_id": "ja", "reason": "network"}))
    r.zadd(KEYS.dead_letters, {"ja": 1.0})
    assert duplicate(execution, "ja", a).verdict == "ok"
    assert r.exists(KEYS.dead_letter("ja")) == 0 and r.zcard(KEYS.dead_letters) == 0
    reply = execution.call(
        *Execution.replay_args("ja", envelope="env", seq=1, ttl=600, lane="lcq.list.s1.realtime")
    )
    assert Execution.replay_answer(reply) == "missing"


# ---------------------------------------------------------------------------------------------
# The pause of a dialer's list jobs alone
# ---------------------------------------------------------------------------------------------


def test_list_jobs_obey_their_own_pause_and_probe_it(execution: Execution) -> None:
    execution.pause("s1:list", seconds=0.3, reason="permission", error="x")
    paused = claim(execution, "ja", new_token())
    assert (paused.verdict, paused.reason) == ("paused", "permission")
    agent = execution.claim(
        "jg",
        seq=0,
        token=new_token(),
        lease_s=30,
        ttl=600,
        rate_interval_s=0.0,
        worker="w",
        max_rate_wait_s=1.0,
        server="s1",
    )
    assert agent.verdict == "ok"  # the dialer's agent jobs go on
    time.sleep(0.35)
    assert claim(execution, "ja", new_token()).verdict == "probe_list"  # the one probe
    assert claim(execution, "jb", new_token(), lock="e" * 32).verdict == "paused"
    execution.resume("s1:list")
    assert claim(execution, "jb", new_token(), lock="e" * 32).verdict == "ok"


def test_the_fetch_skips_a_dialer_s_list_lanes_while_they_are_paused(
    execution: Execution, r: redis.Redis
) -> None:
    broker = Broker(r, prefix=KEYS.prefix)
    agent, listed = KEYS.lane("s1", "realtime"), KEYS.list_lane("s1", "realtime")

    def envelope(tag: str, lane: str) -> str:
        info = {"exchange": "", "routing_key": lane}
        props = {"delivery_tag": tag, "delivery_info": info}
        return json.dumps({"body": "e30=", "properties": props, "headers": {}})

    r.lpush(listed, envelope("t-list", listed))
    r.lpush(agent, envelope("t-agent", agent))

    def fetch() -> list[Any]:
        command = broker.fetch_command(
            "c1",
            ttl=30,
            queue=KEYS.queue,
            unacked="lc-unacked",
            unacked_index="lc-unacked_index",
            acks=[],
            lanes=[("s1", [agent, (listed, "s1:list")])],
            most=4,
            load=True,
        )
        return list(r.execute_command(*command))

    execution.pause("s1:list", seconds=5.0, reason="permission", error="x")
    taken = fetch()
    assert [json.loads(x)["properties"]["delivery_tag"] for x in taken[0::3]] == ["t-agent"]
    gated = fetch()
    assert gated[:2] == [None, "gated"] and 0 < float(gated[2]) <= 5.0
    assert r.llen(listed) == 1
    execution.resume("s1:list")
    [item, dialer, _recorded] = fetch()
    assert json.loads(item)["properties"]["delivery_tag"] == "t-list" and dialer == "s1"
