"""kombu's Redis transport, made safe against poison items pushed straight into the queue.

Stock kombu pops an item with BRPOP and parses it; an item that is not JSON
kills the worker ("Unrecoverable error: JSONDecodeError"), and JSON that is not
a kombu envelope makes the consumer drop its connection and lose the item. Here
every popped item is checked first; one that is not an envelope is written to
the dead-letter store as ``invalid_payload`` (raw text kept) and kombu sees an
empty poll instead.

Selected in workers/celery_app.py through ``broker_transport``.
"""

from __future__ import annotations

import json
from typing import Any

from kombu.transport import redis as kombu_redis

from dispatcher import logs

__all__ = ["SentinelTransport", "Transport", "is_envelope"]

_log = logs.get_logger("workers.transport")


def is_envelope(item: Any) -> bool:
    """True if ``item`` (bytes or str) parses as a kombu message envelope."""
    try:
        data = json.loads(item)
    except (ValueError, TypeError):
        return False
    if not isinstance(data, dict):
        return False
    props = data.get("properties")
    return (
        isinstance(props, dict)
        and isinstance(props.get("delivery_info"), dict)
        and "body" in data
        and isinstance(data.get("headers", {}), dict)
    )


def _dead_letter_item(queue: Any, item: Any) -> None:
    from workers.tasks import get_runner

    raw = item.decode("utf-8", "replace") if isinstance(item, bytes) else str(item)
    try:
        letter = get_runner().dead_letters.record(
            job={"raw": raw[:10_000], "queue": str(queue)},
            reason="invalid_payload",
            error="queue item is not a Celery message",
            http_status=None,
            attempts=0,
            first_failed_at=None,
        )
        _log.warning("lead.dead_lettered", job_id=letter.job_id, reason="invalid_payload",
                     error="queue item is not a Celery message")
    except Exception as exc:  # the worker must survive even if this write fails
        _log.error("consumer.dead_letter_failed", error=f"{type(exc).__name__}: {exc}")


class _PoisonSafe:
    """Mixin for a kombu Redis channel: vet each BRPOP result before kombu parses it."""

    client: Any

    def _brpop_read(self, **options: Any) -> Any:
        original = self.client.parse_response

        def vetted(*args: Any, **kwargs: Any) -> Any:
            result = original(*args, **kwargs)
            if result and not is_envelope(result[1]):
                _dead_letter_item(result[0], result[1])
                return None  # kombu: an empty poll
            return result

        self.client.parse_response = vetted
        try:
            return super()._brpop_read(**options)  # type: ignore[misc]
        finally:
            del self.client.parse_response


class Channel(_PoisonSafe, kombu_redis.Channel):
    pass


class SentinelChannel(_PoisonSafe, kombu_redis.SentinelChannel):
    pass


class Transport(kombu_redis.Transport):
    Channel = Channel


class SentinelTransport(kombu_redis.SentinelTransport):
    Channel = SentinelChannel
