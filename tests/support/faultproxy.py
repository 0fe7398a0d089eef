"""A TCP proxy between a client and a real server, for injecting network faults.

The faults that matter to exactly-once are the ones where a command reached Redis
but its reply never came back (a lost reply), and stalls longer than a client's
socket timeout. Nothing is faked: bytes go to a real redis-server and back; the
proxy only decides when (or whether) the server's replies are forwarded.

    proxy = FaultProxy("127.0.0.1", redis_port).start()
    proxy.drop_replies(1)   # the next reply chunk is swallowed and the connection cut
    proxy.stall(20.0)       # replies are held back for 20 s (the server still runs)
    proxy.hold_requests(3)  # requests are held back for 3 s (nothing reaches the server)
    proxy.refuse(5)         # connections cut and refused for 5 s (the server is away)
    proxy.delay_replies(1)  # every reply reaches the client 1 s after the server sent it
    proxy.blackhole()       # open connections go silent, never closed (half-open);
                            # new connections work
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time

__all__ = ["FaultProxy"]


class FaultProxy:
    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._lock = threading.Lock()
        self._drop = 0
        self._stall_until = 0.0
        self._hold_until = 0.0
        self._refuse_until = 0.0
        self._refuse_after_drop = 0.0
        self._reply_delay = 0.0
        self._closing = False
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        #: client sockets whose connection went silent (see blackhole)
        self._silent: set[socket.socket] = set()
        self.dropped = 0
        #: client -> server chunks forwarded (one per write of a pipelined batch)
        self.requests = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> FaultProxy:
        threading.Thread(target=self._accept, daemon=True, name="faultproxy").start()
        return self

    def close(self) -> None:
        self._closing = True
        with contextlib.suppress(OSError):
            self._listener.close()
        self.cut()

    def drop_replies(self, n: int = 1, *, then_refuse_s: float = 0.0) -> None:
        """Swallow the next ``n`` server->client chunks, cutting the connection each time.

        ``then_refuse_s``: after dropping, refuse connections that long (the server
        went away right after running the command).
        """
        with self._lock:
            self._drop += n
            self._refuse_after_drop = then_refuse_s

    def stall(self, seconds: float) -> None:
        """Hold every server reply back for ``seconds`` (requests still reach the server)."""
        with self._lock:
            self._stall_until = time.monotonic() + seconds

    def refuse(self, seconds: float) -> None:
        """Cut every connection and refuse new ones for ``seconds`` (the server is away)."""
        with self._lock:
            self._refuse_until = time.monotonic() + seconds
        self.cut()

    def delay_replies(self, seconds: float) -> None:
        """Forward every server reply ``seconds`` after it arrived (a slow link back)."""
        with self._lock:
            self._reply_delay = seconds

    def hold_requests(self, seconds: float) -> None:
        """Hold every client request back for ``seconds`` (the server sees nothing)."""
        with self._lock:
            self._hold_until = time.monotonic() + seconds

    def blackhole(self) -> int:
        """Every connection open now goes silent both ways and stays open: a half-open
        connection (a peer or a NAT gone without a word). New connections work.
        Returns how many connections went silent."""
        with self._lock:
            self._silent.update(client for client, _ in self._pairs)
            return len(self._pairs)

    def _wait(self, attr: str) -> None:
        while True:
            with self._lock:
                wait = getattr(self, attr) - time.monotonic()
            if wait <= 0:
                return
            time.sleep(min(wait, 0.05))

    def cut(self) -> None:
        """Close every proxied connection now."""
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for a, b in pairs:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.close()

    def _accept(self) -> None:
        while not self._closing:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                refusing = self._refuse_until > time.monotonic()
            if refusing:
                client.close()
                continue
            try:
                server = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._pairs.append((client, server))
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()

    def _pump(self, client: socket.socket, server: socket.socket) -> None:
        try:
            while True:
                readable, _, _ = select.select([client, server], [], [], 0.05)
                if client in self._silent:
                    # Half-open: nothing is read or forwarded any more, nothing closed.
                    time.sleep(0.05)
                    continue
                for sock in readable:
                    data = sock.recv(65536)
                    arrived = time.monotonic()
                    if not data:
                        return
                    if sock is client:
                        self._wait("_hold_until")
                        server.sendall(data)
                        with self._lock:
                            self.requests += 1
                        continue
                    self._wait("_stall_until")
                    with self._lock:
                        late = arrived + self._reply_delay - time.monotonic()
                    if late > 0:
                        time.sleep(late)
                    with self._lock:
                        drop = self._drop > 0
                        if drop:
                            self._drop -= 1
                            self.dropped += 1
                            if self._refuse_after_drop:
                                self._refuse_until = time.monotonic() + self._refuse_after_drop
                    if drop:
                        return  # the reply is lost with the connection
                    client.sendall(data)
        except (OSError, ValueError):
            # Closed under us (kill_connections, close): a closed socket's descriptor
            # is -1, which select refuses with ValueError.
            return
        finally:
            for s in (client, server):
                with contextlib.suppress(OSError):
                    s.close()
