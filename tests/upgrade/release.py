"""A previous release of the dispatcher, installed from its git commit, run beside this one.

``install_release("1c0038d", dest)`` takes the commit's tree with ``git archive``
(the repository's history is in every clone CI makes) and installs it into a venv
of its own, in one of two ways:

* ``shared`` (the default when it fits, about 0.3 s): a venv without pip whose
  ``.pth`` file puts the release's tree first and this venv's site-packages after
  it, so the old code runs on the libraries installed here. Used only when those
  libraries satisfy every requirement of the release's ``pyproject.toml`` (checked
  with ``packaging``, not assumed); this venv's own ``dispatcher`` (an editable
  install, a ``.pth`` hook) is not visible there, since the added directory's
  ``.pth`` files are not run.
* ``full`` (about 14 s here, more with a cold pip cache): ``pip install`` of the
  tree and its dependencies, as an operator would. Chosen when the shared libraries
  do not fit the release, or asked for with ``mode="full"``.

:class:`Release` runs that release's Python, CLI (``python -m dispatcher.cli``) and
workers (``python -m celery -A workers worker``) with an explicit environment: a
release refuses ``DISPATCHER_*`` variables it does not know, so nothing of this
process's environment leaks in.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import sysconfig
import tarfile
import time
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement

__all__ = ["ROOT", "Release", "ReleaseUnavailable", "ReleaseWorker", "install_release"]

ROOT = Path(__file__).resolve().parents[2]


class ReleaseUnavailable(RuntimeError):
    """The release cannot be installed here (no git, commit not in the clone, pip failed)."""


def _git(*args: str, repo: Path, stdout: Any = subprocess.PIPE) -> subprocess.CompletedProcess[Any]:
    try:
        return subprocess.run(
            ["git", *args], cwd=repo, stdout=stdout, stderr=subprocess.PIPE, check=True
        )
    except FileNotFoundError:
        raise ReleaseUnavailable(
            "git is not installed: the previous release comes from git"
        ) from None
    except subprocess.CalledProcessError as exc:
        detail = exc.stderr.decode(errors="replace").strip() if exc.stderr else ""
        raise ReleaseUnavailable(
            f"git {' '.join(args)} failed in {repo}: {detail} (a shallow clone lacks older "
            "commits: git fetch --unshallow)"
        ) from None


def unmet_requirements(tree: Path) -> list[str]:
    """The release's requirements that this interpreter's installed libraries miss."""
    project = tomllib.loads((tree / "pyproject.toml").read_text())["project"]
    problems = []
    for text in project.get("dependencies", []):
        requirement = Requirement(text)
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        try:
            have = metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            problems.append(f"{requirement}: not installed")
            continue
        if not requirement.specifier.contains(have, prereleases=True):
            problems.append(f"{requirement}: {have} installed")
    return problems


@dataclass
class Release:
    """One installed release: its commit, its tree, its venv's Python."""

    commit: str
    tree: Path
    python: Path
    mode: str
    #: seconds the installation took (0 when it was there already)
    install_s: float = 0.0

    def env(self, settings: Mapping[str, str]) -> dict[str, str]:
        """This process's environment without any DISPATCHER_* variable or venv, plus
        ``settings`` (the release's own variables, and e.g. its dialers' passwords)."""
        drop = ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")
        env = {
            k: v for k, v in os.environ.items() if not k.startswith("DISPATCHER_") and k not in drop
        }
        env["DISPATCHER_ENV_FILE"] = "/nonexistent"
        env["PYTHONPATH"] = str(self.tree)
        env.update(settings)
        return env

    def run(
        self,
        args: Sequence[str],
        *,
        settings: Mapping[str, str],
        input: str = "",
        timeout: float = 60.0,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """Run the release's Python with ``args`` (in its tree) to the end."""
        done = subprocess.run(
            [str(self.python), *args],
            cwd=self.tree,
            env=self.env(settings),
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and done.returncode != 0:
            raise RuntimeError(
                f"release {self.commit[:7]}: {' '.join(args)} -> exit {done.returncode}\n"
                f"stdout: {done.stdout[-2000:]}\nstderr: {done.stderr[-3000:]}"
            )
        return done

    def cli(
        self, *args: str, settings: Mapping[str, str], input: str = "", check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """``dispatcher ARGS`` of the release."""
        return self.run(
            ["-m", "dispatcher.cli", *args], settings=settings, input=input, check=check
        )

    def python_json(self, code: str, *, settings: Mapping[str, str], data: Any = None) -> Any:
        """Run ``code`` in the release's Python; ``data`` comes in as JSON on stdin (the
        variable ``data``), and what it prints last (JSON) comes back."""
        prologue = "import json, sys\ndata = json.loads(sys.stdin.read())\n"
        done = self.run(["-c", prologue + code], settings=settings, input=json.dumps(data))
        return json.loads(done.stdout.strip().splitlines()[-1])

    def worker(
        self,
        settings: Mapping[str, str],
        log_path: Path,
        *,
        name: str,
        concurrency: int = 4,
        pool: str = "threads",
    ) -> ReleaseWorker:
        return ReleaseWorker(self, dict(settings), log_path, name, concurrency, pool)


@dataclass
class ReleaseWorker:
    """A ``celery -A workers worker`` process of a release, started as an operator would."""

    release: Release
    settings: dict[str, str]
    log_path: Path
    name: str
    concurrency: int
    pool: str
    process: subprocess.Popen[bytes] | None = field(default=None)

    def start(self, *, wait: bool = True, timeout: float = 40.0) -> ReleaseWorker:
        command = [
            str(self.release.python),
            "-m",
            "celery",
            "-A",
            "workers",
            "worker",
            "--loglevel",
            "INFO",
            "--pool",
            self.pool,
            "--concurrency",
            str(self.concurrency),
            "--hostname",
            f"{self.name}@%h",
            "--without-gossip",
            "--without-mingle",
        ]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command,
                cwd=self.release.tree,
                env=self.release.env(self.settings),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 40.0) -> None:
        """Until Celery says the worker is ready (``NAME@host ready.``, any release)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"worker {self.name} exited:\n{self.tail()}")
            text = self.log_path.read_text(errors="replace")
            if any(f"{self.name}@" in line and " ready." in line for line in text.splitlines()):
                return
            time.sleep(0.05)
        raise TimeoutError(f"worker {self.name} not ready after {timeout}s:\n{self.tail()}")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stop(self, timeout: float = 40.0) -> int | None:
        """SIGTERM (Celery's warm shutdown), then wait; the exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL the whole process group, as a crash (or a host lost) would."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""

    def logs(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    out.append(json.loads(line))
        return out


def _site_packages() -> list[str]:
    paths = sysconfig.get_paths()
    return list(dict.fromkeys([paths["purelib"], paths["platlib"]]))


def install_release(commit: str, dest: Path, *, mode: str = "auto", repo: Path = ROOT) -> Release:
    """Install the release at ``commit`` under ``dest`` (reused when it is there already).

    ``mode``: ``auto`` (shared libraries when they satisfy the release, else full),
    ``shared`` or ``full``. Raises ReleaseUnavailable when it cannot be done.
    """
    started = time.monotonic()
    sha = _git("rev-parse", "--verify", f"{commit}^{{commit}}", repo=repo).stdout.decode().strip()
    tree = dest / "tree"
    venv = dest / "venv"
    python = venv / "bin" / "python"
    marker = dest / "installed.json"
    if marker.exists():
        done = json.loads(marker.read_text())
        if done["commit"] == sha and python.exists():
            return Release(sha, tree, python, done["mode"])
    dest.mkdir(parents=True, exist_ok=True)
    if not (tree / "pyproject.toml").exists():
        archive = _git("archive", "--format=tar", sha, repo=repo).stdout
        tree.mkdir(exist_ok=True)
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(tree, filter="data")
    unmet = unmet_requirements(tree)
    if mode == "auto":
        mode = "full" if unmet else "shared"
    if mode == "shared" and unmet:
        raise ReleaseUnavailable(
            f"release {sha[:7]} needs what this venv lacks: {'; '.join(unmet)} (use mode='full')"
        )
    try:
        subprocess.run(
            [sys.executable, "-m", "venv", *(["--without-pip"] if mode == "shared" else []), venv],
            check=True,
            capture_output=True,
        )
        if mode == "shared":
            # The venv's own site-packages: where its .pth files are read from.
            site = subprocess.run(
                [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                check=True,
                capture_output=True,
                text=True,
            ).stdout.strip()
            lines = [str(tree), *_site_packages()]
            Path(site, "_dispatcher_release.pth").write_text("\n".join(lines) + "\n")
        else:
            subprocess.run(
                [python, "-m", "pip", "install", "--quiet", str(tree)],
                check=True,
                capture_output=True,
                timeout=900,
            )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        detail = (getattr(exc, "stderr", b"") or b"").decode(errors="replace")[-2000:]
        raise ReleaseUnavailable(
            f"could not install release {sha[:7]} ({mode}): {detail}"
        ) from None
    # The release's own code must be what its Python imports.
    probe = subprocess.run(
        [python, "-c", "import dispatcher, workers, celery; print(dispatcher.__file__)"],
        cwd=tree,
        env={k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")},
        capture_output=True,
        text=True,
    )
    where = probe.stdout.strip()
    if probe.returncode != 0 or not (where.startswith(str(tree)) or where.startswith(str(venv))):
        raise ReleaseUnavailable(
            f"release {sha[:7]} installed but imports {where or probe.stderr[-1000:]!r}"
        )
    marker.write_text(json.dumps({"commit": sha, "mode": mode}))
    return Release(sha, tree, python, mode, install_s=time.monotonic() - started)
