"""The operator console in a real browser: headless Chromium (Debian's) through chromedriver.

Everything is real: ``dispatcher serve`` serves the console as a
subprocess, a ``celery worker`` process calls the VICIdial simulator, and
Chromium clicks through the pages as an operator would: log in, see on the
overview that reconciliation's look-ups are not permitted and why, filter the dead
letters (reason, dialer, phone), open one, replay it, and watch the job become
``added``; then fix the permission, reconcile the ambiguous letter and watch its
job become ``added`` with the lead VICIdial already had. A viewer sees no action
and a POST from their browser is refused; logging out ends the session.
The test also takes the screenshots of docs/ (written there only with
``UPDATE_CONSOLE_SCREENSHOTS=1``, so that a test run leaves the checkout as it was).

Chromium cannot be downloaded by a Python package here: the test uses
``/usr/bin/chromium`` and ``/usr/bin/chromedriver`` (``apt-get install chromium
chromium-driver``; ``.ci/run`` does it) and is skipped, saying so, without them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from dispatcher.config.settings import Settings
from dispatcher.devtools.localfleet import WorkerProcess, settings_env
from dispatcher.devtools.redis_server import free_port
from dispatcher.ops.producer import enqueue_lead, job_status
from dispatcher.simulator import Simulator
from dispatcher.store.backend import get_backend
from dispatcher.store.deadletter import DeadLetterStore
from dispatcher.store.users import UserStore
from tests.support.settings import ROOT, make_settings
from tests.support.waiting import wait_for

pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get("DISPATCHER_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
OPERATOR = ("olivia", "olivia-password-1")
VIEWER = ("victor", "victor-password-1")
DOCS = ROOT / "docs"
#: Where the screenshots go: docs/ when asked to update them, else the test's own folder.
UPDATE_SCREENSHOTS = os.environ.get("UPDATE_CONSOLE_SCREENSHOTS") == "1"


def _browser_missing() -> str | None:
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        return (
            f"no Chromium here ({CHROMIUM}, {CHROMEDRIVER} missing): "
            "apt-get install chromium chromium-driver to run the console's browser tests"
        )
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    return None


@pytest.fixture
def browser_factory(tmp_path: Path) -> Iterator[Callable[[], Any]]:
    missing = _browser_missing()
    if missing:
        pytest.skip(missing)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    drivers: list[Any] = []

    def make() -> Any:
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for arg in (
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1280,1000",
            f"--user-data-dir={tmp_path / f'chromium-{len(drivers)}'}",
        ):
            options.add_argument(arg)
        driver = webdriver.Chrome(
            service=Service(executable_path=CHROMEDRIVER, log_output=str(tmp_path / "driver.log")),
            options=options,
        )
        driver.set_page_load_timeout(30)
        drivers.append(driver)
        return driver

    yield make
    for driver in drivers:
        driver.quit()


@pytest.fixture
def console_server(
    redis_url: str, simulator: Simulator, tmp_path: Path
) -> Iterator[tuple[str, Settings, Path]]:
    settings = make_settings(redis_url, simulator, intake_tokens=("tok-browser-0123456789abcdef",))
    port = free_port()
    log_path = tmp_path / "serve.log"
    env = {**os.environ, **settings_env(settings), "DISPATCHER_LOG_FORMAT": "json"}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dispatcher.cli",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            assert proc.poll() is None, log_path.read_text()
            return False

    try:
        wait_for(healthy, timeout=30, message="dispatcher serve to answer")
        yield base, settings, log_path
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)


def _events(log_path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in log_path.read_text().splitlines() if x.startswith("{")]


def _navigate(driver: Any, element: Any) -> None:
    """Click what loads another page, and wait for it: a click returns before the next
    page is there, and a look-up at once would read the old one."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.wait import WebDriverWait

    old = driver.find_element(By.TAG_NAME, "html")
    try:
        element.click()
    except WebDriverException as exc:
        # chromedriver's own look at the node after the click can meet the next page
        # already ("Node with given id does not belong to the document"): the click
        # happened. Anything else is a failure; so is a page that never changes (below).
        if "does not belong to the document" not in str(exc):
            raise
    WebDriverWait(driver, 20).until(expected_conditions.staleness_of(old))
    WebDriverWait(driver, 20).until(
        lambda d: d.execute_script("return document.readyState") == "complete"
    )


def _log_in(driver: Any, base: str, who: tuple[str, str]) -> None:
    from selenium.webdriver.common.by import By

    driver.get(f"{base}/ui/")
    assert driver.current_url.startswith(f"{base}/ui/login")
    driver.find_element(By.ID, "username").send_keys(who[0])
    driver.find_element(By.ID, "password").send_keys(who[1])
    _navigate(driver, driver.find_element(By.CSS_SELECTOR, "form button[type=submit]"))
    wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "header.top"), message="logged in")


def test_operator_replays_a_dead_letter_in_the_browser_and_a_viewer_cannot(
    console_server: tuple[str, Settings, Path],
    simulator: Simulator,
    start_worker: Callable[..., WorkerProcess],
    browser_factory: Callable[[], Any],
    tmp_path: Path,
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    base, settings, log_path = console_server
    users = UserStore(get_backend(settings))
    users.add(OPERATOR[0], role="operator", password=OPERATOR[1])
    users.add(VIEWER[0], role="viewer", password=VIEWER[1])

    # Dead letters made the real way: agent 1003 is on a campaign VICIdial has no row for,
    # and 7275550000 is on the system DNC list. The call for 7275556666 adds the lead but
    # its answer is lost (connection reset), and the API user may not look leads up (no
    # View Reports): an ambiguous letter.
    simulator.update_user("6666", view_reports=False)
    simulator.script_phone("7275556666", ["reset_after"])
    start_worker(settings)
    phones = ["7275554444", "7275552222", "7275553333"]
    jobs = {p: enqueue_lead(agent_user="1003", phone_number=p, settings=settings) for p in phones}
    dnc_job = enqueue_lead(agent_user="1000", phone_number="7275550000", settings=settings)
    amb_job = enqueue_lead(agent_user="1000", phone_number="7275556666", settings=settings)
    store = DeadLetterStore(get_backend(settings))
    wait_for(lambda: len(store) == 5, timeout=30, message="five dead letters")
    assert store.counts().get("ambiguous") == 1
    # The operator fixes the cause in VICIdial: the campaign exists, with a manual dial list.
    simulator.set_manual_dial_list("GHOST", "103")

    driver = browser_factory()
    _log_in(driver, base, OPERATOR)
    assert driver.find_element(By.TAG_NAME, "h1").text == "Overview"
    body = driver.find_element(By.TAG_NAME, "body").text
    assert "manual_list_undefined" in body and "dnc" in body
    # Reconciliation's look-ups: not permitted, and what to fix.
    lookups = driver.find_element(By.ID, "lookups").text
    assert "NOT permitted" in lookups and "View Reports" in lookups, lookups
    [dialer] = driver.find_elements(By.CSS_SELECTOR, "#dialers tbody tr")
    assert dialer.text.startswith("default 0 0") and "running" in dialer.text, dialer.text
    shots = DOCS if UPDATE_SCREENSHOTS else tmp_path
    driver.save_screenshot(str(shots / "console-overview.png"))

    # The dead-letter list: every letter, phones masked.
    _navigate(driver, driver.find_element(By.LINK_TEXT, "Dead letters"))
    rows = driver.find_elements(By.CSS_SELECTOR, "#letters tbody tr")
    assert len(rows) == 5
    text = driver.find_element(By.ID, "letters").text
    assert "******2222" in text and "7275552222" not in text
    driver.save_screenshot(str(shots / "console-dead-letters.png"))
    # The one script (select all on the page) runs under the page's CSP nonce.
    driver.find_element(By.ID, "select-all").click()
    assert all(b.is_selected() for b in driver.find_elements(By.CSS_SELECTOR, "input[name=id]"))
    driver.find_element(By.ID, "select-all").click()

    # Filter: the reason, the dialer and the last digits of the phone.
    Select(driver.find_element(By.ID, "f-reason")).select_by_value("manual_list_undefined")
    Select(driver.find_element(By.ID, "f-dialer")).select_by_value("default")
    driver.find_element(By.ID, "f-phone4").send_keys("2222")
    _navigate(driver, driver.find_element(By.CSS_SELECTOR, "form.filters button[type=submit]"))
    rows = driver.find_elements(By.CSS_SELECTOR, "#letters tbody tr")
    assert len(rows) == 1 and "******2222" in rows[0].text and "default" in rows[0].text
    assert "dialer=default" in driver.current_url

    # Open it: the whole job, then replay it.
    _navigate(driver, rows[0].find_element(By.TAG_NAME, "a"))
    assert jobs["7275552222"] in driver.find_element(By.TAG_NAME, "h1").text
    assert "7275552222" in driver.find_element(By.TAG_NAME, "pre").text
    _navigate(driver, driver.find_element(By.XPATH, "//button[normalize-space()='Replay']"))
    flash = wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, ".flash"), message="a message")
    assert "Replayed 1" in flash[0].text, driver.page_source

    def added() -> bool:
        driver.refresh()
        return driver.find_element(By.ID, "job-state").text == "added"

    wait_for(added, timeout=30, interval=0.3, message="the replayed job to be added")
    assert simulator.count_by_phone().get("7275552222") == 1
    assert job_status(jobs["7275552222"], settings=settings)["state"] == "added"
    assert store.get(jobs["7275554444"]) is not None  # the others are untouched
    assert store.get(dnc_job) is not None

    # The operator gives the API user View Reports, then reconciles the ambiguous letter:
    # the workers find the lead the lost call added, and nothing is called again.
    simulator.update_user("6666", view_reports=True)
    calls = simulator.call_count
    driver.get(f"{base}/ui/dead-letters/{amb_job}")
    assert "NOT permitted" in driver.find_element(By.ID, "reconcile-help").text
    _navigate(driver, driver.find_element(By.XPATH, "//button[normalize-space()='Reconcile']"))
    flash = wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, ".flash"), message="a message")
    assert "Handed 1 letter(s) to the workers" in flash[0].text, driver.page_source
    wait_for(added, timeout=30, interval=0.3, message="the reconciled job to be added")
    state = job_status(amb_job, settings=settings)
    assert state["reconcile"] == "found" and state["lead_id"]
    assert "found in VICIdial" in driver.find_element(By.TAG_NAME, "main").text
    assert simulator.count_by_phone().get("7275556666") == 1
    assert simulator.call_count == calls  # looked up, not called again

    # A viewer: no action buttons, and a POST from their browser is refused.
    viewer = browser_factory()
    _log_in(viewer, base, VIEWER)
    viewer.get(f"{base}/ui/dead-letters")
    assert len(viewer.find_elements(By.CSS_SELECTOR, "#letters tbody tr")) == 3
    assert not viewer.find_elements(By.CSS_SELECTOR, "input[name=id]")
    assert not [b for b in viewer.find_elements(By.TAG_NAME, "button") if "Replay" in b.text]
    viewer.get(f"{base}/ui/dead-letters/{jobs['7275554444']}")
    assert not [b for b in viewer.find_elements(By.TAG_NAME, "button") if "Replay" in b.text]
    csrf = viewer.find_element(By.CSS_SELECTOR, "input[name=csrf]").get_attribute("value")
    # The form an operator's page would hold, built in the viewer's page and submitted.
    viewer.execute_script(
        """
        const f = document.createElement('form');
        f.method = 'post'; f.action = arguments[0];
        for (const [k, v] of Object.entries(arguments[1])) {
          const i = document.createElement('input'); i.type = 'hidden'; i.name = k; i.value = v;
          f.appendChild(i);
        }
        document.body.appendChild(f); f.submit();
        """,
        f"{base}/ui/dead-letters/replay",
        {"csrf": csrf, "scope": "selected", "id": jobs["7275554444"], "confirm": "yes"},
    )
    wait_for(lambda: viewer.find_element(By.TAG_NAME, "h1").text == "Not allowed")
    assert store.get(jobs["7275554444"]) is not None

    # Logging out ends the session: the old cookie opens nothing any more.
    cookie = driver.get_cookie("dispatcher_console")
    assert cookie and cookie["httpOnly"] and cookie["path"] == "/ui"
    _navigate(driver, driver.find_element(By.XPATH, "//button[normalize-space()='Log out']"))
    wait_for(lambda: "/ui/login" in driver.current_url, message="the login page")
    driver.get(f"{base}/ui/dead-letters")
    assert driver.current_url.startswith(f"{base}/ui/login")
    stolen = httpx.get(
        f"{base}/ui/", cookies={"dispatcher_console": cookie["value"]}, follow_redirects=False
    )
    assert stolen.status_code == 303 and stolen.headers["location"] == "/ui/login"

    # Every action is a console.<action> event with the user; no phone, no password.
    events = _events(log_path)
    named = {(e["event"], e.get("user")) for e in events}
    assert {
        ("console.login", "olivia"),
        ("console.replay", "olivia"),
        ("console.reconcile", "olivia"),
        ("console.login", "victor"),
        ("console.forbidden", "victor"),
        ("console.logout", "olivia"),
    } <= named
    text = log_path.read_text()
    for secret in (OPERATOR[1], VIEWER[1], "7275552222", "7275556666", cookie["value"], csrf):
        assert secret not in text
    replay = next(e for e in events if e["event"] == "console.replay")
    assert replay["replayed"] == 1 and replay["ids"] == 1


def test_screenshots_are_in_docs() -> None:
    """The browser test above takes them (UPDATE_CONSOLE_SCREENSHOTS=1 writes them
    here); they are committed for the README."""
    for name in ("console-overview.png", "console-dead-letters.png"):
        data = (DOCS / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, name
    assert re.search(r"docs/console-overview\.png", (ROOT / "README.md").read_text())


def test_operator_forgets_a_phone_in_the_browser_after_seeing_what_goes(
    console_server: tuple[str, Settings, Path],
    start_worker: Callable[..., WorkerProcess],
    browser_factory: Callable[[], Any],
) -> None:
    """An erasure request from the console: the counts first, then the erasure, logged
    with the operator's name; a viewer has neither the page nor the action."""
    from selenium.webdriver.common.by import By

    base, settings, log_path = console_server
    users = UserStore(get_backend(settings))
    users.add(OPERATOR[0], role="operator", password=OPERATOR[1])
    users.add(VIEWER[0], role="viewer", password=VIEWER[1])
    start_worker(settings)
    dnc_job = enqueue_lead(
        agent_user="1000", phone_number="7275550000", idempotency_key="form-77", settings=settings
    )
    kept = enqueue_lead(agent_user="1000", phone_number="7275551234", settings=settings)
    store = DeadLetterStore(get_backend(settings))
    wait_for(lambda: store.get(dnc_job) is not None, timeout=30, message="the DNC letter")
    wait_for(lambda: (job_status(kept, settings=settings) or {}).get("state") == "added")

    driver = browser_factory()
    _log_in(driver, base, OPERATOR)
    _navigate(driver, driver.find_element(By.LINK_TEXT, "Forget a phone"))
    wait_for(
        lambda: driver.find_element(By.TAG_NAME, "h1").text == "Forget a phone number",
        message="the forget page",
    )
    driver.find_element(By.ID, "forget-phone").send_keys("not a phone")
    _navigate(driver, driver.find_element(By.CSS_SELECTOR, "#forget-form button[type=submit]"))
    # A click that submits a form returns before the next page is there: wait for it.
    error = wait_for(lambda: driver.find_elements(By.ID, "forget-error"), message="the error")
    assert "phone:" in error[0].text
    driver.find_element(By.ID, "forget-phone").clear()
    driver.find_element(By.ID, "forget-phone").send_keys("(727) 555-0000")
    _navigate(driver, driver.find_element(By.CSS_SELECTOR, "#forget-form button[type=submit]"))
    # The confirmation page: what would go, counts by kind; nothing gone yet.
    preview = wait_for(
        lambda: driver.find_elements(By.ID, "forget-preview"), message="the preview"
    )[0].text
    assert "******0000" in preview and "7275550000" not in preview
    rows = {
        r.find_elements(By.TAG_NAME, "td")[0].text: r.find_elements(By.TAG_NAME, "td")[1].text
        for r in driver.find_elements(By.CSS_SELECTOR, "#forget-preview tbody tr")
    }
    assert rows["dead letters"] == "1" and rows["job states"] == "1", rows
    assert rows["idempotency records"] == "1", rows
    assert store.get(dnc_job) is not None
    _navigate(
        driver,
        driver.find_element(By.XPATH, "//button[normalize-space()='Erase all of it for good']"),
    )
    flash = wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, ".flash"), message="a message")
    assert "Forgot ******0000" in flash[0].text and "VICIdial's to erase" in flash[0].text
    assert store.get(dnc_job) is None and job_status(dnc_job, settings=settings) is None
    assert (job_status(kept, settings=settings) or {}).get("state") == "added"

    # A viewer: no link, and the page and the action are refused.
    viewer = browser_factory()
    _log_in(viewer, base, VIEWER)
    assert not viewer.find_elements(By.LINK_TEXT, "Forget a phone")
    viewer.get(f"{base}/ui/forget")
    assert viewer.find_element(By.TAG_NAME, "h1").text == "Not allowed"

    events = _events(log_path)
    (forgot,) = [e for e in events if e["event"] == "console.forget"]
    assert forgot["user"] == "olivia" and forgot["phone"] == "******0000"
    assert forgot["dead_letters"] == 1 and forgot["job_states"] == 1
    assert any(e["event"] == "data.forgotten" and e.get("operator") == "olivia" for e in events)
    assert "7275550000" not in log_path.read_text()
