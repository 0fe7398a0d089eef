"""Fault injection, run-time changes and HTTP behaviour of the simulator."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from dispatcher.simulator import FAULT_KINDS, Simulator, SimulatorState

BASE = {
    "source": "test",
    "user": "6666",
    "pass": "1234",
    "function": "external_add_lead",
    "agent_user": "1000",
    "phone_code": "1",
}


def lead(phone: str = "7275551212", **extra: str) -> dict[str, str]:
    return {**BASE, "value": phone, **extra}


def success(lead_id: int, phone: str = "7275551212") -> str:
    return f"SUCCESS: lead added - {phone}|TESTCAMP|101|{lead_id}|1000\n"


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(SimulatorState.demo(), seed=7, stall_s=5.0) as simulator:
        yield simulator


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=5) as http:
        yield http


# ------------------------------------------------------------------- scripts


def test_scripted_phone_fails_twice_then_succeeds(sim: Simulator, client: httpx.Client) -> None:
    sim.script_phone("(727) 555-1212", ["http_503", "http_503"])
    statuses = [client.get(sim.url, params=lead()).status_code for _ in range(3)]
    assert statuses == [503, 503, 200]
    assert [r.fault for r in sim.requests] == ["http_503", "http_503", None]
    assert [r.processed for r in sim.requests] == [False, False, True]
    assert sim.count_by_phone() == {"7275551212": 1}
    # Other numbers were never affected.
    assert client.get(sim.url, params=lead("8135550000")).status_code == 200


def test_script_entries_can_be_normal_answers(sim: Simulator, client: httpx.Client) -> None:
    sim.script_phone("7275551212", ["ok", "http_500", None, "insert_failed"])
    texts = [client.get(sim.url, params=lead()).text for _ in range(5)]
    assert texts == [
        success(1),
        "",
        success(2),
        "ERROR: lead insertion failed - 7275551212|TESTCAMP|101|1000\n",
        success(3),
    ]


def test_scripted_call_numbers(sim: Simulator, client: httpx.Client) -> None:
    sim.script_calls({2: "http_500", 4: "http_429"})
    replies = [client.get(sim.url, params=lead()) for _ in range(5)]
    assert [r.status_code for r in replies] == [200, 500, 200, 429, 200]
    assert replies[1].content == b""
    assert replies[3].headers["retry-after"] == "1"
    assert [r.fault for r in sim.requests] == [None, "http_500", None, "http_429", None]
    assert len(sim.leads) == 3


def test_unknown_fault_kind_is_rejected(sim: Simulator) -> None:
    with pytest.raises(ValueError, match="unknown fault kind 'http_999'"):
        sim.script_calls({1: "http_999"})
    with pytest.raises(ValueError, match="between 0 and 1"):
        sim.set_failure_rate(1.5)
    with pytest.raises(ValueError, match="unknown fault kind"):
        sim.set_outage("down")


# ------------------------------------------------------- rate, outage, kinds


def _fault_sequence(seed: int, calls: int) -> list[str | None]:
    with Simulator(seed=seed) as sim, httpx.Client(timeout=5) as http:
        sim.set_failure_rate(0.3, kind=["http_502", "http_503", "empty"])
        for _ in range(calls):
            http.get(sim.url, params={"function": "version"})
        return [record.fault for record in sim.requests]


def test_failure_rate_is_seeded_and_roughly_right() -> None:
    first = _fault_sequence(seed=42, calls=200)
    assert first == _fault_sequence(seed=42, calls=200)
    assert first != _fault_sequence(seed=43, calls=200)
    failed = sum(fault is not None for fault in first)
    assert 35 <= failed <= 85  # 0.3 of 200, generous bounds
    assert {fault for fault in first if fault} == {"http_502", "http_503", "empty"}


def test_failure_rate_extremes(sim: Simulator, client: httpx.Client) -> None:
    sim.set_failure_rate(1.0, kind="http_504")
    assert {client.get(sim.url, params=lead()).status_code for _ in range(5)} == {504}
    sim.set_failure_rate(0.0)
    assert client.get(sim.url, params=lead()).text == success(1)


def test_outage_on_and_off(sim: Simulator, client: httpx.Client) -> None:
    sim.set_outage("http_502")
    version = client.get(sim.url, params={"function": "version"})
    assert version.status_code == 502
    assert "502 Bad Gateway" in version.text
    assert client.get(sim.url, params=lead()).status_code == 502
    sim.set_outage(None)
    assert client.get(sim.url, params=lead()).text == success(1)
    assert len(sim.leads) == 1


def test_reset_before_processing_inserts_nothing(sim: Simulator, client: httpx.Client) -> None:
    sim.script_calls({1: "reset"})
    with pytest.raises(httpx.TransportError):
        client.get(sim.url, params=lead())
    assert sim.leads == []
    (record,) = sim.requests
    assert (record.status, record.fault, record.processed) == (0, "reset", False)
    assert client.get(sim.url, params=lead()).text == success(1)


def test_reset_after_processing_inserts_the_lead(sim: Simulator, client: httpx.Client) -> None:
    sim.script_calls({1: "reset_after"})
    with pytest.raises(httpx.TransportError):
        client.get(sim.url, params=lead())
    assert [lead.lead_id for lead in sim.leads] == [1]
    (record,) = sim.requests
    assert (record.status, record.fault, record.processed, record.lead_id) == (
        0,
        "reset_after",
        True,
        1,
    )


def test_stall_makes_the_client_time_out(sim: Simulator) -> None:
    sim.set_outage("stall")
    with httpx.Client(timeout=0.3) as impatient:
        started = time.monotonic()
        with pytest.raises(httpx.ReadTimeout):
            impatient.get(sim.url, params=lead())
        assert time.monotonic() - started < 2
    assert sim.leads == []


def test_stall_after_inserts_then_times_out(sim: Simulator) -> None:
    sim.set_outage("stall_after")
    with httpx.Client(timeout=0.3) as impatient, pytest.raises(httpx.ReadTimeout):
        impatient.get(sim.url, params=lead())
    assert len(sim.leads) == 1


def test_stall_ends_by_closing_and_stop_does_not_wait_for_it() -> None:
    sim = Simulator(stall_s=0.2).start()
    sim.set_outage("stall")
    with httpx.Client(timeout=3) as http, pytest.raises(httpx.RemoteProtocolError):
        http.get(sim.url, params=lead())  # closed without an answer after 0.2 s
    sim.set_stall_seconds(30)
    hold = threading.Thread(target=_swallow, args=(sim.url,), daemon=True)
    hold.start()
    time.sleep(0.2)
    started = time.monotonic()
    sim.stop()
    assert time.monotonic() - started < 3


def _swallow(url: str) -> None:
    with contextlib.suppress(httpx.HTTPError):
        httpx.get(url, params=lead(), timeout=10)


def test_html_empty_and_warning_bodies(sim: Simulator, client: httpx.Client) -> None:
    sim.script_calls({1: "html", 2: "empty", 3: "html_warning"})
    html = client.get(sim.url, params=lead())
    assert html.status_code == 200 and html.text.startswith("<!DOCTYPE html>")
    assert "SUCCESS" not in html.text and "ERROR:" not in html.text
    empty = client.get(sim.url, params=lead())
    assert (empty.status_code, empty.content) == (200, b"")
    assert sim.leads == []
    warned = client.get(sim.url, params=lead())
    assert warned.text.startswith("<br />\n<b>Warning</b>")
    assert warned.text.endswith("\n" + success(1))
    assert len(sim.leads) == 1


@pytest.mark.parametrize("kind", FAULT_KINDS)
def test_every_kind_is_recorded(kind: str) -> None:
    with Simulator(stall_s=0.05) as sim, httpx.Client(timeout=2) as http:
        sim.script_calls({1: kind})
        with contextlib.suppress(httpx.TransportError):
            if kind == "drip_after":  # the head is enough: the body takes 15 s
                with http.stream("GET", sim.url, params=lead()) as reply:
                    assert reply.status_code == 200
            else:
                http.get(sim.url, params=lead())
        (record,) = sim.requests
        assert record.fault == kind
        inserted = kind in (
            "reset_after",
            "stall_after",
            "html_warning",
            "drip_after",
            "http_504_after",
            "hold_insert",  # after the (short) stall: a request stuck in PHP, then inserted
        )
        assert len(sim.leads) == (1 if inserted else 0)


def test_drip_flood_and_sql_page(sim: Simulator, client: httpx.Client) -> None:
    sim.script_calls({1: "drip_after", 2: "flood", 3: "http_500_sql"})
    with client.stream("GET", sim.url, params=lead()) as reply:
        started = time.monotonic()
        chunks = reply.iter_bytes()
        first = next(chunks)
        second = next(chunks)
        assert first + second == b"SU"  # one byte at a time
        assert time.monotonic() - started >= 0.5
    assert len(sim.leads) == 1  # inserted before the answer started
    flood = client.get(sim.url, params=lead())
    assert flood.status_code == 200 and len(flood.content) >= 2 * 1024 * 1024
    assert "SUCCESS" not in flood.text and "ERROR" not in flood.text
    page = client.get(sim.url, params=lead())
    assert page.status_code == 500 and "pass='1234'" in page.text
    assert "pass='***'" in sim.requests[2].body and "1234" not in sim.requests[2].body
    assert len(sim.leads) == 1


# ------------------------------------------------------------------- latency


def test_fixed_latency(sim: Simulator, client: httpx.Client) -> None:
    sim.set_latency(150)
    started = time.monotonic()
    assert client.get(sim.url, params=lead()).text == success(1)
    assert time.monotonic() - started >= 0.14


def _timed_calls(sim: Simulator, count: int) -> tuple[list[float], float]:
    """Make ``count`` concurrent calls; return each call's duration and the total."""
    durations: list[float] = []

    def one() -> None:
        started = time.monotonic()
        httpx.get(sim.url, params={"function": "version"}, timeout=5)
        durations.append(time.monotonic() - started)

    threads = [threading.Thread(target=one) for _ in range(count)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return durations, time.monotonic() - started


def test_random_latency_within_bounds(sim: Simulator) -> None:
    sim.set_latency(50, max_ms=120)
    durations, _ = _timed_calls(sim, 6)
    assert all(0.045 <= d < 2.0 for d in durations)  # generous: a loaded machine


def test_latency_does_not_serialise_the_server(sim: Simulator) -> None:
    # Long enough that a loaded machine's scheduling delays (tenths of a second) cannot
    # blur the difference: one after the other, the 8 calls take at least 8 s.
    sim.set_latency(1000)
    durations, total = _timed_calls(sim, 8)
    assert all(d >= 0.99 for d in durations)
    assert total < 4.0, f"8 calls of 1 s took {total:.1f} s: the server serialises them"


def test_clear_faults(sim: Simulator, client: httpx.Client) -> None:
    sim.set_latency(500)
    sim.set_outage("http_500")
    sim.script_phone("7275551212", ["reset"])
    sim.clear_faults()
    started = time.monotonic()
    assert client.get(sim.url, params=lead()).text == success(1)
    assert time.monotonic() - started < 0.4


# --------------------------------------------------------- run-time changes


def test_login_and_logout_at_run_time(sim: Simulator, client: httpx.Client) -> None:
    agent = {**lead(), "agent_user": "2000"}
    assert client.get(sim.url, params=agent).text == "ERROR: agent_user is not logged in - 2000\n"
    sim.login("2000", "TESTCAMP")
    assert client.get(sim.url, params=agent).text == (
        "SUCCESS: lead added - 7275551212|TESTCAMP|101|1|2000\n"
    )
    sim.logout("2000")
    assert client.get(sim.url, params=agent).text == "ERROR: agent_user is not logged in - 2000\n"


def test_campaign_changes_at_run_time(sim: Simulator, client: httpx.Client) -> None:
    sim.set_manual_dial_list("TESTCAMP", None)
    assert client.get(sim.url, params=lead()).text == (
        "SUCCESS: lead added - 7275551212|TESTCAMP||1|1000\n"
    )
    sim.remove_campaign("TESTCAMP")
    assert client.get(sim.url, params=lead()).text == (
        "ERROR: campaign manual dial list undefined - 7275551212||1000\n"
    )
    sim.set_manual_dial_list("TESTCAMP", "555")
    assert client.get(sim.url, params=lead()).text == (
        "SUCCESS: lead added - 7275551212|TESTCAMP|555|2|1000\n"
    )


def test_dnc_changes_at_run_time(sim: Simulator, client: httpx.Client) -> None:
    checks = {"dnc_check": "YES", "campaign_dnc_check": "YES"}
    sim.add_dnc("8135550000")
    sim.add_campaign_dnc("TESTCAMP", "8135550000")
    assert client.get(sim.url, params=lead("8135550000", **checks)).text == (
        "ERROR: add_lead PHONE NUMBER IN DNC - 8135550000|1000\n"
        "ERROR: add_lead PHONE NUMBER IN CAMPAIGN DNC - 8135550000|TESTCAMP|1000\n"
    )
    sim.remove_dnc("8135550000")
    sim.remove_campaign_dnc("TESTCAMP", "8135550000")
    assert client.get(sim.url, params=lead("8135550000", **checks)).text == success(1, "8135550000")


def test_password_and_api_switch_at_run_time(sim: Simulator, client: httpx.Client) -> None:
    sim.set_password("6666", "newpass")
    assert "|6666|1234|0|1|BAD|" in client.get(sim.url, params=lead()).text
    assert client.get(sim.url, params={**lead(), "pass": "newpass"}).text == success(1)
    sim.set_api_active(False)
    assert client.get(sim.url, params={**lead(), "pass": "newpass"}).text == (
        "ERROR: System API NOT ACTIVE\n"
    )
    with pytest.raises(KeyError):
        sim.set_password("nobody", "x")


def test_reset_leads_and_reset(sim: Simulator, client: httpx.Client) -> None:
    client.get(sim.url, params=lead())
    sim.reset_leads()
    assert sim.leads == []
    assert client.get(sim.url, params=lead()).text == success(1)
    sim.set_outage("http_500")
    sim.logout("1000")
    client.get(sim.url, params={**lead(), "pass": "bad"})
    sim.reset()
    assert (sim.leads, sim.requests, sim.call_count) == ([], [], 0)
    assert sim.failed_logins("6666") == 0
    assert client.get(sim.url, params=lead()).text == success(1)


# ------------------------------------------------------------ HTTP behaviour


def _raw(sim: Simulator, data: bytes, expect_responses: int) -> bytes:
    with socket.create_connection((sim.host, sim.port), timeout=3) as sock:
        sock.sendall(data)
        received = b""
        while received.count(b"HTTP/1.1 ") < expect_responses or not received.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
        return received


def test_keep_alive_and_pipelining(sim: Simulator) -> None:
    one = b"GET /agc/api.php?function=version HTTP/1.1\r\nHost: x\r\n\r\n"
    received = _raw(sim, one * 3, 3)
    assert received.count(b"HTTP/1.1 200 OK") == 3
    assert b"Connection: keep-alive" in received
    assert sim.call_count == 3


def test_http10_closes_and_expect_continue_and_chunked(sim: Simulator) -> None:
    closed = _raw(sim, b"GET /agc/api.php?function=version HTTP/1.0\r\n\r\n", 1)
    assert b"Connection: close" in closed
    body = "&".join(f"{k}={v}" for k, v in lead().items()).encode()
    head = (
        "POST /agc/api.php HTTP/1.1\r\nHost: x\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\n"
        f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n"
    ).encode()
    continued = _raw(sim, head + body, 2)
    assert continued.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK")
    assert continued.endswith(success(1).encode())
    chunked_head = (
        b"POST /agc/api.php HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\n\r\n"
    )
    chunks = f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
    assert _raw(sim, chunked_head + chunks, 1).endswith(success(2).encode())


def test_malformed_request_gets_400(sim: Simulator) -> None:
    assert _raw(sim, b"NONSENSE\r\n\r\n", 1).startswith(b"HTTP/1.1 400 Bad Request")


def test_concurrent_clients_get_unique_lead_ids(sim: Simulator) -> None:
    with httpx.Client(timeout=5) as shared:

        def worker(n: int) -> None:
            for i in range(25):
                shared.get(sim.url, params=lead(f"72755{n:02d}{i:03d}"))

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    leads = sim.leads
    assert sorted(lead.lead_id for lead in leads) == list(range(1, 201))
    assert len(sim.count_by_phone()) == 200


def test_stop_refuses_connections_and_restart_keeps_the_port(client: httpx.Client) -> None:
    sim = Simulator().start()
    url = sim.url
    sim.stop()
    with pytest.raises(httpx.ConnectError):
        client.get(url, params={"function": "version"})
    sim.start()
    try:
        assert sim.url == url
        assert client.get(url, params={"function": "version"}).status_code == 200
    finally:
        sim.stop()


def test_on_request_callback_sees_each_record() -> None:
    seen: list[int] = []
    with Simulator(on_request=lambda record: seen.append(record.number)) as sim:
        for _ in range(3):
            httpx.get(sim.url, params={"function": "version"})
    assert seen == [1, 2, 3]


def test_url_before_start_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="start"):
        _ = Simulator().url
    assert Simulator(port=8123).url == "http://127.0.0.1:8123/agc/api.php"
