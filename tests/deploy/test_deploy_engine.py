"""docker-compose.yml on a real Docker engine: build, health, leads end to end, faults.

`bash ../shared/tools/docker-engine/start.sh` starts an engine on these machines
(no registry: it builds stand-ins of the base images). Without an engine this
module is skipped, with the reason; under ``CI=true`` that is a failure instead,
since CI must prove the deployment (.ci/run starts the engine first).

Everything runs on a copy of the deployment files in a temporary directory, with
``.env`` copied from ``.env.example`` as the README says, under a compose project
name and image tags of its own and with the host ports left for the engine to
pick: nothing is shared with a checkout, a person or another test run on the
machine, and the last step (``down -v``) must leave nothing behind.

Leads are counted on both sides of the dispatcher: job states in Redis (read
through the published port, as a producer on the host does) and SUCCESS answers
in the simulator's request log (``docker logs`` of the demo simulator, one line
per call), so a lead added twice shows even if the dispatcher believed otherwise.
The figures of each run are printed at the end of the module (docs/DEPLOYING.md
quotes them).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import re
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml

from dispatcher.config.settings import Settings
from dispatcher.model.errors import BrokerUnavailable
from dispatcher.ops.producer import enqueue_leads, job_status
from tests.support.settings import ROOT
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(600)]

#: What a copy of the repository needs for `docker compose build` and `up`.
_IGNORED = shutil.ignore_patterns(
    ".git",
    ".venv*",
    ".env",
    "__pycache__",
    "*.egg-info",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    ".hypothesis",
    "build",
    "dist",
    "results",
)

#: Settings of the fault runs, appended to .env: a killed worker's jobs come back
#: after the visibility timeout, so it is short here (default 600 s), and the
#: HTTP timeout with it (it must stay below (visibility - 5) / 2).
FAULT_ENV = {"DISPATCHER_HTTP_TIMEOUT_S": "3", "DISPATCHER_VISIBILITY_TIMEOUT_S": "12"}
#: Threads per worker in the fault runs (the compose knob): 2 workers x 4 threads
#: at the simulator's 100 ms is about 80 leads/s, so a run of FAULT_LEADS lasts
#: long enough for a fault to land in the middle of it.
FAULT_CONCURRENCY = "4"
FAULT_LEADS = 500

_SUCCESS = re.compile(
    r"external_add_lead agent=\S+ phone=(\d+) -> 200 SUCCESS: lead added - "
    r"\d+\|[^|]*\|[^|]*\|(\d+)\|"
)

FIGURES: dict[str, Any] = {}


# -- the engine ---------------------------------------------------------------------------


def _run(
    argv: list[str], *, timeout: float = 60, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, check=False, **kwargs
    )


def engine_problem() -> str | None:
    """Why docker compose cannot run here, or None."""
    if shutil.which("docker") is None:
        return "no docker client on PATH"
    try:
        info = _run(["docker", "info", "--format", "{{.ServerVersion}}"], timeout=20)
    except subprocess.TimeoutExpired:
        return "the Docker engine does not answer (docker info timed out)"
    if info.returncode != 0:
        return f"no Docker engine answers ({(info.stderr or info.stdout).strip()[:200]})"
    if _run(["docker", "compose", "version", "--short"]).returncode != 0:
        return "no Compose v2 plugin (docker compose)"
    images = ["python:3.11-slim", "redis:7.2-alpine"]
    if _run(["docker", "image", "inspect", *images]).returncode != 0:
        return f"base images missing ({', '.join(images)}) and no registry to pull them from"
    return None


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


@pytest.fixture(scope="module", autouse=True)
def engine() -> None:
    problem = engine_problem()
    if problem is None:
        return
    how = "start one with `bash ../shared/tools/docker-engine/start.sh` (docs/DEPLOYING.md)"
    if in_ci():
        pytest.fail(f"CI must run the deployment tests on a real engine: {problem}")
    pytest.skip(f"deployment tests need a Docker engine: {problem}; {how}")


# -- one compose project ------------------------------------------------------------------


@dataclasses.dataclass
class Project:
    """A compose project on a copy of the deployment files."""

    name: str
    workdir: Path
    env: dict[str, str]
    images: tuple[str, ...] = ()
    #: wait_healthy of the containers of the first `up`, running in the background
    health: Future[dict[str, dict[str, Any]]] | None = None

    def compose(
        self, *args: str, timeout: float = 180, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        result = _run(["docker", "compose", *args], timeout=timeout, cwd=self.workdir, env=self.env)
        if check:
            assert result.returncode == 0, (
                f"docker compose {' '.join(args)} -> {result.returncode}\n{result.stderr[-3000:]}"
            )
        return result

    def docker(self, *args: str, timeout: float = 120) -> str:
        result = _run(["docker", *args], timeout=timeout, env=self.env)
        assert result.returncode == 0, f"docker {' '.join(args)}: {result.stderr[-2000:]}"
        return result.stdout

    def ids(self, *services: str, all_states: bool = False) -> list[str]:
        """Container ids of ``services`` (default: all), running unless ``all_states``."""
        flags = ["-a"] if all_states else []
        out = self.compose("--profile", "*", "ps", *flags, "-q", *services).stdout
        return out.split()

    def inspect(self, ids: list[str]) -> list[dict[str, Any]]:
        if not ids:
            return []
        data: list[dict[str, Any]] = json.loads(self.docker("inspect", *ids))
        return data

    def port(self, service: str, port: int) -> str:
        """host:port where ``service``'s ``port`` is published (it changes on restart)."""
        out = self.compose("--profile", "*", "port", service, str(port)).stdout.strip()
        assert out, f"{service}:{port} is not published"
        return out.replace("0.0.0.0:", "127.0.0.1:")

    def logs(self, container: str, *, since: float | None = None) -> str:
        args = ["logs", *(["--since", f"{since:.3f}"] if since else []), container]
        result = _run(["docker", *args], timeout=60, env=self.env)
        return result.stdout + result.stderr

    def leftovers(self) -> dict[str, list[str]]:
        """Containers, volumes and networks still labelled with this project."""
        label = f"label=com.docker.compose.project={self.name}"
        found = {
            "containers": self.docker("ps", "-a", "-q", "--filter", label).split(),
            "volumes": self.docker("volume", "ls", "-q", "--filter", label).split(),
            "networks": self.docker("network", "ls", "-q", "--filter", label).split(),
        }
        return {kind: ids for kind, ids in found.items() if ids}

    def remove(self) -> None:
        """down -v with every profile, then the images this project built."""
        self.compose("--profile", "*", "down", "-v", "--remove-orphans", "-t", "5", check=False)
        for image in self.images:
            _run(["docker", "rmi", "-f", image], env=self.env)
        _run(
            [
                "docker",
                "image",
                "prune",
                "-f",
                "--filter",
                f"label=com.docker.compose.project={self.name}",
            ],
            env=self.env,
        )


def new_project(tmp_path: Path, role: str) -> Project:
    name = f"ldtest-{role}-{uuid.uuid4().hex[:8]}"
    workdir = tmp_path / name
    shutil.copytree(ROOT, workdir, ignore=_IGNORED)
    # The shell of a person running compose: none of this machine's DISPATCHER_*
    # or compose knobs, ports left to the engine, image tags of this project.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DISPATCHER_", "COMPOSE_", "REDIS_", "FLOWER_", "INTAKE_"))
        and k not in ("WORKER_CONCURRENCY", "WORKER_REPLICAS")
        and not k.startswith("LEAD_DISPATCHER_")
    }
    images = (f"{name}:latest", f"{name}-monitoring:latest")
    env.update(
        COMPOSE_PROJECT_NAME=name,
        LEAD_DISPATCHER_IMAGE=images[0],
        LEAD_DISPATCHER_MONITORING_IMAGE=images[1],
        REDIS_PUBLISH="127.0.0.1:",
        INTAKE_PUBLISH="127.0.0.1:",
        FLOWER_PUBLISH="127.0.0.1:",
    )
    return Project(name, workdir, env, images)


def _epoch(stamp: str) -> float:
    """Docker's RFC 3339 time with nanoseconds, as epoch seconds."""
    head, _, frac = stamp.rstrip("Z").partition(".")
    seconds = datetime.fromisoformat(head + "+00:00").timestamp()
    return seconds + float(f"0.{frac or '0'}")


def _ns(value: int | None, default_s: float) -> float:
    return value / 1e9 if value else default_s


def wait_healthy(project: Project, ids: list[str], *, timeout: float) -> dict[str, dict[str, Any]]:
    """Poll until every container is healthy; per container: service, seconds, bound."""
    first_healthy: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while True:
        now = time.time()
        states = project.inspect(ids)
        for c in states:
            health = (c["State"].get("Health") or {}).get("Status")
            if health == "healthy" and c["Id"] not in first_healthy:
                first_healthy[c["Id"]] = now
        if len(first_healthy) == len(ids):
            break
        if time.monotonic() > deadline:
            table = {c["Name"]: c["State"].get("Health", {}).get("Status") for c in states}
            raise AssertionError(f"not healthy within {timeout}s: {table}")
        time.sleep(0.5)
    out: dict[str, dict[str, Any]] = {}
    for c in project.inspect(ids):
        check = c["Config"].get("Healthcheck") or {}
        assert check.get("Test") and check["Test"][0] != "NONE", f"{c['Name']}: no healthcheck"
        # Docker's defaults: interval 30 s, timeout 30 s, start period 0, retries 3.
        interval = _ns(check.get("Interval"), 30.0)
        bound = _ns(check.get("StartPeriod"), 0.0) + (check.get("Retries") or 3) * (
            interval + _ns(check.get("Timeout"), 30.0)
        )
        out[c["Name"].lstrip("/")] = {
            "service": c["Config"]["Labels"]["com.docker.compose.service"],
            "healthy_after_s": round(first_healthy[c["Id"]] - _epoch(c["State"]["StartedAt"]), 1),
            "bound_s": round(bound, 1),
            "interval_s": interval,
            "restarts": c["RestartCount"],
        }
    return out


def worker_ready(project: Project, container: str, *, since: float, timeout: float = 60) -> None:
    """Wait for Celery's "ready." line, logged once the consumer is on the queue."""
    wait_for(
        lambda: "ready." in project.logs(container, since=since),
        timeout=timeout,
        interval=0.3,
        message=f"worker {container[:12]} ready",
    )


# -- leads, on both sides ------------------------------------------------------------------


class Counter:
    """Jobs of one run, read from Redis through the published port (or ``url``)."""

    def __init__(self, project: Project, *, url: str | None = None) -> None:
        self.project = project
        self.url = url
        self._settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            url = self.url or f"redis://{self.project.port('redis', 6379)}/0"
            self._settings = Settings(redis_url=url)
        return self._settings

    def states(self, ids: list[str]) -> collections.Counter[str] | None:
        """state (dead: dead/reason) -> count, or None while Redis cannot be reached."""
        try:
            out: collections.Counter[str] = collections.Counter()
            for job_id in ids:
                status = job_status(job_id, settings=self.settings) or {"state": "unknown"}
                state = status["state"]
                out[f"dead/{status['reason']}" if state == "dead" else state] += 1
            return out
        except (BrokerUnavailable, redis.RedisError, AssertionError):
            self._settings = None  # Redis restarted: its published port may have moved
            return None

    def enqueue(self, phones: list[str]) -> list[str]:
        leads = [{"agent_user": "1000", "phone_number": p, "first_name": "Load"} for p in phones]
        ids: list[str] = enqueue_leads(leads, settings=self.settings)
        return ids


def simulator_successes(project: Project) -> collections.Counter[str]:
    """phone -> SUCCESS answers the demo simulator gave (its request log)."""
    (sim,) = project.ids("simulator")
    return collections.Counter(m.group(1) for m in _SUCCESS.finditer(project.logs(sim)))


def phones(run: int, n: int) -> list[str]:
    # Ten digits, unique per run, clear of the simulator's DNC numbers (727555000x).
    return [f"31{run:02d}{i:06d}" for i in range(n)]


def settled(states: collections.Counter[str] | None, n: int) -> bool:
    """Every one of the ``n`` jobs added or dead-lettered."""
    if states is None:
        return False
    return sum(v for k, v in states.items() if k == "added" or k.startswith("dead/")) == n


def settle(
    project: Project, counter: Counter, ids: list[str], *, timeout: float
) -> collections.Counter[str]:
    """Wait until every job is added or dead-lettered; else fail with the stragglers."""
    deadline = time.monotonic() + timeout
    states: collections.Counter[str] | None = None
    while time.monotonic() < deadline:
        current = counter.states(ids)
        if current is not None:
            states = current
            if settled(states, len(ids)):
                return states
        time.sleep(0.5)
    stragglers = {}
    for job_id in ids:
        status = job_status(job_id, settings=counter.settings) or {"state": "unknown"}
        if status["state"] != "added" and status["state"] != "dead":
            stragglers[job_id] = {"state": status["state"], "events": job_events(project, job_id)}
        if len(stragglers) == 3:
            break
    raise AssertionError(f"not settled after {timeout}s: {dict(states or {})}; {stragglers}")


def run_with_fault(
    project: Project, run: int, fault: Callable[[], dict[str, Any]], *, settle_s: float = 120
) -> dict[str, Any]:
    """Enqueue FAULT_LEADS leads, inject ``fault`` once some are added, count the outcome."""
    counter = Counter(project)
    numbers = phones(run, FAULT_LEADS)
    before = simulator_successes(project)
    assert not any(before[p] for p in numbers)
    started = time.monotonic()
    ids = counter.enqueue(numbers)
    # Mid-run: strike once a tenth is added, and check that most is still to do.
    wait_for(
        lambda: (counter.states(ids) or {}).get("added", 0) >= FAULT_LEADS // 10,
        timeout=60,
        interval=0.1,
        message="a tenth of the leads added",
    )
    states = counter.states(ids)
    assert states is not None
    added_at_fault = states.get("added", 0)
    detail = fault()
    final = settle(project, counter, ids, timeout=settle_s)
    elapsed = time.monotonic() - started
    sim = simulator_successes(project)
    twice = {p: sim[p] for p in numbers if sim[p] > 1}
    statuses = {job_id: job_status(job_id, settings=counter.settings) for job_id in ids}
    added = {j for j, s in statuses.items() if s and s["state"] == "added"}
    dead = {j: s["reason"] for j, s in statuses.items() if s and s["state"] == "dead"}
    # Every added job's lead is in VICIdial once; nothing the dispatcher calls
    # added is missing there.
    by_job = dict(zip(ids, numbers, strict=True))
    missing_in_vicidial = [j for j in added if sim[by_job[j]] != 1]
    ambiguous_landed = sum(1 for j in dead if sim[by_job[j]] == 1)
    # A dead letter whose job never logged an attempt was never sent to VICIdial.
    stories = {
        j: {"reached_vicidial": sim[by_job[j]], "events": job_events(project, j)}
        for j in list(dead)[:20]
    }
    never_called = sum(
        1 for story in stories.values() if not any(" lead.attempt " in e for e in story["events"])
    )
    if stories:
        FIGURES.setdefault("dead_letter_stories", {})[str(run)] = dict(list(stories.items())[:5])
    figures = {
        "leads": FAULT_LEADS,
        "added_when_fault_began": added_at_fault,
        "added": len(added),
        "dead_letters": dict(collections.Counter(dead.values())),
        "ambiguous_that_reached_vicidial": ambiguous_landed,
        "dead_letters_never_called": never_called,
        "lost": FAULT_LEADS - len(added) - len(dead),
        "added_twice": len(twice),
        "seconds": round(elapsed, 1),
        **detail,
    }
    assert added_at_fault < FAULT_LEADS * 0.9, f"the fault came too late to be mid-run: {figures}"
    assert sum(final.values()) == FAULT_LEADS
    assert not twice, f"added twice in VICIdial: {twice}"
    assert not missing_in_vicidial, missing_in_vicidial
    dead_letters_hold_their_jobs(project, {j: (r, by_job[j]) for j, r in dead.items()})
    return figures


def job_events(project: Project, job_id: str) -> list[str]:
    """One job's log events in every worker container, oldest first."""
    events = []
    for container in project.ids("worker", all_states=True):
        for line in project.logs(container).splitlines():
            if job_id in line and line.startswith("{"):
                e = json.loads(line)
                extra = {k: e[k] for k in ("reason", "error", "verdict", "attempt") if k in e}
                events.append((e.get("timestamp", ""), f"{container[:12]} {e['event']} {extra}"))
    return [text for _, text in sorted(events)]


def dead_letters_hold_their_jobs(project: Project, dead: dict[str, tuple[str, str]]) -> None:
    """Each dead job (id -> reason, phone) is a letter in `dispatcher dlq list`, whole."""
    if not dead:
        return
    out = project.compose(
        "exec", "-T", "worker", "dispatcher", "dlq", "list", "--limit", "100000", "--json"
    ).stdout
    letters = {letter["job_id"]: letter for letter in json.loads(out)}
    for job_id, (reason, phone) in dead.items():
        assert letters[job_id]["reason"] == reason
        assert phone in json.dumps(letters[job_id]["job"]), letters[job_id]


# -- the deployment, shared by the tests below ----------------------------------------------


@pytest.fixture(scope="module")
def deployment(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Project]:
    """README, one host, demo: cp .env.example .env; build; up -d with 2 workers; healthy."""
    project = new_project(tmp_path_factory.mktemp("deploy"), "demo")
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    watcher = ThreadPoolExecutor(max_workers=1)
    try:
        shutil.copy(project.workdir / ".env.example", project.workdir / ".env")
        started = time.monotonic()
        project.compose("--profile", "demo", "build", timeout=900)
        FIGURES["build_s"] = round(time.monotonic() - started, 1)
        started = time.monotonic()
        since = time.time()
        project.compose("--profile", "demo", "up", "-d", "--scale", "worker=2", timeout=300)
        FIGURES["up_s"] = round(time.monotonic() - started, 1)
        ids = project.compose("--profile", "demo", "ps", "-q").stdout.split()
        # The workers report healthy at their first check, 30 s after start, but
        # consume within seconds: the tests that need no health run meanwhile.
        project.health = watcher.submit(wait_healthy, project, ids, timeout=240)
        project.health.add_done_callback(
            lambda _: FIGURES.setdefault("all_healthy_s", round(time.monotonic() - started, 1))
        )
        for container in project.ids("worker"):
            worker_ready(project, container, since=since)
        yield project
    finally:
        watcher.shutdown(wait=True)
        project.remove()
        if reporter is not None and FIGURES:
            capture = request.config.pluginmanager.get_plugin("capturemanager")
            with capture.global_and_fixture_disabled():
                reporter.write_line("")
                reporter.write_line("deployment figures (tests/deploy/test_deploy_engine.py):")
                for key, value in FIGURES.items():
                    reporter.write_line(f"  {key}: {json.dumps(value)}")


def test_a_lead_enqueued_in_a_worker_container_is_added(deployment: Project) -> None:
    # The README's commands (-T: no terminal here).
    enqueue = deployment.compose(
        "exec", "-T", "worker", "dispatcher", "enqueue",
        "--agent-user", "1000", "--phone", "7275551212", "--field", "first_name=Bob",
    )  # fmt: skip
    job_id = enqueue.stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{32}", job_id), enqueue.stdout + enqueue.stderr

    def state() -> dict[str, Any]:
        out = deployment.compose("exec", "-T", "worker", "dispatcher", "job", job_id, "--json")
        data: dict[str, Any] = json.loads(out.stdout)
        return data

    job = wait_for(lambda: (s := state())["state"] == "added" and s, timeout=30, interval=0.5)
    assert job["lead_id"] and job["campaign"] == "TESTCAMP"
    assert simulator_successes(deployment)["7275551212"] == 1
    status = json.loads(
        deployment.compose("exec", "-T", "worker", "dispatcher", "status", "--json").stdout
    )
    assert len(status["workers"]) == 2, status


def test_monitoring_and_intake_run_from_the_project_image(deployment: Project) -> None:
    # The README's commands, with a token for the intake and a password for Flower.
    token = uuid.uuid4().hex
    with (deployment.workdir / ".env").open("a") as env:
        env.write(f"\nDISPATCHER_INTAKE_TOKENS={token}\n")
    deployment.env["FLOWER_BASIC_AUTH"] = "ops:s3cret"
    workers = deployment.ids("worker")
    # Naming the services leaves the workers alone (.env changed under them).
    deployment.compose("--profile", "monitoring", "up", "-d", "flower", timeout=600)
    deployment.compose("up", "-d", "intake")
    assert deployment.ids("worker") == workers
    (flower,) = deployment.ids("flower")
    (intake,) = deployment.ids("intake")
    health = wait_healthy(deployment, [flower, intake], timeout=120)
    FIGURES["health_monitoring_intake"] = health
    for name, h in health.items():
        assert h["restarts"] == 0 and h["healthy_after_s"] <= h["bound_s"], (name, h)

    # Flower is this project's image plus the extra; the worker image has no Flower.
    (info,) = deployment.inspect([flower])
    assert info["Config"]["Image"] == deployment.images[1]
    no_flower = deployment.compose(
        "exec", "-T", "worker", "python", "-c", "import flower", check=False
    )
    assert no_flower.returncode != 0, "Flower leaked into the worker image"

    # It watches the fleet's broker, behind its password (its healthcheck is not).
    base = f"http://{deployment.port('flower', 5555)}"
    assert httpx.get(f"{base}/healthcheck", timeout=10).text == "OK"
    assert httpx.get(f"{base}/workers", timeout=10).status_code == 401
    nodes = {f"celery@{c[:12]}" for c in workers}
    wait_for(
        lambda: (
            nodes
            <= set(
                re.findall(r"celery@[0-9a-f]{12}", _get(f"{base}/workers", auth=("ops", "s3cret")))
            )
        ),
        timeout=30,
        interval=1,
        message=f"Flower listing {nodes}",
    )

    # The intake enqueues for the same fleet.
    url = f"http://{deployment.port('intake', 8000)}"
    reply = httpx.post(
        f"{url}/v1/leads",
        json={"agent_user": "1000", "phone_number": "7275551299"},
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    assert reply.status_code == 202, reply.text
    job_id = reply.json()["job_id"]
    wait_for(
        lambda: (
            httpx.get(
                f"{url}/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {token}"}, timeout=10
            ).json()["state"]
            == "added"
        ),
        timeout=30,
        interval=0.5,
        message="the intake's lead added",
    )
    assert simulator_successes(deployment)["7275551299"] == 1


def _get(url: str, *, auth: tuple[str, str]) -> str:
    reply = httpx.get(url, auth=auth, timeout=10)
    assert reply.status_code == 200, reply.status_code
    return reply.text


def test_demo_services_come_up_healthy_within_their_healthcheck_bounds(
    deployment: Project,
) -> None:
    assert deployment.health is not None
    health = FIGURES["health"] = deployment.health.result()
    services = sorted(h["service"] for h in health.values())
    # The demo is Redis, the simulator and the workers: no intake (it needs a
    # token), no Flower.
    assert services == ["redis", "simulator", "worker", "worker"], services
    for name, h in health.items():
        assert h["restarts"] == 0, f"{name} restarted: {h}"
        assert h["healthy_after_s"] <= h["bound_s"], f"{name}: {h}"


@pytest.fixture(scope="module")
def fault_fleet(deployment: Project) -> Project:
    """The same deployment with short timeouts: `up -d` replaces the workers."""
    assert deployment.health is not None
    deployment.health.exception()  # the first containers' health, seen before they go
    with (deployment.workdir / ".env").open("a") as env:
        env.write("\n# deployment tests: short timeouts\n")
        env.writelines(f"{k}={v}\n" for k, v in FAULT_ENV.items())
    deployment.env.update(WORKER_CONCURRENCY=FAULT_CONCURRENCY, WORKER_REPLICAS="2")
    since = time.time()
    # No --scale: WORKER_REPLICAS keeps the fleet at 2.
    deployment.compose("--profile", "demo", "up", "-d")
    workers = deployment.ids("worker")
    assert len(workers) == 2
    for container in workers:
        worker_ready(deployment, container, since=since)
    return deployment


def _grace_s(project: Project) -> int:
    compose = yaml.safe_load((project.workdir / "docker-compose.yml").read_text())
    grace = str(compose["services"]["worker"]["stop_grace_period"])
    assert grace.endswith("s") and grace[:-1].isdigit(), grace
    return int(grace[:-1])


def test_rolling_restart_of_the_workers_loses_and_duplicates_nothing(
    fault_fleet: Project,
) -> None:
    project = fault_fleet
    grace = _grace_s(project)

    def rolling_restart() -> dict[str, Any]:
        # One container at a time, each given the compose file's grace period,
        # the next one only once the previous consumes again.
        timings = []
        for container in project.ids("worker"):
            since = time.time()
            project.docker("stop", "-t", str(grace), container, timeout=grace + 30)
            stopped = time.time()
            project.docker("start", container)
            worker_ready(project, container, since=since)
            timings.append(
                {"stop_s": round(stopped - since, 1), "back_s": round(time.time() - since, 1)}
            )
        return {"restarts": timings}

    figures = run_with_fault(project, 1, rolling_restart)
    FIGURES["rolling_restart"] = figures
    assert figures["lost"] == 0 and figures["added_twice"] == 0, figures
    # Warm shutdown finishes every call in flight: nothing is even ambiguous.
    assert figures["added"] == FAULT_LEADS, figures


def test_sigkill_of_a_worker_loses_nothing_and_adds_nothing_twice(fault_fleet: Project) -> None:
    project = fault_fleet
    victim = project.ids("worker")[0]

    def kill() -> dict[str, Any]:
        project.docker("kill", "-s", "SIGKILL", victim)
        # `docker kill` counts as a manual stop (no restart policy): bring it back.
        since = time.time()
        project.compose("--profile", "demo", "start", "worker")
        worker_ready(project, victim, since=since)
        return {"killed": victim[:12]}

    figures = run_with_fault(project, 2, kill)
    FIGURES["sigkill_one_worker"] = figures
    assert figures["lost"] == 0 and figures["added_twice"] == 0, figures
    # What the guarantees allow for a killed worker: added, or ambiguous.
    assert set(figures["dead_letters"]) <= {"ambiguous"}, figures


def test_redis_restart_mid_run_loses_nothing(fault_fleet: Project) -> None:
    project = fault_fleet

    def restart_redis() -> dict[str, Any]:
        started = time.monotonic()
        project.compose("restart", "redis")
        (container,) = project.ids("redis")
        wait_for(
            lambda: project.inspect([container])[0]["State"]["Health"]["Status"] == "healthy",
            timeout=90,
            interval=0.5,
            message="redis healthy again",
        )
        return {"redis_down_to_healthy_s": round(time.monotonic() - started, 1)}

    figures = run_with_fault(project, 3, restart_redis)
    FIGURES["redis_restart"] = figures
    assert figures["lost"] == 0 and figures["added_twice"] == 0, figures
    # A Redis restart is the fleet's own hiccup: a worker whose claim reply was lost
    # asks again with the same token and recognises its own claim (issue 11), so
    # no job that was never sent can end ambiguous.
    assert figures["added"] == FAULT_LEADS and not figures["dead_letters"], figures


def host_address() -> str:
    """An IPv4 address of this host that is not loopback (the other "hosts" reach it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            # No packet is sent: this only asks the kernel which address it would use.
            probe.connect(("10.255.255.254", 9))
            address = str(probe.getsockname()[0])
        except OSError:
            address = ""
    if not address or address.startswith("127."):
        found = _run(["hostname", "-I"]).stdout.split()
        address = next((a for a in found if "." in a and not a.startswith("127.")), "")
    assert address, "this host has no IPv4 address but loopback"
    return address


def test_several_hosts_share_one_redis(
    deployment: Project, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """docs/DEPLOYING.md "Several hosts": Redis on one host, workers on another."""
    base = tmp_path_factory.mktemp("hosts")
    redis_host, worker_host = new_project(base, "redis"), new_project(base, "workers")
    password = uuid.uuid4().hex
    address = host_address()
    try:
        # On the Redis host: published on a private address, with a password.
        shutil.copy(redis_host.workdir / ".env.example", redis_host.workdir / ".env")
        redis_host.env.update(REDIS_PASSWORD=password, REDIS_PUBLISH=f"{address}:")
        redis_host.compose("up", "-d", "redis")
        (redis_id,) = redis_host.ids("redis")
        wait_healthy(redis_host, [redis_id], timeout=60)
        published = redis_host.port("redis", 6379)
        assert published.startswith(f"{address}:"), published
        url = f"redis://:{password}@{published}/0"
        with pytest.raises(redis.AuthenticationError):
            redis.Redis.from_url(f"redis://{published}/0").set("x", "1")

        # On a worker host: .env points at that Redis; no local Redis (--no-deps).
        # The demo simulator stands in for the VICIdial the workers would call.
        env_text = (worker_host.workdir / ".env.example").read_text()
        env_text = env_text.replace(
            "DISPATCHER_REDIS_URL=redis://redis:6379/0", f"DISPATCHER_REDIS_URL={url}"
        )
        assert url in env_text
        (worker_host.workdir / ".env").write_text(env_text)
        # The image of the first host, as if pulled from a registry: no build here.
        worker_host.env["LEAD_DISPATCHER_IMAGE"] = deployment.images[0]
        since = time.time()
        worker_host.compose("up", "-d", "--no-deps", "--scale", "worker=2", "worker", "simulator")
        services = sorted(
            c["Config"]["Labels"]["com.docker.compose.service"]
            for c in worker_host.inspect(worker_host.ids())
        )
        assert services == ["simulator", "worker", "worker"], services
        for container in worker_host.ids("worker"):
            worker_ready(worker_host, container, since=since)

        # A producer anywhere enqueues on the shared Redis; the remote fleet adds.
        counter = Counter(redis_host, url=url)
        numbers = phones(9, 20)
        ids = counter.enqueue(numbers)
        wait_for(
            lambda: (counter.states(ids) or {}).get("added") == len(ids),
            timeout=60,
            interval=0.5,
            message="leads added by the workers of the other host",
        )
        sim = simulator_successes(worker_host)
        assert all(sim[p] == 1 for p in numbers), sim
        status = json.loads(
            worker_host.compose("exec", "-T", "worker", "dispatcher", "status", "--json").stdout
        )
        assert len(status["workers"]) == 2, status
    finally:
        worker_host.images = ()  # the deployment's image: removed with the deployment
        for project in (worker_host, redis_host):
            project.remove()
            assert project.leftovers() == {}


def test_down_v_leaves_nothing(deployment: Project) -> None:
    deployment.compose("--profile", "*", "down", "-v")
    assert deployment.leftovers() == {}
