"""A release's Redis contents as portable JSON: dumped by the recorder, loaded by the tests.

Not RDB ``DUMP`` payloads (tied to the Redis version that wrote them): each key is
written as its type, its value in plain JSON and its remaining TTL, so any Redis
can take it back with ordinary commands, and a reviewer can read what a release
wrote. A fixture file::

    {"format": 1,
     "meta": {"commit", "recorded_at" (Redis's clock at the dump), "groups", "jobs",
              "simulator", "console", ...: see tests/upgrade/record_fixture.py},
     "keys": {"dispatcher:job:…": {"type": "hash", "ttl_ms": 604800000,
                                   "group": "job states", "value": {…}}, …}}

Values: a string is a string (or ``{"base64": …}`` when it is not UTF-8), a hash an
object, a list and a set arrays (a set sorted), a sorted set an array of
``[member, score]``. ``ttl_ms`` is null for a key without one.

Loading with ``age_s`` (:func:`load_fixture`) makes the contents look as if the
previous release had stopped writing ``age_s`` seconds ago, whenever the fixture
was recorded: every epoch timestamp in it (within 60 days of ``recorded_at``: in
strings, hash values, sorted-set scores, list and set items, inside JSON, inside a
kombu envelope's base64 body) moves by the same amount, and TTLs shrink by
``age_s`` (a key that would have expired is left out). So leases, retry times,
pauses, sessions and agent waits mean the same thing on every run, and a test's
expectations do not rot as the fixture ages.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import redis

__all__ = [
    "FORMAT",
    "TimeShift",
    "describe_key",
    "dump_redis",
    "load_fixture",
    "read_fixture",
    "seed_simulator",
    "stored_leads",
]

FORMAT = 1
#: How far from the recording a number may be and still count as a timestamp (a
#: look-up hold lasts 30 days; the fixtures' phone numbers, 727xxxxxxx, are in 2200).
_WINDOW_S = 60 * 86400
_NUMBER = re.compile(r"^-?\d{9,10}(\.\d+)?$")
#: An ISO 8601 time in UTC, as dead letters hold them (dispatcher.model.jobs.iso).
_ISO = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?(\+00:00|Z)$")


def describe_key(key: str, *, prefix: str = "dispatcher", queue: str = "dispatcher") -> str:
    """The group a key belongs to, in words (the fixture's table of contents)."""
    p = prefix + ":"
    if key.startswith(p):
        rest = key[len(p) :]
        head = rest.split(":", 1)[0]
        groups = {
            "job": "job states (`dispatcher job`)",
            "exec": "execution records",
            "idem": "idempotency records",
            "dl": "dead letters",
            "dlq": "dead-letter indexes",
            "scheduled": "retries and look-ups waiting (scheduled set)",
            "pause": "pauses",
            "pauses": "pauses",
            "breaker": "breakers",
            "rate": "rate limits",
            "stats": "stats",
            "activity": "activity samples",
            "workers": "workers and heartbeats",
            "worker": "workers and heartbeats",
            "consumer": "workers and heartbeats",
            "user": "console users",
            "users": "console users",
            "session": "console sessions",
            "user_sessions": "console sessions",
            "login_failures": "console login throttle",
            "lookup": "look-up checks (reconciliation)",
            "lookups": "look-up checks (reconciliation)",
            "layout": "layout version",
        }
        return groups.get(head, "other (not classified: say what it is)")
    if key == queue or re.fullmatch(re.escape(queue) + r"\.[^.]+\.(realtime|bulk)", key):
        return "queue lanes"
    if key == f"{queue}.wake":
        return "queue wake tokens"
    if key in ("unacked", "unacked_index", "unacked_mutex"):
        return "kombu's unacknowledged messages (in flight)"
    if key.startswith("_dispatcher.inflight."):
        return "in-flight registry"
    if key.startswith("_kombu."):
        return "kombu bindings"
    return "other (not classified: say what it is)"


def _text(data: bytes) -> Any:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(data).decode()}


def _bytes(value: Any) -> bytes:
    if isinstance(value, dict):
        return base64.b64decode(value["base64"])
    return str(value).encode("utf-8")


def dump_redis(client: redis.Redis, *, prefix: str, queue: str) -> dict[str, Any]:
    """Every key of the database (the recorder's Redis is its own), as the fixture holds it."""
    pool = client.connection_pool
    kwargs = {**pool.connection_kwargs, "decode_responses": False}  # bytes, whatever it decodes
    client = redis.Redis(connection_pool=redis.ConnectionPool(pool.connection_class, **kwargs))
    out: dict[str, Any] = {}
    for raw in sorted(client.scan_iter(count=1000)):
        key = raw.decode()
        kind = client.type(raw).decode()
        value: Any
        if kind == "string":
            value = _text(client.get(raw) or b"")
        elif kind == "hash":
            value = {_text(k): _text(v) for k, v in sorted(client.hgetall(raw).items())}
        elif kind == "list":
            value = [_text(v) for v in client.lrange(raw, 0, -1)]
        elif kind == "set":
            value = [_text(v) for v in sorted(client.smembers(raw))]
        elif kind == "zset":
            value = [[_text(m), s] for m, s in client.zrange(raw, 0, -1, withscores=True)]
        else:
            raise ValueError(f"{key}: a {kind}, which the fixture format does not hold")
        ttl = client.pttl(raw)
        out[key] = {
            "type": kind,
            "ttl_ms": ttl if ttl >= 0 else None,
            "group": describe_key(key, prefix=prefix, queue=queue),
            "value": value,
        }
    return out


def read_fixture(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    if data.get("format") != FORMAT:
        raise ValueError(f"{path}: fixture format {data.get('format')!r}, expected {FORMAT}")
    return data


class TimeShift:
    """Moves every epoch timestamp near ``recorded_at`` by ``delta`` seconds."""

    def __init__(self, recorded_at: float, delta: float) -> None:
        self.low, self.high = recorded_at - _WINDOW_S, recorded_at + _WINDOW_S
        self.delta = delta
        #: how many values were moved (the tests check the shift did something)
        self.moved = 0

    def near(self, x: float) -> bool:
        return self.low <= x <= self.high

    def number(self, x: float) -> float:
        if isinstance(x, bool) or not math.isfinite(x) or not self.near(x):
            return x
        self.moved += 1
        return round(x + self.delta, 6)

    def text(self, value: str) -> str:
        """A string: a number (its decimals kept), JSON (walked), else unchanged."""
        if _NUMBER.match(value):
            x = float(value)
            if not self.near(x):
                return value
            self.moved += 1
            decimals = len(value.split(".", 1)[1]) if "." in value else 0
            return f"{x + self.delta:.{decimals}f}"
        if _ISO.match(value):
            return self._iso(value)
        if value[:1] in ("{", "[") and value[-1:] in ("}", "]"):
            try:
                data = json.loads(value)
            except ValueError:
                return value
            before = self.moved
            shifted = self.walk(data)
            if self.moved == before:
                return value  # untouched: the original bytes, not a re-serialisation
            return json.dumps(shifted, separators=_separators(value), ensure_ascii=False)
        return value

    def _iso(self, value: str) -> str:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        if not self.near(moment.timestamp()):
            return value
        self.moved += 1
        digits = len(value[19:].split("+")[0].rstrip("Z")) - 1  # after the point
        spec = {-1: "seconds", 3: "milliseconds", 6: "microseconds"}.get(digits, "microseconds")
        shifted = (moment + timedelta(seconds=self.delta)).astimezone(UTC).isoformat(timespec=spec)
        return shifted.replace("+00:00", "Z") if value.endswith("Z") else shifted

    def walk(self, data: Any) -> Any:
        if isinstance(data, dict):
            out = {k: self.walk(v) for k, v in data.items()}
            properties = out.get("properties")
            if (
                isinstance(out.get("body"), str)
                and isinstance(properties, dict)
                and properties.get("body_encoding") == "base64"
            ):
                out["body"] = self._base64(out["body"])
            return out
        if isinstance(data, list):
            return [self.walk(v) for v in data]
        if isinstance(data, str):
            return self.text(data)
        if isinstance(data, int | float) and not isinstance(data, bool):
            moved = self.number(float(data))
            if isinstance(data, int) and moved == int(moved):
                return int(moved)
            return moved
        return data

    def _base64(self, body: str) -> str:
        try:
            inner = base64.b64decode(body, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return body
        shifted = self.text(inner)
        return body if shifted == inner else base64.b64encode(shifted.encode()).decode()


def _separators(text: str) -> tuple[str, str]:
    """Compact JSON stays compact; JSON written with spaces keeps them."""
    return (", ", ": ") if ('", "' in text or '": ' in text) else (",", ":")


def load_fixture(
    client: redis.Redis,
    fixture: Mapping[str, Any],
    *,
    age_s: float | None = None,
    now: Callable[[], float] | None = None,
) -> dict[str, int]:
    """Write a fixture into ``client``'s database (meant to be empty).

    ``age_s`` None: values and TTLs as recorded. A number: as if the previous
    release had stopped ``age_s`` seconds ago (see the module's docstring).
    Returns counts: ``keys`` written, ``expired`` (left out: their TTL ran out),
    ``moved`` (timestamps shifted).
    """
    keys: Mapping[str, Any] = fixture["keys"]
    shift: TimeShift | None = None
    if age_s is not None:
        if now is None:
            seconds, micros = client.time()
            current = seconds + micros / 1e6
        else:
            current = now()
        recorded = float(fixture["meta"]["recorded_at"])
        shift = TimeShift(recorded, current - age_s - recorded)

    def text(value: Any) -> bytes:
        if shift is not None and isinstance(value, str):
            return shift.text(value).encode("utf-8")
        return _bytes(value)

    written = expired = 0
    pipe = client.pipeline(transaction=False)
    for key, entry in keys.items():
        ttl = entry["ttl_ms"]
        if ttl is not None and age_s is not None:
            ttl = int(ttl - age_s * 1000)
            if ttl <= 0:
                expired += 1
                continue
        kind, value = entry["type"], entry["value"]
        if kind == "string":
            pipe.set(key, text(value))
        elif kind == "hash":
            pipe.hset(key, mapping={_bytes(k): text(v) for k, v in value.items()})
        elif kind == "list":
            pipe.rpush(key, *[text(v) for v in value])
        elif kind == "set":
            pipe.sadd(key, *[text(v) for v in value])
        elif kind == "zset":
            scores: dict[bytes, float] = {}
            for member, score in value:
                moved = shift.number(float(score)) if shift is not None else float(score)
                scores[text(member)] = moved
            pipe.zadd(key, scores)
        else:
            raise ValueError(f"{key}: unknown type {kind!r}")
        if ttl is not None:
            pipe.pexpire(key, ttl)
        written += 1
    pipe.execute()
    return {"keys": written, "expired": expired, "moved": shift.moved if shift else 0}


def stored_leads(sim: Any) -> list[dict[str, Any]]:
    """What the simulator holds (its ``vicidial_list``), as the fixture records it."""
    return [
        {
            "lead_id": lead.lead_id,
            "list_id": lead.list_id,
            "campaign": lead.campaign,
            "agent_user": lead.agent_user,
            "phone_number": lead.phone_number,
            "phone_code": lead.phone_code,
            "fields": dict(sorted(lead.fields.items())),
            "user": lead.user,
        }
        for lead in sim.leads
    ]


def seed_simulator(
    sim: Any, leads: Sequence[Mapping[str, Any]], passwords: Mapping[str, str]
) -> None:
    """Put the recorded leads back into a fresh simulator (started with the recorded
    state, whose lead ids start at the first recorded one), through its own API: the
    same calls insert the same rows, in the same order, with the same ids.
    ``passwords``: of the API users that added them. Raises if a row comes out different.
    """
    with httpx.Client(timeout=10) as client:
        for lead in sorted(leads, key=lambda x: int(x["lead_id"])):
            params = {
                "source": "fixture",
                "user": lead["user"],
                "pass": passwords[lead["user"]],
                "function": "external_add_lead",
                "agent_user": lead["agent_user"],
                "value": lead["phone_number"],
                "phone_code": lead["phone_code"],
                "dnc_check": "NO",
                "campaign_dnc_check": "NO",
                **lead["fields"],
            }
            answer = client.get(sim.url, params=params).text
            if not answer.startswith("SUCCESS"):
                raise RuntimeError(f"seeding lead {lead['lead_id']}: {answer}")
    got = {x["lead_id"]: x for x in stored_leads(sim)}
    for lead in leads:
        if got.get(lead["lead_id"]) != dict(lead):
            raise RuntimeError(
                f"seeded lead differs: recorded {lead}, simulator {got.get(lead['lead_id'])}"
            )
