"""Record what a release leaves in Redis, as the fixture the next release must serve.

From the repository's root, with this checkout's venv (git history needed)::

    .venv/bin/python -m tests.upgrade.record_fixture --commit 1c0038d \\
        --out tests/upgrade/fixtures/1c0038d.json

It installs the release at ``--commit`` into a venv of its own
(:mod:`tests.upgrade.release`), starts a private ``redis-server`` and the VICIdial
simulator, and lets **that release's own code** (its producer API, its CLI, its
``dispatcher serve``, its Celery workers) write a realistic state through every
path an operator meets, with two dialers (``east``, ``west``) from a dialers file:

1. a worker with ``DISPATCHER_AMBIGUOUS=dead_letter``: leads added (realtime and
   bulk, some with idempotency keys); dead letters ``dnc``, ``campaign_dnc``,
   ``manual_list_undefined`` (two), ``agent_not_logged_in``, ``http_error``,
   ``ambiguous`` (two: one whose lead VICIdial inserted before its proxy's 504, one
   it never got), ``auth`` (dialer west's password is wrong: west is paused), and
   ``invalid_payload`` (a message no producer of ours writes);
2. a worker with reconciliation on: retries waiting (HTTP 503s), an agent not
   logged in yet, a look-up waiting (an answer lost after the insert), a west job
   held by west's pause, and two calls in flight when the worker is SIGKILLed (one
   request stuck in VICIdial that inserts after the kill, one that never does);
3. no worker: a dead letter replayed (queued again), leads queued in all four lanes
   (by the Python API, ``dispatcher enqueue`` and ``--file``, and the HTTP intake),
   console users added (``dispatcher users add``) and logged in over HTTP (a
   session) or failing to (the login throttle).

Then every key of that Redis is written out (:func:`tests.upgrade.fixture.dump_redis`)
with its TTL, each key's group, and what a test needs to know: the simulator's
state and the leads it holds at that moment (which jobs VICIdial already has),
every job with what it is and what the next release must do with it, the console
users' passwords and session cookie, the intake token. About 30 s.

For the next round: record this release's fixture the same way (``--commit`` of
the release the round starts from). The scenario uses only what every release
has (the producer API, the CLI, the intake, ``celery -A workers worker``, the
settings by their variables); if the release's interface changed, change this
script, not the fixture by hand.
"""

from __future__ import annotations

import argparse
import json
import platform
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import redis

from dispatcher.devtools.redis_server import RedisServer, free_port
from dispatcher.simulator import Simulator, SimulatorState
from dispatcher.simulator.state import UserConfig
from tests.upgrade.fixture import FORMAT, dump_redis, stored_leads
from tests.upgrade.release import Release, install_release

__all__ = ["DIALERS_TOML", "PASSWORDS", "record", "scenario_state"]

PREFIX = QUEUE = "dispatcher"
#: The dialers file, with ``{url}`` the simulator's agc/api.php (both dialers use it,
#: with different API users: west's password is wrong while the fixture is recorded).
DIALERS_TOML = """default = "east"

[dialers.east]
url = "{url}"
user = "6666"
pass_env = "EAST_VICIDIAL_PASS"
rate_limit = 500

[dialers.west]
url = "{url}"
user = "7777"
pass_env = "WEST_VICIDIAL_PASS"
"""
#: The simulator's API users' passwords (and west's wrong one, while recording).
PASSWORDS = {"6666": "1234", "7777": "west-pass"}
WRONG_WEST_PASS = "not-the-west-password"
#: An agent that is not logged in while the fixture is recorded.
LATE_AGENT = "1099"
#: Console users (the fixture's meta holds these passwords).
CONSOLE = {
    "alice": ("operator", "alice-password-1"),
    "bob": ("viewer", "bob-password-22"),
}


def scenario_state() -> SimulatorState:
    """The simulator's configuration while recording: the demo state, plus west's API user."""
    state = SimulatorState.demo()
    state.users["7777"] = UserConfig(password=PASSWORDS["7777"], view_reports=True)
    return state


def _phone(n: int) -> str:
    return f"727556{n:04d}"


class Recorder:
    def __init__(self, release: Release, work: Path, log: Callable[[str], None]) -> None:
        self.release = release
        self.work = work
        self.log = log
        self.redis = RedisServer(work / "redis")
        self.sim = Simulator(scenario_state(), seed=7, stall_s=120.0)
        self.jobs: list[dict[str, Any]] = []
        self.workers: list[Any] = []
        self.meta: dict[str, Any] = {}

    # -- settings ---------------------------------------------------------------------

    def env(self, **overrides: str) -> dict[str, str]:
        """The release's environment: the base settings, and a phase's own."""
        base = {
            "DISPATCHER_REDIS_URL": self.redis.url,
            "DISPATCHER_DIALERS_FILE": str(self.work / "dialers.toml"),
            "EAST_VICIDIAL_PASS": PASSWORDS["6666"],
            "WEST_VICIDIAL_PASS": WRONG_WEST_PASS,
            "DISPATCHER_LOG_FORMAT": "json",
            "DISPATCHER_SCHEDULER_INTERVAL_S": "0.1",
            "DISPATCHER_BREAKER_PAUSE_S": "1",
        }
        base.update({f"DISPATCHER_{k.upper()}": v for k, v in overrides.items()})
        return base

    # -- what the release does ----------------------------------------------------------

    def enqueue(self, calls: list[dict[str, Any]], settings: dict[str, str]) -> list[list[str]]:
        """The release's producer API: per call, enqueue_lead(**kwargs) or enqueue_leads(leads)."""
        code = (
            "from dispatcher import enqueue_lead, enqueue_leads\n"
            "out = []\n"
            "for call in data:\n"
            "    if 'leads' in call:\n"
            "        out.append(enqueue_leads(call['leads'], priority=call['priority']))\n"
            "    else:\n"
            "        out.append([enqueue_lead(**call['lead'])])\n"
            "print(json.dumps(out))\n"
        )
        result: list[list[str]] = self.release.python_json(code, settings=settings, data=calls)
        return result

    def note(self, job_id: str, kind: str, expect: str, lead: dict[str, Any], **more: Any) -> None:
        entry = {
            "job_id": job_id,
            "kind": kind,
            "expect": expect,
            "dialer": lead.get("dialer", "east"),
            "lane": lead.get("priority", more.pop("lane", "realtime")),
            "phone": lead["phone_number"],
            "agent_user": lead["agent_user"],
            "idempotency_key": lead.get("idempotency_key"),
            "lead": lead,
        }
        entry.update(more)
        self.jobs.append(entry)

    def enqueue_noted(
        self, items: list[tuple[str, str, dict[str, Any]]], settings: dict[str, str], **more: Any
    ) -> list[str]:
        """(kind, expect, lead) each enqueued alone (realtime unless the lead says bulk)."""
        calls: list[dict[str, Any]] = []
        for _, _, lead in items:
            if lead.get("priority") == "bulk":
                calls.append({"leads": [lead], "priority": "bulk"})
            else:
                calls.append({"lead": lead})
        ids = [group[0] for group in self.enqueue(calls, settings)]
        for (kind, expect, lead), job_id in zip(items, ids, strict=True):
            self.note(job_id, kind, expect, lead, **more)
        return ids

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis.url, decode_responses=True)

    def state(self, job_id: str) -> str | None:
        value: str | None = self.client().hget(f"{PREFIX}:job:{job_id}", "state")
        return value

    def wait(self, what: str, predicate: Callable[[], bool], timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.1)
        tails = "\n".join(w.tail() for w in self.workers)
        raise RuntimeError(f"timed out waiting for {what}\n{tails}")

    def start_worker(self, name: str, settings: dict[str, str]) -> Any:
        worker = self.release.worker(settings, self.work / f"{name}.log", name=name, concurrency=8)
        self.workers.append(worker)
        return worker.start()

    # -- the scenario -----------------------------------------------------------------------

    def phase_1(self) -> None:
        """Final outcomes: added, and dead letters of every kind a worker writes."""
        self.log("phase 1: added leads and dead letters")
        settings = self.env(
            ambiguous="dead_letter",
            agent_wait_s="1",
            max_attempts="3",
            retry_base_s="0.05",
            retry_cap_s="0.2",
            http_timeout_s="2",
            visibility_timeout_s="10",
            pause_s="30",
        )
        sim = self.sim
        sim.script_phone(_phone(20), ["http_504_after"])
        sim.script_phone(_phone(21), ["http_504"])
        sim.script_phone(_phone(22), ["http_503"] * 5)
        worker = self.start_worker("phase1", settings)
        a = "1000"
        items: list[tuple[str, str, dict[str, Any]]] = [
            (
                "added",
                "added_before",
                {
                    "agent_user": a,
                    "phone_number": _phone(1),
                    "first_name": "Ada",
                    "idempotency_key": "rec-added-1",
                },
            ),
            (
                "added",
                "added_before",
                {"agent_user": a, "phone_number": _phone(2), "last_name": "Lovelace"},
            ),
            (
                "added",
                "added_before",
                {
                    "agent_user": a,
                    "phone_number": _phone(3),
                    "priority": "bulk",
                    "idempotency_key": "rec-added-3",
                },
            ),
            (
                "added",
                "added_before",
                {
                    "agent_user": a,
                    "phone_number": _phone(4),
                    "priority": "bulk",
                    "comments": "bulk import",
                },
            ),
            ("dnc", "letter:dnc:stays", {"agent_user": a, "phone_number": "7275550000"}),
            (
                "campaign_dnc",
                "letter:campaign_dnc:stays",
                {"agent_user": a, "phone_number": "7275550001"},
            ),
            (
                "manual_list_undefined",
                "letter:manual_list_undefined:replayed_at_recording",
                {"agent_user": "1003", "phone_number": _phone(10)},
            ),
            (
                "manual_list_undefined",
                "letter:manual_list_undefined:replay",
                {"agent_user": "1003", "phone_number": _phone(11), "first_name": "Ghost"},
            ),
            (
                "agent_not_logged_in",
                "letter:agent_not_logged_in:replay",
                {"agent_user": LATE_AGENT, "phone_number": _phone(12)},
            ),
            (
                "ambiguous_inserted",
                "letter:ambiguous:reconcile_found",
                {"agent_user": a, "phone_number": _phone(20)},
            ),
            (
                "ambiguous_absent",
                "letter:ambiguous:reconcile_absent",
                {"agent_user": a, "phone_number": _phone(21)},
            ),
            (
                "http_error",
                "letter:http_error:replay",
                {"agent_user": a, "phone_number": _phone(22)},
            ),
            (
                "auth",
                "letter:auth:replay",
                {"agent_user": a, "phone_number": _phone(23), "dialer": "west"},
            ),
        ]
        ids = self.enqueue_noted(items, settings)
        # A message that is not a job (a foreign producer's): the release dead-letters it.
        self.client().lpush(f"{QUEUE}.east.realtime", '{"not": "a celery message"}')
        self.wait(
            "phase 1's outcomes",
            lambda: (
                all(self.state(j) in ("added", "dead") for j in ids)
                and int(self.client().zcard(f"{PREFIX}:dlq:reason:invalid_payload")) == 1
            ),
        )
        poison = self.client().zrange(f"{PREFIX}:dlq:reason:invalid_payload", 0, -1)[0]
        self.jobs.append(
            {
                "job_id": poison,
                "kind": "invalid_payload",
                "expect": "letter:invalid_payload:stays",
                "dialer": "east",
                "lane": "realtime",
                "phone": None,
                "agent_user": None,
                "idempotency_key": None,
                "lead": None,
            }
        )
        for job in self.jobs:
            if job["expect"] == "added_before":
                assert self.state(job["job_id"]) == "added", job
            elif job["expect"].startswith("letter:") and job["kind"] != "invalid_payload":
                reason = job["expect"].split(":")[1]
                got = self.client().hget(f"{PREFIX}:job:{job['job_id']}", "reason")
                assert (self.state(job["job_id"]), got) == ("dead", reason), (job, got)
        code = worker.stop()
        assert code == 0, worker.tail()

    def phase_2(self) -> None:
        """Work under way: retries, a look-up, a held dialer, calls in flight (SIGKILL)."""
        self.log("phase 2: retries, a look-up, a paused dialer, calls in flight")
        settings = self.env(
            ambiguous="reconcile",
            reconcile_after_s="60",
            agent_wait_s="3600",
            max_attempts="8",
            retry_base_s="15",
            retry_cap_s="30",
            http_timeout_s="10",
            visibility_timeout_s="30",
            pause_s="30",
        )
        sim = self.sim
        for n in (30, 31, 32):
            sim.script_phone(_phone(n), ["http_503"] * 30)
        sim.script_phone(_phone(34), ["http_504_after"])
        sim.script_phone(_phone(40), ["hold_insert"])
        sim.script_phone(_phone(41), ["stall"])
        worker = self.start_worker("phase2", settings)
        a = "1000"
        waiting = self.enqueue_noted(
            [
                (
                    "retrying",
                    "added",
                    {
                        "agent_user": a,
                        "phone_number": _phone(30),
                        "idempotency_key": "rec-retry-30",
                    },
                ),
                ("retrying", "added", {"agent_user": a, "phone_number": _phone(31)}),
                (
                    "retrying",
                    "added",
                    {"agent_user": a, "phone_number": _phone(32), "priority": "bulk"},
                ),
                ("retrying_agent", "added", {"agent_user": LATE_AGENT, "phone_number": _phone(33)}),
                ("lookup_waiting", "added", {"agent_user": a, "phone_number": _phone(34)}),
            ],
            settings,
        )
        # West is paused (its password): its lanes are not even taken from meanwhile.
        self.enqueue_noted(
            [
                (
                    "held_by_pause",
                    "added",
                    {"agent_user": a, "phone_number": _phone(35), "dialer": "west"},
                )
            ],
            settings,
        )
        client = self.client()

        def scheduled(job_id: str) -> bool:
            return client.hget(f"{PREFIX}:exec:{job_id}", "state") == "scheduled"

        self.wait("the retries and the look-up scheduled", lambda: all(map(scheduled, waiting)))
        inflight = self.enqueue_noted(
            [
                (
                    "in_flight_inserted_late",
                    "added",
                    {"agent_user": a, "phone_number": _phone(40), "first_name": "Late"},
                ),
                (
                    "in_flight_never_inserted",
                    "added",
                    {"agent_user": a, "phone_number": _phone(41)},
                ),
            ],
            settings,
        )

        def calling() -> bool:
            attempts = {e.get("job_id") for e in worker.logs() if e.get("event") == "lead.attempt"}
            return all(j in attempts for j in inflight)

        self.wait("both calls in flight", calling)
        time.sleep(1.0)  # the requests reach the simulator and stay there
        worker.kill()
        for job_id in inflight:
            assert client.hget(f"{PREFIX}:exec:{job_id}", "state") == "claimed", job_id
        # The stuck request goes on inside "VICIdial" after the worker died, and inserts.
        assert sim.release_held() == 1
        self.wait("the late insert", lambda: _phone(40) in sim.count_by_phone(), timeout=10)

    def phase_3(self) -> None:
        """No worker: a replay, queued leads in every lane, console users and sessions."""
        self.log("phase 3: queued leads in every lane, a replay, console users and sessions")
        settings = self.env()
        release = self.release
        [replayed] = [j for j in self.jobs if j["expect"].endswith(":replayed_at_recording")]
        release.cli("dlq", "replay", replayed["job_id"], "--yes", settings=settings)
        replayed["expect"] = "added"
        replayed["note"] = "a manual_list_undefined letter replayed by the release: queued again"
        a = "1000"
        self.enqueue_noted(
            [
                (
                    "queued",
                    "added",
                    {
                        "agent_user": a,
                        "phone_number": _phone(50),
                        "idempotency_key": "rec-queued-50",
                        "first_name": "Queued",
                    },
                ),
                (
                    "queued",
                    "added",
                    {
                        "agent_user": a,
                        "phone_number": _phone(51),
                        "dnc_check": False,
                        "campaign_dnc_check": False,
                    },
                ),
                (
                    "queued",
                    "added",
                    {
                        "agent_user": a,
                        "phone_number": _phone(52),
                        "priority": "bulk",
                        "idempotency_key": "rec-queued-52",
                    },
                ),
                (
                    "queued",
                    "added",
                    {"agent_user": a, "phone_number": _phone(53), "priority": "bulk"},
                ),
                (
                    "queued",
                    "added",
                    {"agent_user": a, "phone_number": _phone(54), "dialer": "west"},
                ),
                (
                    "queued",
                    "added",
                    {
                        "agent_user": LATE_AGENT,
                        "phone_number": _phone(55),
                        "dialer": "west",
                        "city": "Tampa",
                    },
                ),
            ],
            settings,
        )
        # The CLI: one lead, and a file for west's bulk lane.
        lead = {"agent_user": a, "phone_number": _phone(60), "idempotency_key": "rec-cli-60"}
        done = release.cli(
            "enqueue",
            "--agent-user",
            a,
            "--phone",
            _phone(60),
            "--idempotency-key",
            "rec-cli-60",
            "--dialer",
            "east",
            "--priority",
            "realtime",
            settings=settings,
        )
        self.note(done.stdout.strip(), "queued_cli", "added", {**lead, "dialer": "east"})
        rows = [{"agent_user": a, "phone_number": _phone(n), "ext_id": f"X{n}"} for n in (61, 62)]
        path = self.work / "leads.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        done = release.cli(
            "enqueue",
            "--file",
            str(path),
            "--dialer",
            "west",
            "--priority",
            "bulk",
            "--idempotency-column",
            "ext_id",
            "--print-ids",
            settings=settings,
        )
        for row, job_id in zip(rows, done.stdout.split(), strict=True):
            lead = {
                "agent_user": a,
                "phone_number": row["phone_number"],
                "dialer": "west",
                "priority": "bulk",
                "idempotency_key": row["ext_id"],
            }
            self.note(job_id, "queued_file", "added", lead)
        # Console users, by the CLI.
        for name, (role, password) in CONSOLE.items():
            release.cli(
                "users",
                "add",
                name,
                "--role",
                role,
                "--password-stdin",
                settings=settings,
                input=password + "\n",
            )
        self.serve(settings)
        # The reconciliation look-up's check of each dialer (what `status` shows): east's
        # permitted, west's login refused (its password).
        self.log("the look-ups' check (dispatcher health --recheck)")
        release.cli("health", "--recheck", settings=settings)
        self.log("status, then the dump")
        status = release.cli("status", "--json", settings=settings)
        self.meta["release_status"] = json.loads(status.stdout)
        letters = release.cli("dlq", "list", "--json", settings=settings)
        self.meta["release_dead_letters"] = json.loads(letters.stdout)

    def serve(self, settings: dict[str, str]) -> None:
        """The release's `dispatcher serve`: a lead over HTTP, a login, a failed login."""
        token = secrets.token_hex(16)
        port = free_port()
        env = {**settings, "DISPATCHER_INTAKE_TOKENS": token}
        log = (self.work / "serve.log").open("wb")
        proc = subprocess.Popen(
            [str(self.release.python), "-m", "dispatcher.cli", "serve", "--port", str(port)],
            cwd=self.release.tree,
            env=self.release.env(env),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            self.wait("the intake", lambda: _answers(base + "/healthz"), timeout=30)
            lead = {"agent_user": "1000", "phone_number": _phone(70), "last_name": "Http"}
            reply = httpx.post(
                base + "/v1/leads",
                json=lead,
                headers={"Authorization": f"Bearer {token}", "Idempotency-Key": "rec-intake-70"},
            )
            assert reply.status_code == 202, reply.text
            self.note(
                reply.json()["job_id"],
                "queued_intake",
                "added",
                {**lead, "idempotency_key": "rec-intake-70"},
            )
            sessions = {}
            for name, password in (("alice", CONSOLE["alice"][1]), ("bob", "a-wrong-password")):
                with httpx.Client(base_url=base) as browser:
                    page = browser.get("/ui/login")
                    csrf = page.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
                    answer = browser.post(
                        "/ui/login",
                        data={"username": name, "password": password, "csrf": csrf, "next": ""},
                    )
                    if name == "alice":
                        assert answer.status_code == 303, answer.text
                        sessions[name] = browser.cookies["dispatcher_console"]
                    else:
                        assert answer.status_code == 401, answer.text
            self.meta["console"] = {
                "users": {n: {"role": r, "password": p} for n, (r, p) in CONSOLE.items()},
                "session_cookie": "dispatcher_console",
                "sessions": sessions,
                "failed_logins": {"bob": 1},
            }
            self.meta["intake_token"] = token
        finally:
            proc.terminate()
            proc.wait(15)
            log.close()

    # -- the whole --------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        (self.work / "redis").mkdir()
        self.redis.start()
        self.sim.start()
        try:
            (self.work / "dialers.toml").write_text(DIALERS_TOML.format(url=self.sim.url))
            self.phase_1()
            self.phase_2()
            self.phase_3()
            return self.dump()
        finally:
            for worker in self.workers:
                worker.kill()
            self.sim.stop()
            self.redis.close()

    def dump(self) -> dict[str, Any]:
        client = redis.Redis.from_url(self.redis.url)
        seconds, micros = client.time()
        recorded_at = seconds + micros / 1e6
        keys = dump_redis(client, prefix=PREFIX, queue=QUEUE)
        for job in self.jobs:
            # Where each job stood: its state, and its execution record's.
            job["state_at_recording"] = client.hget(f"{PREFIX}:job:{job['job_id']}", "state")
            job["exec_at_recording"] = client.hget(f"{PREFIX}:exec:{job['job_id']}", "state")
            for name in ("state_at_recording", "exec_at_recording"):
                if isinstance(job[name], bytes):
                    job[name] = job[name].decode()
        groups: dict[str, int] = {}
        for entry in keys.values():
            groups[entry["group"]] = groups.get(entry["group"], 0) + 1
        info = client.info("server")
        meta = {
            "commit": self.release.commit,
            "recorded_at": recorded_at,
            "recorded_at_iso": datetime.fromtimestamp(recorded_at, UTC).isoformat(),
            "recorder": "tests/upgrade/record_fixture.py",
            "redis_version": info.get("redis_version"),
            "python": platform.python_version(),
            "install_mode": self.release.mode,
            "prefix": PREFIX,
            "queue": QUEUE,
            "dialers_toml": DIALERS_TOML,
            "passwords": {
                "EAST_VICIDIAL_PASS": PASSWORDS["6666"],
                "WEST_VICIDIAL_PASS": PASSWORDS["7777"],
                "west_while_recording": WRONG_WEST_PASS,
            },
            "groups": dict(sorted(groups.items())),
            "jobs": self.jobs,
            "simulator": {
                "state": scenario_state().to_dict(),
                "api_passwords": PASSWORDS,
                "leads": stored_leads(self.sim),
                "late_agent": LATE_AGENT,
            },
            **self.meta,
        }
        meta["expect"] = {
            "added_before": "done when recorded: VICIdial holds the lead; never called again",
            "added": "queued, retrying, waiting for a look-up, held by a pause, in flight or "
            "replayed when recorded: the next release adds it exactly once (in flight: "
            "reconciliation finds the lead the stuck request inserted, or calls again)",
            "letter:REASON:stays": "a dead letter the operator leaves (DNC, not a job)",
            "letter:REASON:replay": "a dead letter replayed once its cause is fixed",
            "letter:ambiguous:reconcile_found": "`dlq reconcile` finds the lead: added, no call",
            "letter:ambiguous:reconcile_absent": "`dlq reconcile` finds nothing: called once",
        }
        return {"format": FORMAT, "meta": meta, "keys": keys}


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def record(
    commit: str, *, mode: str = "auto", log: Callable[[str], None] = print
) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="dispatcher-record-"))
    started = time.monotonic()
    release = install_release(commit, work / "release", mode=mode)
    log(f"release {release.commit[:7]} installed ({release.mode}) in {release.install_s:.1f} s")

    def stamped(message: str) -> None:
        log(f"{time.monotonic() - started:5.1f} s  {message}")

    try:
        fixture = Recorder(release, work, stamped).run()
    except BaseException:
        log(f"failed: the logs are in {work}")
        raise
    shutil.rmtree(work, ignore_errors=True)
    log(f"recorded in {time.monotonic() - started:.1f} s")
    return fixture


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--commit", required=True, help="the release to record (a git commit)")
    parser.add_argument("--out", required=True, type=Path, help="the fixture file to write")
    parser.add_argument(
        "--mode",
        choices=("auto", "shared", "full"),
        default="auto",
        help="how to install the release (tests/upgrade/release.py)",
    )
    args = parser.parse_args(argv)
    fixture = record(args.commit, mode=args.mode, log=lambda m: print(m, file=sys.stderr))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(fixture, indent=1, ensure_ascii=False) + "\n")
    meta = fixture["meta"]
    print(
        f"{args.out}: {len(fixture['keys'])} keys, {len(meta['jobs'])} jobs, "
        f"{args.out.stat().st_size} bytes",
        file=sys.stderr,
    )
    for group, count in meta["groups"].items():
        print(f"  {count:4d}  {group}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
