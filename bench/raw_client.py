"""The ceiling: N concurrent keep-alive POSTs straight at VICIdial, no queue at all.

``python -m bench.raw_client URL --concurrency 64`` (run by bench/clients.py as
a process of its own, as a worker would be): reads commands on stdin, one a
line, and answers each on stdout:

* ``run FIRST COUNT``: adds the leads of phones ``FIRST`` .. ``FIRST+COUNT-1``
  (``81`` and eight digits, as ``bench.common.Env.phones``), the same form the
  product sends (``workers.vicidial.add_lead_form``), with ``--concurrency``
  calls in flight, each task on one kept-alive httpcore connection of its own;
  answers ``done SECONDS FAILED``;
* ``quit``.

No Redis, no Celery, no retries, no logs: what a client with nothing between the
producer and VICIdial gets from the same server.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

import httpcore

from bench.common import AGENT, API_PASS, API_USER
from dispatcher.config.settings import Settings
from dispatcher.model.lead import Lead
from workers.vicidial import add_lead_form, host_header


async def run(
    url: str, connections: list[httpcore.AsyncHTTPConnection], first: int, count: int
) -> int:
    settings = Settings(
        redis_url="redis://127.0.0.1:1/0",
        vicidial_url=url,
        vicidial_user=API_USER,
        vicidial_pass=API_PASS,
    )
    dialer = settings.dialers.resolve(None)
    assert dialer is not None
    target = httpcore.URL(url)
    host = host_header(target)
    todo = iter(range(first, first + count))
    failed = 0

    async def worker(conn: httpcore.AsyncHTTPConnection) -> None:
        nonlocal failed
        for n in todo:
            lead = Lead(
                agent_user=AGENT,
                phone_number=f"81{n:08d}",
                phone_code="1",
                fields={"first_name": "Bench", "last_name": "Mark"},
            )
            body = add_lead_form(dialer, lead, dnc_check=True, campaign_dnc_check=True)
            headers = [
                (b"Host", host),
                (b"Content-Type", b"application/x-www-form-urlencoded"),
                (b"Content-Length", str(len(body)).encode()),
            ]
            try:
                reply = await conn.request(b"POST", target, headers=headers, content=body)
                if reply.status != 200 or b"SUCCESS" not in reply.content:
                    failed += 1
            except httpcore.NetworkError:
                failed += 1

    await asyncio.gather(*(worker(conn) for conn in connections))
    return failed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url")
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    loop = asyncio.new_event_loop()
    origin = httpcore.URL(args.url).origin
    connections = [
        httpcore.AsyncHTTPConnection(origin, keepalive_expiry=60.0) for _ in range(args.concurrency)
    ]
    print("ready", flush=True)
    for line in sys.stdin:
        command = line.split()
        if not command or command[0] == "quit":
            break
        first, count = int(command[1]), int(command[2])
        started = time.perf_counter()
        failed = loop.run_until_complete(run(args.url, connections, first, count))
        print(f"done {time.perf_counter() - started:.3f} {failed}", flush=True)
    for conn in connections:
        loop.run_until_complete(conn.aclose())
    loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
