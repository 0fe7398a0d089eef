"""A Celery consumer that dead-letters messages it cannot run instead of dropping them.

Stock Celery logs and discards a message it cannot decode, one without a task
header, or one for an unknown task. Here each becomes an ``invalid_payload``
dead letter holding the raw message, so nothing disappears silently. If the
letter cannot be written (Redis away), the message is rejected back to the
queue instead of acknowledged.
"""

from __future__ import annotations

from typing import Any

from celery.worker.consumer.consumer import Consumer

from dispatcher.config import logs
from dispatcher.store.deadletter import DeadLetterStore

__all__ = ["DeadLetteringConsumer"]

_log = logs.get_logger("workers.consumer")


def _dead_letter_raw(message: Any, why: str) -> bool:
    """True once the letter is stored (the message may then be acknowledged)."""
    try:
        body = message.body
        if isinstance(body, bytes):
            body = body.decode("utf-8", "replace")
        raw = {"raw": str(body)[:10_000], "headers": _safe_headers(message)}
        letter = DeadLetterStore().poison(raw=raw, error=why)
        _log.warning(
            "lead.dead_lettered", job_id=letter.job_id, reason="invalid_payload", error=why
        )
        return True
    except Exception as exc:  # never let a poison message take the consumer down
        _log.error("consumer.dead_letter_failed", error=f"{type(exc).__name__}: {exc}")
        return False


def _safe_headers(message: Any) -> dict[str, str]:
    try:
        headers = message.headers or {}
        return {str(k): str(v)[:200] for k, v in headers.items()}
    except Exception:
        return {}


def _settle(message: Any, stored: bool) -> None:
    if stored:
        message.ack()
    else:
        message.reject(requeue=True)


class DeadLetteringConsumer(Consumer):
    def on_decode_error(self, message: Any, exc: Exception) -> None:
        _settle(message, _dead_letter_raw(message, f"undecodable message: {type(exc).__name__}"))

    def on_unknown_message(self, body: Any, message: Any) -> None:
        _settle(message, _dead_letter_raw(message, "message without a task header"))

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        _settle(message, _dead_letter_raw(message, f"unknown task: {exc}"))

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        _settle(message, _dead_letter_raw(message, f"invalid task message: {exc}"))
