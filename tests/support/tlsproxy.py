"""A TLS front for a plain TCP server (the test suite's Redis has no TLS of its own).

    proxy = TlsProxy("127.0.0.1", redis_port, workdir).start()   # None without openssl
    url = proxy.url   # rediss://127.0.0.1:PORT/0?ssl_ca_certs=...&ssl_cert_reqs=required

A self-signed certificate for 127.0.0.1 is made with the ``openssl`` command;
clients verify it (the URL names it as the CA). Each connection is decrypted and
forwarded to the target, bytes unchanged.
"""

from __future__ import annotations

import contextlib
import select
import shutil
import socket
import ssl
import subprocess
import threading
from pathlib import Path

__all__ = ["TlsProxy"]


class TlsProxy:
    def __init__(self, host: str, port: int, workdir: Path) -> None:
        self.target = (host, port)
        self.cert = workdir / "cert.pem"
        self.key = workdir / "key.pem"
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._closing = False
        self._sockets: list[socket.socket] = []

    @property
    def url(self) -> str:
        return f"rediss://127.0.0.1:{self.port}/0?ssl_ca_certs={self.cert}&ssl_cert_reqs=required"

    def start(self) -> TlsProxy | None:
        """Start serving; None when there is no ``openssl`` to make a certificate."""
        openssl = shutil.which("openssl")
        if openssl is None:
            return None
        made = subprocess.run(
            [
                openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                "-keyout", str(self.key), "-out", str(self.cert),
            ],
            capture_output=True,
            timeout=60,
        )  # fmt: skip
        if made.returncode != 0:
            return None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, self.key)
        threading.Thread(target=self._accept, args=(context,), daemon=True).start()
        return self

    def close(self) -> None:
        self._closing = True
        with contextlib.suppress(OSError):
            self._listener.close()
        for s in self._sockets:
            with contextlib.suppress(OSError):
                s.close()

    def _accept(self, context: ssl.SSLContext) -> None:
        while not self._closing:
            try:
                raw, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(context, raw), daemon=True).start()

    def _serve(self, context: ssl.SSLContext, raw: socket.socket) -> None:
        try:
            client = context.wrap_socket(raw, server_side=True)
            server = socket.create_connection(self.target)
        except (OSError, ssl.SSLError):
            raw.close()
            return
        self._sockets += [client, server]
        try:
            while True:
                # TLS may hold decrypted bytes the socket no longer shows as readable.
                readable = [client] if client.pending() else []
                if not readable:
                    readable, _, _ = select.select([client, server], [], [], 0.5)
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    (server if sock is client else client).sendall(data)
        except (OSError, ValueError, ssl.SSLError):
            return
        finally:
            for s in (client, server):
                with contextlib.suppress(OSError):
                    s.close()
