"""The deployment files: docker-compose.yml, Dockerfile, .env.example, .dockerignore.

No Docker engine is needed: the files are parsed and checked for the properties
an operator relies on, then every command they state is run here exactly as
written (compose interpolation applied with its defaults, the compose
environment, service host names swapped for loopback and fixed ports for free
ones): Redis with the compose flags and healthcheck, the simulator of the demo
profile, and a real worker started with the compose command line that consumes a
job from a real Redis and calls that simulator, checked by the image's
HEALTHCHECK command. tests/deploy/test_deploy_engine.py runs the same files on a real
Docker engine.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator, Mapping
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import httpx
import pytest
import redis
import yaml

from dispatcher.config.settings import SETTINGS_VARIABLES, Settings
from dispatcher.devtools.localfleet import WorkerProcess
from dispatcher.devtools.redis_server import find_redis_server, free_port
from dispatcher.ops.producer import enqueue_lead, job_status
from tests.support.settings import ROOT
from tests.support.waiting import wait_for
from workers.delivery import MAX_RATE_WAIT_S

BIN = Path(sys.executable).parent


# -- reading the files -----------------------------------------------------------------


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def service(name: str) -> dict[str, Any]:
    svc: dict[str, Any] = compose()["services"][name]
    return svc


_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|\$([A-Za-z_]\w*)")


def interpolate(value: str, env: Mapping[str, str]) -> str:
    """Compose's variable interpolation (${VAR}, ${VAR:-default}, ${VAR-default}, $$)."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1) or m.group(4)
        op, arg = m.group(2), m.group(3) or ""
        current = env.get(name)
        if op == ":-":
            return current if current else arg
        if op == "-":
            return current if current is not None else arg
        if op in (":?", "?") and not current:
            raise AssertionError(f"compose would stop: {name} required ({arg})")
        return current or ""

    return _VAR.sub(sub, value)


def command(name: str, env: Mapping[str, str] | None = None) -> list[str]:
    """A service's command as compose would run it (interpolated, list form)."""
    raw = service(name)["command"]
    assert isinstance(raw, list), f"{name}: use the list form of command"
    return [interpolate(str(arg), env or {}) for arg in raw]


def read_env_file(path: Path) -> tuple[dict[str, str], dict[str, str]]:
    """(active NAME=value lines, commented-out ``# NAME=value`` lines) of an env file."""
    active: dict[str, str] = {}
    documented: dict[str, str] = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^(#\s*)?([A-Z][A-Z0-9_]*)=(.*)$", line.strip())
        if not m:
            continue
        value = m.group(3)
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        (documented if m.group(1) else active)[m.group(2)] = value
    return active, documented


def compose_env(name: str) -> dict[str, str]:
    """The environment compose gives service ``name``: env_file(s), then environment."""
    svc = service(name)
    env: dict[str, str] = {}
    files = svc.get("env_file", [])
    for entry in [files] if isinstance(files, str) else files:
        path = entry if isinstance(entry, str) else entry["path"]
        # .env is the operator's copy of .env.example.
        env.update(read_env_file(ROOT / (".env.example" if path == ".env" else path))[0])
    environment = svc.get("environment", {})
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    env.update({k: interpolate(str(v), {}) for k, v in environment.items()})
    return env


def swap_hosts(env: Mapping[str, str], hosts: Mapping[str, str]) -> dict[str, str]:
    """Point URLs at compose service names (redis, simulator) to loopback ``host:port``."""
    out = dict(env)
    for key, value in env.items():
        if "://" not in value:
            continue
        parts = urlsplit(value)
        host = parts.hostname
        if host is not None and host in hosts:
            auth = parts.netloc.rpartition("@")[0]
            netloc = f"{auth}@{hosts[host]}" if auth else hosts[host]
            out[key] = urlunsplit(parts._replace(netloc=netloc))
    return out


def duration_s(text: str) -> float:
    """Compose durations: 40s, 1m30s, 2m."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", str(text))
    assert parts and "".join(n + u for n, u in parts) == str(text), text
    return sum(float(n) * units[u] for n, u in parts)


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        instruction, _, args = line.partition(" ")
        out.append((instruction.upper(), args.strip()))
    return out


def dockerfile_exec(instruction: str) -> list[str]:
    """The exec-form (JSON) command of CMD, or of HEALTHCHECK's CMD."""
    args = [a for i, a in dockerfile() if i == instruction]
    assert len(args) == 1, f"one {instruction} expected"
    text = args[0]
    if instruction == "HEALTHCHECK":
        text = text[text.index(" CMD ") + len(" CMD ") :] if " CMD " in text else text
    assert text.startswith("["), f"{instruction}: use the exec (JSON) form"
    argv: list[str] = json.loads(text)
    return argv


def clean_env(extra: Mapping[str, str]) -> dict[str, str]:
    """A process environment with no DISPATCHER_* leaking from this shell, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCHER_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["DISPATCHER_ENV_FILE"] = "/nonexistent"
    env.update(extra)
    return env


def executable(name: str) -> str:
    found = shutil.which(name, path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    assert found, f"{name} not found"
    return found


# -- docker-compose.yml: properties ----------------------------------------------------


def test_worker_service_scales_and_restarts_safely() -> None:
    worker = service("worker")
    assert "container_name" not in worker, "--scale needs distinct container names"
    assert "ports" not in worker, "--scale cannot publish one host port N times"
    # Every worker needs its own host name: it names the Celery node and the
    # transport's in-flight list (host.pid), so no fixed hostname, no host network.
    assert "hostname" not in worker
    assert worker.get("network_mode") != "host"
    assert worker.get("restart") in ("unless-stopped", "always")
    env_file = worker.get("env_file")
    files = [env_file] if isinstance(env_file, str) else list(env_file or [])
    assert ".env" in [f if isinstance(f, str) else f["path"] for f in files]
    assert worker["depends_on"]["redis"]["condition"] == "service_healthy"
    assert "profiles" not in worker
    # The image's HEALTHCHECK (dispatcher health --worker) stays in force.
    assert not worker.get("healthcheck", {}).get("disable")


def test_stop_grace_period_outlasts_the_calls_in_flight() -> None:
    # A warm shutdown waits for each call in flight: up to its claim lease
    # (2 x HTTP timeout + 5 s) plus a fleet rate-limit wait.
    active, documented = read_env_file(ROOT / ".env.example")
    raw = active.get("DISPATCHER_HTTP_TIMEOUT_S", documented.get("DISPATCHER_HTTP_TIMEOUT_S"))
    http_timeout = float(raw) if raw else Settings().http_timeout_s
    grace = duration_s(service("worker")["stop_grace_period"])
    assert grace > http_timeout
    assert grace >= 2 * http_timeout + 5 + MAX_RATE_WAIT_S


def test_redis_service_keeps_the_queue() -> None:
    redis_svc = service("redis")
    argv = command("redis")
    flags = dict(zip(argv[1::2], argv[2::2], strict=False))
    assert flags["--appendonly"] == "yes"
    assert flags["--maxmemory-policy"] == "noeviction"
    assert flags["--appendfsync"] in ("always", "everysec")
    volume = next(v for v in redis_svc["volumes"] if v.endswith(":/data"))
    assert volume.split(":")[0] in compose()["volumes"], "a named volume"
    assert flags["--dir"] == "/data"
    assert redis_svc["healthcheck"]["test"]
    assert redis_svc.get("restart") in ("unless-stopped", "always")
    # Published on loopback only, unless the operator says otherwise.
    assert all(interpolate(p, {}).startswith("127.0.0.1:") for p in redis_svc.get("ports", []))


def test_profiles_demo_and_monitoring() -> None:
    services = compose()["services"]
    assert services["simulator"]["profiles"] == ["demo"]
    assert services["flower"]["profiles"] == ["monitoring"]
    # The intake refuses to start without a token: never part of a plain `up` or
    # of the demo (it crash-looped there), started by naming it.
    assert services["intake"]["profiles"] == ["intake"]
    assert "profiles" not in services["redis"]
    argv = command("simulator")
    assert argv[:2] == ["dispatcher", "simulate"]
    assert argv[argv.index("--host") + 1] == "0.0.0.0", "reachable from the worker containers"
    # .env as shipped points the workers at the demo simulator.
    url = urlsplit(compose_env("worker")["DISPATCHER_VICIDIAL_URL"])
    assert (url.hostname, url.port) == ("simulator", int(argv[argv.index("--port") + 1]))
    assert url.path == "/agc/api.php"
    ports = [interpolate(str(p), {}) for p in services["flower"].get("ports", [])]
    assert ports and all(p.startswith("127.0.0.1:") for p in ports), ports


def test_flower_is_built_from_the_project_image() -> None:
    # No third-party image: a closed network cannot pull one.
    flower = service("flower")
    assert flower["build"] == {"context": ".", "target": "monitoring"}
    assert interpolate(flower["image"], {}) != interpolate(service("worker")["image"], {})
    stages = {a.split(" AS ")[1]: a.split(" AS ")[0] for i, a in dockerfile() if " AS " in a}
    assert stages["monitoring"] == "runtime"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert any(req.startswith("flower") for req in project["optional-dependencies"]["monitoring"])
    assert not any(req.startswith("flower") for req in project["dependencies"])


@pytest.mark.parametrize("auth", ["", "ops:pa ss"])
def test_flower_watches_the_workers_broker(auth: str, tmp_path: Path) -> None:
    flower = service("flower")
    assert "env_file" not in flower, "the VICIdial password has no business in Flower"
    # Compose reads DISPATCHER_REDIS_URL from the project's .env for interpolation.
    dotenv = read_env_file(ROOT / ".env.example")[0]
    shell_env = {**dotenv, "FLOWER_BASIC_AUTH": auth} if auth else dotenv
    env = {k: interpolate(str(v), shell_env) for k, v in flower["environment"].items()}
    argv = command("flower")
    assert argv[:2] == ["sh", "-c"] and argv[2].startswith("exec celery ")
    # The container's shell expands it; echo the arguments instead of running celery.
    script = argv[2].replace("exec celery ", "exec printf '%s\\n' ", 1)
    result = _run(["sh", "-c", script], {"PATH": os.environ["PATH"], **env}, tmp_path)
    args = result.stdout.splitlines()
    assert f"--broker={dotenv['DISPATCHER_REDIS_URL']}" in args
    assert "flower" in args
    assert [a for a in args if a.startswith("--basic_auth")] == (
        [f"--basic_auth={auth}"] if auth else []
    )


# -- .env.example, Dockerfile, .dockerignore -----------------------------------------


def test_env_example_documents_every_setting_and_nothing_else() -> None:
    active, documented = read_env_file(ROOT / ".env.example")
    names = [*active, *documented]
    assert len(names) == len(set(names)), "a variable listed twice"
    assert set(names) == set(SETTINGS_VARIABLES)
    lines = (ROOT / ".env.example").read_text().splitlines()
    assignment = re.compile(r"^#?\s*DISPATCHER_[A-Z0-9_]+=")
    for name in SETTINGS_VARIABLES:
        # Each one is explained by a comment right above it (or above its group).
        n = next(i for i, line in enumerate(lines) if re.match(rf"^#?\s*{name}=", line))
        while n > 0 and assignment.match(lines[n - 1]):
            n -= 1
        above = lines[n - 1] if n > 0 else ""
        assert above.startswith("#") and above.lstrip("# ").strip(), f"{name}: no comment"
    # The file as shipped is a valid configuration for a worker.
    settings = Settings.from_mapping(active)
    settings.require_vicidial()
    # A commented-out line shows the real default.
    defaults = Settings()
    for name, value in documented.items():
        field = name.removeprefix("DISPATCHER_").lower()
        parsed = Settings.from_mapping({name: value})
        assert getattr(parsed, field) == getattr(defaults, field), f"{name}: default is wrong"


def test_env_example_has_no_inline_comments() -> None:
    # Compose strips " # ..." after an unquoted value; the dispatcher's own .env
    # reader does not: a line must mean the same to both.
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line.startswith("DISPATCHER_"):
            assert " #" not in line, line


def test_dockerfile_builds_a_slim_non_root_image_from_pyproject() -> None:
    steps = dockerfile()
    froms = [a for i, a in steps if i == "FROM"]
    stages = [a.split(" AS ")[1] for a in froms if " AS " in a]
    # Every stage starts from the Python image or from an earlier stage.
    assert froms and all(
        a.startswith(("python:3.11-slim", "${PYTHON_IMAGE}")) or a.split(" AS ")[0] in stages[:n]
        for n, a in enumerate(froms)
    ), froms
    # The default target (the last stage) is the worker image, with the CMD.
    assert froms[-1] in stages and [i for i, _ in steps][-1] == "CMD"
    args = [a for i, a in steps if i == "ARG"]
    assert "PYTHON_IMAGE=python:3.11-slim" in args
    users = [a for i, a in steps if i == "USER"]
    assert users and users[-1] not in ("root", "0"), "the last USER must not be root"
    copies = [a for i, a in steps if i == "COPY"]
    first_code = next(n for n, a in enumerate(copies) if a.startswith(("dispatcher", "workers")))
    first_pyproject = next(n for n, a in enumerate(copies) if "pyproject.toml" in a)
    assert first_pyproject < first_code, "dependencies in a layer before the code"
    run_after_pyproject = [a for i, a in steps if i == "RUN" and "pyproject.toml" in a]
    assert any("pip wheel" in a or "pip install" in a for a in run_after_pyproject)
    for instruction, text in steps:
        if instruction in ("ENV", "ARG"):
            assert not re.search(r"PASS|SECRET|TOKEN|KEY", text.upper()), text
    assert dockerfile_exec("HEALTHCHECK")[:3] == ["dispatcher", "health", "--worker"]


def test_dockerfile_cmd_is_the_compose_worker_command() -> None:
    assert dockerfile_exec("CMD") == command("worker")
    assert command("worker")[:4] == ["celery", "-A", "workers", "worker"]


def test_dockerignore_keeps_secrets_out_of_the_build_context() -> None:
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "an allow-list: nothing goes in unless named"
    allowed = [line[1:] for line in lines if line.startswith("!")]
    assert not [a for a in allowed if a.startswith((".env", ".git", ".venv", "tests"))]
    assert {"pyproject.toml", "dispatcher/", "workers/"} <= set(allowed)


# -- running the stated commands ------------------------------------------------------


def _run(argv: list[str], env: Mapping[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, env=dict(env), cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def test_redis_command_and_healthcheck(tmp_path: Path) -> None:
    binary = find_redis_server()
    cli = str(Path(binary).with_name("redis-cli"))
    if not os.path.exists(cli):
        pytest.skip("no redis-cli beside redis-server")
    port = free_port()
    for password in ("", "s3cret pass"):
        data = tmp_path / f"data{len(password)}"
        data.mkdir()
        argv = command("redis", {"REDIS_PASSWORD": password} if password else {})
        argv = [binary, *(str(data) if a == "/data" else a for a in argv[1:])]
        argv += ["--port", str(port), "--bind", "127.0.0.1", "--daemonize", "no"]
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            auth = f":{quote(password)}@" if password else ""
            url = f"redis://{auth}127.0.0.1:{port}/0"
            client = redis.Redis.from_url(url, decode_responses=True)
            wait_for(partial(_pings, client), timeout=10, message="redis up")
            assert client.config_get("appendonly")["appendonly"] == "yes"
            assert client.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
            assert int(client.config_get("maxmemory")["maxmemory"] or 0) > 0
            client.close()
            test = service("redis")["healthcheck"]["test"]
            assert test[0] == "CMD-SHELL"
            script = interpolate(test[1], {}).replace("redis-cli", f"{cli} -p {port}")
            env = {"PATH": os.environ["PATH"], "REDIS_PASSWORD": password}
            assert _run(["sh", "-c", script], env, tmp_path).returncode == 0
            if password:
                # The healthcheck does not pass without the password (NOAUTH exits 0).
                env["REDIS_PASSWORD"] = ""
                assert _run(["sh", "-c", script], env, tmp_path).returncode != 0
        finally:
            proc.terminate()
            proc.wait(10)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


@pytest.fixture(scope="module")
def compose_simulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The demo profile's simulator, run with its compose command; yields host:port."""
    argv = command("simulator")
    port = free_port()
    argv[argv.index("--host") + 1] = "127.0.0.1"
    argv[argv.index("--port") + 1] = str(port)
    argv[0] = executable(argv[0])
    log = tmp_path_factory.mktemp("simulator") / "simulator.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, env=clean_env({}), stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(
            lambda: _listening(port) or proc.poll() is not None,
            timeout=20,
            message="simulator listening",
        )
        assert proc.poll() is None, log.read_text()
        yield f"127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_simulator_command_answers_http(compose_simulator: str, tmp_path: Path) -> None:
    reply = httpx.get(f"http://{compose_simulator}/agc/api.php", params={"function": "version"})
    assert reply.status_code == 200
    assert reply.text.startswith("VERSION:")
    # Its compose healthcheck, run the same way.
    test = service("simulator")["healthcheck"]["test"]
    assert test[0] == "CMD"
    argv = [
        executable(test[1]),
        *(a.replace("127.0.0.1:8088", compose_simulator) for a in test[2:]),
    ]
    assert _run(argv, clean_env({}), tmp_path).returncode == 0


@dataclasses.dataclass
class ComposeWorker(WorkerProcess):
    """A worker started with a command line taken verbatim from the deploy files."""

    argv: tuple[str, ...] = ()

    def command(self) -> list[str]:
        return [executable(self.argv[0]), *self.argv[1:]]


def test_worker_command_consumes_and_healthcheck_tells(
    redis_url: str, compose_simulator: str, tmp_path: Path
) -> None:
    redis_host = urlsplit(redis_url).netloc
    env = swap_hosts(compose_env("worker"), {"redis": redis_host, "simulator": compose_simulator})
    assert env["DISPATCHER_REDIS_URL"].startswith(f"redis://{redis_host}/")
    settings = Settings.from_mapping(env)
    health = [executable("dispatcher"), *dockerfile_exec("HEALTHCHECK")[1:]]

    # No worker yet: unhealthy.
    result = _run(health, clean_env(env), tmp_path)
    assert result.returncode != 0, result.stdout + result.stderr
    assert "heartbeat" in result.stderr

    argv = command("worker")
    assert argv == dockerfile_exec("CMD")
    worker = ComposeWorker(
        settings, tmp_path / "worker.log", name="celery", extra_env=env, argv=tuple(argv)
    )
    try:
        worker.start(timeout=30)
        # The image's HEALTHCHECK, in the worker's environment: healthy.
        result = _run(health, clean_env(env), tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "celery@" in result.stdout

        job_id = enqueue_lead(agent_user="1000", phone_number="7275551212", settings=settings)
        done = wait_for(
            lambda: (job_status(job_id, settings=settings) or {}).get("state") == "added",
            timeout=20,
            message="the lead added by the compose worker",
        )
        assert done
        assert job_status(job_id, settings=settings)["lead_id"]  # type: ignore[index]

        # Still healthy once it has done work (the fleet counters are filled in).
        result = _run(health, clean_env(env), tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr[-1500:]

        # Logs are JSON lines (docker logs), with the lead's events.
        events = [e.get("event") for e in worker.logs()]
        assert "lead.added" in events
    finally:
        code = worker.stop(timeout=60)
    assert code == 0, worker.tail()


def test_healthcheck_fails_when_redis_is_unreachable(tmp_path: Path) -> None:
    env = compose_env("worker")
    env["DISPATCHER_REDIS_URL"] = f"redis://127.0.0.1:{free_port()}/0"
    result = _run(
        [executable("dispatcher"), *dockerfile_exec("HEALTHCHECK")[1:]], clean_env(env), tmp_path
    )
    # Unhealthy (exit 1). The message is a redis-py traceback today: `dispatcher
    # health` pings outside dispatcher.store.connection.broker_errors.
    assert result.returncode == 1, result.stdout + result.stderr


def test_intake_command_serves_and_its_healthcheck_passes(redis_url: str, tmp_path: Path) -> None:
    svc = service("intake")
    assert "container_name" not in svc and svc["restart"] == "unless-stopped"
    assert svc["profiles"] == ["intake"]
    assert svc["depends_on"]["redis"]["condition"] == "service_healthy"
    port = free_port()
    env = swap_hosts(compose_env("intake"), {"redis": urlsplit(redis_url).netloc})
    env["DISPATCHER_INTAKE_TOKENS"] = "deploy-test-token"  # the operator's .env sets one
    argv = [a.replace("8000", str(port)).replace("0.0.0.0", "127.0.0.1") for a in command("intake")]
    process = subprocess.Popen(
        [executable(argv[0]), *argv[1:]],
        env=clean_env(env),
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while not _listening(port):
            assert process.poll() is None and time.monotonic() < deadline, "intake did not start"
            time.sleep(0.05)
        test = svc["healthcheck"]["test"]
        assert test[0] == "CMD"
        check = [executable(test[1]), *(a.replace("8000", str(port)) for a in test[2:])]
        assert _run(check, clean_env({}), tmp_path).returncode == 0
        reply = httpx.post(
            f"http://127.0.0.1:{port}/v1/leads",
            json={"agent_user": "1000", "phone_number": "7275551212"},
            headers={"Authorization": "Bearer deploy-test-token"},
        )
        assert reply.status_code == 202, reply.text
    finally:
        process.terminate()
        process.wait(15)
