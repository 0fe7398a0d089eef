"""The worker's HTTP call to external_add_lead, over real loopback sockets.

Every test runs twice: against the threaded client (workers/vicidial.py) and
the lead engine's asyncio client (workers/async_vicidial.py), which must
behave the same, error texts included.

A tiny raw-socket server answers each request with canned bytes, so the answers
that a real Apache/PHP can give (chunked bodies, charsets, a dropped connection,
no answer, megabytes of warnings) reach the client exactly as they would on the
wire, and the error each one maps to is checked.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import string
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qs, urlencode

import pytest

from dispatcher.config.settings import Settings
from dispatcher.model.errors import AmbiguousFailure, NetworkError, UnknownResponse
from dispatcher.model.lead import Lead
from tests.support.faultproxy import FaultProxy
from workers.async_vicidial import AsyncVicidialClient
from workers.vicidial import (
    MAX_ANSWER_BYTES,
    AddLeadResult,
    VicidialClient,
    add_lead_form,
    encode_form,
)

SUCCESS = b"SUCCESS: lead added - 7275551212|TESTCAMP|101|42|1000\n"

Reply = Callable[[bytes], bytes | None]


def _response(body: bytes, *, content_type: bytes = b"text/html; charset=UTF-8") -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: "
        + content_type
        + b"\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


class CannedServer:
    """Accepts connections; for each request read, sends ``reply(request)`` (None: close).

    A test that needs a whole conversation of its own sets :attr:`exchange` to a function
    that serves one connection (each connection is handed to it in its own thread).
    """

    def __init__(self, reply: Reply) -> None:
        self.reply = reply
        self.requests: list[bytes] = []
        self.connections = 0
        self.exchange: Callable[[socket.socket], None] = self.answer_each
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError):  # the client gave up (reset): nothing to answer
            self.exchange(conn)

    def answer_each(self, conn: socket.socket) -> None:
        """The default conversation: each request read is answered with ``reply``."""
        with conn:
            buffer = b""
            while True:
                while b"\r\n\r\n" not in buffer:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buffer += data
                head, _, rest = buffer.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                while len(rest) < length:
                    rest += conn.recv(65536)
                request, buffer = head + b"\r\n\r\n" + rest[:length], rest[length:]
                self.requests.append(request)
                answer = self.reply(request)
                if answer is None:
                    return
                conn.sendall(answer)

    def close(self) -> None:
        self._sock.close()


@pytest.fixture
def serve() -> Iterator[Callable[[Reply], CannedServer]]:
    servers: list[CannedServer] = []

    def start(reply: Reply) -> CannedServer:
        servers.append(CannedServer(reply))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def _settings(port: int, timeout: float) -> Settings:
    return Settings(
        redis_url="redis://127.0.0.1:1/0",
        vicidial_url=f"http://127.0.0.1:{port}/agc/api.php",
        vicidial_user="6666",
        vicidial_pass="1234",
        http_timeout_s=timeout,
    )


class _OnLoop:
    """The lead engine's asyncio client, called as the threaded one is: its loop runs
    in a thread of its own all the time, as the engine's does."""

    def __init__(self, settings: Settings) -> None:
        dialer = settings.dialers.resolve(None)
        assert dialer is not None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._client = AsyncVicidialClient(settings, dialer=dialer)

    def add_lead(
        self, lead: Lead, *, dnc_check: bool, campaign_dnc_check: bool
    ) -> tuple[AddLeadResult, float]:
        call = self._client.add_lead(
            lead, dnc_check=dnc_check, campaign_dnc_check=campaign_dnc_check
        )
        return asyncio.run_coroutine_threadsafe(call, self._loop).result(30)

    def close(self) -> None:
        if self._loop.is_closed():
            return
        asyncio.run_coroutine_threadsafe(self._client.aclose(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


Client = VicidialClient | _OnLoop
MakeClient = Callable[..., Client]


@pytest.fixture(params=["threads", "asyncio"])
def make_client(request: pytest.FixtureRequest) -> Iterator[MakeClient]:
    """Each test runs against both clients: the threaded worker's and the engine's."""
    made: list[Client] = []

    def make(port: int, *, timeout: float = 5.0) -> Client:
        settings = _settings(port, timeout)
        client: Client = (
            VicidialClient(settings) if request.param == "threads" else _OnLoop(settings)
        )
        made.append(client)
        return client

    yield make
    for client in made:
        with contextlib.suppress(Exception):
            client.close()


LEAD = Lead(
    agent_user="1000", phone_number="7275551212", phone_code="1", fields={"first_name": "José"}
)


def test_a_call_posts_the_form_with_value_and_host_and_reuses_the_connection(
    serve: Callable[[Reply], CannedServer], make_client: MakeClient
) -> None:
    server = serve(lambda request: _response(SUCCESS))
    client = make_client(server.port)
    for _ in range(3):
        result, latency_ms = client.add_lead(LEAD, dnc_check=True, campaign_dnc_check=False)
        assert (result.lead_id, result.list_id, result.campaign) == ("42", "101", "TESTCAMP")
        assert latency_ms >= 0
    client.close()
    assert server.connections == 1  # keep-alive: one connection for three calls
    head, _, body = server.requests[0].partition(b"\r\n\r\n")
    assert head.startswith(b"POST /agc/api.php HTTP/1.1\r\n")
    assert f"Host: 127.0.0.1:{server.port}".encode() in head
    assert b"Content-Type: application/x-www-form-urlencoded" in head
    form = parse_qs(body.decode("ascii"))
    assert form["value"] == ["7275551212"] == form["phone_number"]
    assert form["function"] == ["external_add_lead"] and form["dnc_check"] == ["YES"]
    assert form["first_name"] == ["José"] and "campaign_dnc_check" not in form


def test_a_chunked_answer_in_latin_1_is_read_whole_and_decoded(
    serve: Callable[[Reply], CannedServer], make_client: MakeClient
) -> None:
    body = "NOTICE: nombre José\n".encode("latin-1") + SUCCESS
    chunked = b"HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=ISO-8859-1\r\n"
    chunked += b"Transfer-Encoding: chunked\r\n\r\n"
    for piece in (body[:10], body[10:]):
        chunked += f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    chunked += b"0\r\n\r\n"
    server = serve(lambda request: chunked)
    result, _ = make_client(server.port).add_lead(LEAD, dnc_check=False, campaign_dnc_check=False)
    assert result.lead_id == "42"
    assert result.notes == ("NOTICE: nombre José",)


def test_an_answer_past_the_cap_with_no_result_line_is_ambiguous(
    serve: Callable[[Reply], CannedServer], make_client: MakeClient
) -> None:
    warnings = b"PHP Warning: something\n" * (MAX_ANSWER_BYTES // 10)
    server = serve(lambda request: _response(warnings + SUCCESS))
    with pytest.raises(AmbiguousFailure, match="larger than"):
        make_client(server.port).add_lead(LEAD, dnc_check=False, campaign_dnc_check=False)


def test_a_connection_dropped_after_the_request_is_ambiguous(
    serve: Callable[[Reply], CannedServer], make_client: MakeClient
) -> None:
    server = serve(lambda request: None)
    with pytest.raises(AmbiguousFailure, match="connection dropped after the request was sent"):
        make_client(server.port).add_lead(LEAD, dnc_check=False, campaign_dnc_check=False)
    assert len(server.requests) == 1


def test_no_answer_within_the_timeout_is_ambiguous(
    serve: Callable[[Reply], CannedServer], make_client: MakeClient
) -> None:
    hold = threading.Event()
    server = serve(lambda request: (hold.wait(5), None)[1])
    try:
        with pytest.raises(AmbiguousFailure, match="ReadTimeout: no answer in time"):
            make_client(server.port, timeout=0.5).add_lead(
                LEAD, dnc_check=False, campaign_dnc_check=False
            )
    finally:
        hold.set()


def test_nothing_listening_is_a_network_error_not_ambiguous(make_client: MakeClient) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(NetworkError, match="ConnectError: could not connect"):
        make_client(port).add_lead(LEAD, dnc_check=False, campaign_dnc_check=False)


def test_a_garbage_status_line_is_ambiguous_and_an_empty_answer_unknown(
    serve: Callable[[Reply], CannedServer], make_client: MakeClient
) -> None:
    server = serve(lambda request: b"SUCCESS but not HTTP\r\n\r\n")
    with pytest.raises(AmbiguousFailure, match="RemoteProtocolError"):
        make_client(server.port).add_lead(LEAD, dnc_check=False, campaign_dnc_check=False)
    server = serve(lambda request: _response(b""))
    with pytest.raises(UnknownResponse, match="empty answer"):
        make_client(server.port).add_lead(LEAD, dnc_check=False, campaign_dnc_check=False)


def test_a_connection_the_server_closed_is_not_reused_and_the_call_is_clean(
    serve: Callable[[Reply], CannedServer], make_client: MakeClient
) -> None:
    # Apache after its KeepAliveTimeout (or an answer saying Connection: close): the
    # next call opens a new connection instead of failing as ambiguous on the dead one.
    server = serve(lambda request: _response(SUCCESS))

    def one_answer_then_hang_up(conn: socket.socket) -> None:
        with conn:
            buffer = b""
            while b"\r\n\r\n" not in buffer:
                buffer += conn.recv(65536)
            server.requests.append(buffer)
            conn.sendall(_response(SUCCESS))
            conn.shutdown(socket.SHUT_RDWR)

    server.exchange = one_answer_then_hang_up
    client = make_client(server.port)
    for _ in range(3):
        result, _ = client.add_lead(LEAD, dnc_check=False, campaign_dnc_check=False)
        assert result.lead_id == "42"
        time.sleep(0.05)  # the hang-up reaches the client before the next call
    assert server.connections == 3


def test_an_answer_without_length_runs_to_the_close_and_interim_answers_are_skipped(
    serve: Callable[[Reply], CannedServer], make_client: MakeClient
) -> None:
    answer = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.0 200 OK\r\nContent-Type: text/html\r\n\r\n"
    server = serve(lambda request: answer + SUCCESS)

    def exchange(conn: socket.socket) -> None:
        with conn:
            buffer = b""
            while b"\r\n\r\n" not in buffer:
                buffer += conn.recv(65536)
            conn.sendall(answer + SUCCESS)  # and close: the end of the body

    server.exchange = exchange
    result, _ = make_client(server.port).add_lead(LEAD, dnc_check=False, campaign_dnc_check=False)
    assert result.lead_id == "42"


def test_the_form_is_encoded_byte_for_byte_as_urlencode_would() -> None:
    """The form's own encoder (workers.vicidial.encode_form) skips what needs no quoting;
    for any text, names and numbers it gives what urllib's urlencode gives."""
    rng = random.Random(15)
    alphabet = string.printable + "éñ中\u00a0+&=%~"

    def text() -> str:
        return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))

    for _ in range(3000):
        data: dict[Any, Any] = {text(): rng.choice([text(), text(), 5, 1.5, b"x y", None])}
        data[text()] = text()
        assert encode_form(data.items()).decode() == urlencode(data)
    lead = Lead(
        agent_user="1000",
        phone_number="7275551212",
        phone_code="1",
        fields={"first_name": "Zoë Ann", "comments": "100% sure: a/b & c"},
    )
    dialer = Settings(
        vicidial_url="http://sim/agc/api.php", vicidial_user="6666", vicidial_pass="p&ss word"
    ).dialers.resolve(None)
    assert dialer is not None
    form = add_lead_form(dialer, lead, dnc_check=True, campaign_dnc_check=False).decode()
    expected = {
        "source": dialer.source,
        "user": "6666",
        "pass": "p&ss word",
        "function": "external_add_lead",
        **lead.vicidial_params(),
        "value": "7275551212",
        "dnc_check": "YES",
    }
    assert form == urlencode(expected)


def test_a_dripping_answer_is_cut_at_the_calls_deadline(
    serve: Callable[[Reply], CannedServer], make_client: MakeClient
) -> None:
    """One byte every 0.2 s never trips a per-read timeout: the call's overall
    deadline ends it (it must never outlive the worker's claim)."""
    stop = threading.Event()
    server = serve(lambda request: _response(SUCCESS))

    def drip(conn: socket.socket) -> None:
        with conn:
            buffer = b""
            while b"\r\n\r\n" not in buffer:
                buffer += conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 200\r\n\r\n")
            while not stop.wait(0.2):
                conn.sendall(b"x")

    server.exchange = drip
    client = make_client(server.port, timeout=1.0)
    started = time.monotonic()
    try:
        with pytest.raises(AmbiguousFailure, match="ReadTimeout: no answer in time"):
            client.add_lead(LEAD, dnc_check=False, campaign_dnc_check=False)
    finally:
        stop.set()
    assert time.monotonic() - started < 3.0


def test_an_endless_chunked_answer_is_read_only_up_to_the_cap(
    serve: Callable[[Reply], CannedServer], make_client: MakeClient
) -> None:
    stop = threading.Event()
    server = serve(lambda request: _response(SUCCESS))
    sent: list[int] = []

    def flood(conn: socket.socket) -> None:
        with conn:
            buffer = b""
            while b"\r\n\r\n" not in buffer:
                buffer += conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            chunk = b"PHP Warning: x\n" * 1000
            while not stop.is_set():
                conn.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                sent.append(len(chunk))

    server.exchange = flood
    try:
        with pytest.raises(AmbiguousFailure, match="larger than 65536 bytes"):
            make_client(server.port, timeout=5.0).add_lead(
                LEAD, dnc_check=False, campaign_dnc_check=False
            )
    finally:
        stop.set()


@pytest.mark.parametrize("fault", ["half_open", "dropped"])
def test_a_kept_alive_connection_lost_is_replaced(
    fault: str, serve: Callable[[Reply], CannedServer], make_client: MakeClient
) -> None:
    """Through the fault proxy: a kept-alive connection that went silent (half-open)
    costs the call that used it its answer (ambiguous, at the deadline); one the
    network dropped is seen closed and not used. The next calls connect again."""
    server = serve(lambda request: _response(SUCCESS))
    proxy = FaultProxy("127.0.0.1", server.port).start()
    try:
        client = make_client(proxy.port, timeout=1.0)
        client.add_lead(LEAD, dnc_check=False, campaign_dnc_check=False)
        if fault == "half_open":
            assert proxy.blackhole() == 1
            with pytest.raises(AmbiguousFailure, match="ReadTimeout"):
                client.add_lead(LEAD, dnc_check=False, campaign_dnc_check=False)
        else:
            proxy.cut()
            time.sleep(0.1)  # the close reaches the client before its next call
        for _ in range(2):
            result, _ = client.add_lead(LEAD, dnc_check=False, campaign_dnc_check=False)
            assert result.lead_id == "42"
        assert server.connections == 2
    finally:
        proxy.close()
