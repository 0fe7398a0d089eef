"""The :class:`Simulator`: a VICIdial agc/api.php stand-in on a real loopback socket.

The HTTP server runs an asyncio loop in a daemon thread; every request is answered
under one lock, which every inspection and run-time change takes too, so tests may
poke the simulator from any thread while clients hammer it. The one exception is
add_lead's race window (:meth:`Simulator.set_add_lead_race_window`): between its
duplicate check and its INSERT the request lets go of the lock, as the real server,
which has no lock there, lets other requests run.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import re
import socket
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import NamedTuple
from urllib.parse import parse_qsl

from dispatcher.simulator.addlead import PendingInsert
from dispatcher.simulator.agc import Answer, StoredLead, Tables, answer, is_locked, merge_fields
from dispatcher.simulator.faults import (
    AFTER_PROCESSING,
    BEFORE_PROCESSING,
    DRIP_INTERVAL_S,
    PHP_WARNING_HTML,
    PROXY_AFTER_PROCESSING,
    FaultKind,
    FaultPlan,
    check_kind,
    fault_response,
)
from dispatcher.simulator.http_server import Hangup, HttpRequest, HttpResponse, HttpServer, Reply
from dispatcher.simulator.listconfig import CustomFieldConfig, ListConfig, NanpaPrefixConfig
from dispatcher.simulator.listtables import AltPhoneRow, CallbackRow, HopperRow, list_key
from dispatcher.simulator.mangling import sanitize
from dispatcher.simulator.nonagent import answer_nonagent
from dispatcher.simulator.state import (
    CampaignConfig,
    SimulatorState,
    UserConfig,
    UserGroupConfig,
)

__all__ = ["API_PATH", "NONAGENT_PATH", "RequestRecord", "Simulator"]

API_PATH = "/agc/api.php"
#: VICIdial's Non-Agent API (lead look-ups), on the same server.
NONAGENT_PATH = "/vicidial/non_agent_api.php"

_PHP_HEADERS = (
    ("Content-Type", "text/html; charset=utf-8"),
    ("Cache-Control", "no-cache, must-revalidate"),
    ("Pragma", "no-cache"),
)


@dataclass(frozen=True)
class RequestRecord:
    """One call to /agc/api.php (or, in :attr:`Simulator.lookups`, to
    /vicidial/non_agent_api.php), as the simulator saw and answered it.

    ``fields`` are the request's form fields as received (query string winning over
    the body) with ``pass`` removed. ``status`` is 0 when no HTTP answer was sent
    (reset, stall). ``body`` is what was sent, except that an echoed password reads
    ``<redacted>``. ``fault`` is the injected fault, if any; ``processed`` says whether
    the VICIdial logic ran; ``lead_id`` is the lead it inserted, if any; ``at`` is the
    simulator clock's time of arrival.
    """

    number: int
    method: str
    fields: dict[str, str]
    status: int
    body: str
    fault: FaultKind | None = None
    processed: bool = False
    lead_id: int | None = None
    at: float = 0.0


def request_phone(fields: Mapping[str, str], value: str, *, non_latin: bool = False) -> str:
    """The phone number agc/api.php would use: ``value``, else ``phone_number``."""
    phone = sanitize("value", value, non_latin=non_latin)
    if not phone:
        phone = sanitize("phone_number", fields.get("phone_number", ""), non_latin=non_latin)
    return phone


class Simulator:
    """A VICIdial agent API (``/agc/api.php``) on a real socket, for tests and demos.

    ``state`` defaults to :meth:`SimulatorState.demo`. ``port=0`` picks a free port
    (read it from :attr:`url` after :meth:`start`). ``clock`` (epoch seconds) drives
    the lockout window, the version answer and entry dates, so tests can move time.
    ``seed`` seeds the failure-rate and latency RNGs. ``stall_s`` is how long the
    ``stall`` faults hold a connection. ``max_records`` bounds :attr:`requests`.
    ``on_request`` is called (in the server thread) with each :class:`RequestRecord`.

    The Non-Agent API (``/vicidial/non_agent_api.php``: version, look-ups, ``add_lead``)
    is served on the same port; its calls are recorded in :attr:`lookups`
    (:attr:`add_lead_requests` for the adds). What ``add_lead`` writes besides the lead
    is inspected with :attr:`hopper`, :attr:`callbacks`, :meth:`alt_phones` and
    :meth:`custom_values`; :meth:`set_add_lead_race_window` opens the gap between its
    duplicate check and its INSERT that the real server has.
    """

    def __init__(
        self,
        state: SimulatorState | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Callable[[], float] = time.time,
        seed: int | None = None,
        stall_s: float = 30.0,
        max_records: int | None = 100_000,
        on_request: Callable[[RequestRecord], None] | None = None,
    ) -> None:
        self._initial = (state if state is not None else SimulatorState.demo()).copy()
        self._host = host
        self._port = port
        self._clock = clock
        self._seed = seed
        self._on_request = on_request
        self._lock = threading.Lock()
        self._tables = Tables.from_state(self._initial, clock())
        self._plan = FaultPlan(seed=seed, stall_s=stall_s)
        self._records: collections.deque[RequestRecord] = collections.deque(maxlen=max_records)
        self._calls = 0
        self._lookup_records: collections.deque[RequestRecord] = collections.deque(
            maxlen=max_records
        )
        self._lookups = 0
        # Requests held by a hold_insert fault, released by release_held() (loop thread).
        self._held: list[asyncio.Event] = []
        # add_lead's gap between its duplicate check and its INSERT (0: atomic).
        self._race_s = 0.0
        self._lifecycle = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> Simulator:
        """Start serving (returns self). After :meth:`stop`, starts again on the same port."""
        with self._lifecycle:
            if self._thread is not None:
                raise RuntimeError("simulator already started")
            sock = _listen(self._host, self._port)
            self._port = sock.getsockname()[1]
            loop = asyncio.new_event_loop()
            ready = threading.Event()
            failure: list[BaseException] = []
            thread = threading.Thread(
                target=self._run,
                args=(loop, sock, ready, failure),
                name=f"vicidial-simulator:{self._port}",
                daemon=True,
            )
            thread.start()
            ready.wait()
            if failure:
                thread.join()
                raise failure[0]
            self._loop, self._thread = loop, thread
        return self

    def _run(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        ready: threading.Event,
        failure: list[BaseException],
    ) -> None:
        asyncio.set_event_loop(loop)
        server = HttpServer(self._handle)
        try:
            loop.run_until_complete(server.start(sock))
        except BaseException as exc:
            failure.append(exc)
            sock.close()
            loop.close()
            ready.set()
            return
        ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(server.close())
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def stop(self) -> None:
        """Stop serving: close the socket and drop open connections (stalls included)."""
        with self._lifecycle:
            loop, thread = self._loop, self._thread
            if loop is None or thread is None:
                return
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            self._loop = self._thread = None

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._thread is not None

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        if self._port == 0:
            raise RuntimeError("port not chosen yet: call start() first")
        return self._port

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT`` (IPv6 hosts in brackets)."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}"

    @property
    def url(self) -> str:
        """The full URL of the API, ``http://HOST:PORT/agc/api.php``."""
        return self.base_url + API_PATH

    def __repr__(self) -> str:
        where = self.url if self._port else "not started"
        with self._lock:
            return f"<Simulator {where} calls={self._calls} leads={len(self._tables.leads)}>"

    # ---------------------------------------------------------------- inspection

    @property
    def leads(self) -> list[StoredLead]:
        """Snapshot of the inserted leads, in insertion order."""
        with self._lock:
            return list(self._tables.leads)

    def count_by_phone(self) -> dict[str, int]:
        """How many leads each stored phone number has (a count above 1 is a duplicate)."""
        with self._lock:
            return dict(collections.Counter(lead.phone_number for lead in self._tables.leads))

    def lead(self, lead_id: int) -> StoredLead | None:
        """The stored lead with this id (None if there is none, e.g. deleted)."""
        with self._lock:
            return next((x for x in self._tables.leads if x.lead_id == lead_id), None)

    def leads_in_list(self, list_id: str | int) -> list[StoredLead]:
        """The leads stored in a list (ids compared as numbers: ``"0101"`` is 101)."""
        key = list_key(str(list_id))
        with self._lock:
            return [x for x in self._tables.leads if list_key(x.list_id) == key]

    @property
    def hopper(self) -> list[HopperRow]:
        """Snapshot of ``vicidial_hopper`` (rows add_lead inserted), oldest first."""
        with self._lock:
            return list(self._tables.lists.hopper)

    @property
    def callbacks(self) -> list[CallbackRow]:
        """Snapshot of ``vicidial_callbacks`` (rows add_lead inserted), oldest first."""
        with self._lock:
            return list(self._tables.lists.callbacks)

    def alt_phones(self, lead_id: int | None = None) -> list[AltPhoneRow]:
        """``vicidial_list_alt_phones`` rows (``multi_alt_phones``), of one lead or all."""
        with self._lock:
            rows = self._tables.lists.alt_phones
            return [r for r in rows if lead_id is None or r.lead_id == lead_id]

    def custom_values(self, list_id: str | int, lead_id: int) -> dict[str, str] | None:
        """The lead's row in ``custom_{list_id}`` (label -> value), None if it has none."""
        with self._lock:
            row = self._tables.lists.custom_rows.get(list_key(str(list_id)), {}).get(lead_id)
            return None if row is None else dict(row)

    @property
    def add_lead_requests(self) -> list[RequestRecord]:
        """The recorded Non-Agent calls whose function is add_lead, oldest first."""
        with self._lock:
            return [
                r
                for r in self._lookup_records
                if re.sub(r"[^-_0-9a-zA-Z]", "", r.fields.get("function", "")) == "add_lead"
            ]

    @property
    def requests(self) -> list[RequestRecord]:
        """Snapshot of the recorded calls (the newest ``max_records``), oldest first."""
        with self._lock:
            return list(self._records)

    @property
    def call_count(self) -> int:
        """How many requests reached /agc/api.php (faulted ones included)."""
        with self._lock:
            return self._calls

    @property
    def lookups(self) -> list[RequestRecord]:
        """Snapshot of the recorded calls to the Non-Agent API, oldest first."""
        with self._lock:
            return list(self._lookup_records)

    @property
    def lookup_count(self) -> int:
        """How many requests reached /vicidial/non_agent_api.php (faulted ones included)."""
        with self._lock:
            return self._lookups

    def failed_logins(self, user: str) -> int:
        """VICIdial's ``failed_login_count`` for ``user`` (0 for an unknown user)."""
        with self._lock:
            row = self._tables.user(user)
            return row.failed_login_count if row is not None else 0

    def is_locked(self, user: str) -> bool:
        """Whether ``user`` is locked out right now (every login answers ``LOCK``)."""
        with self._lock:
            row = self._tables.user(user)
            return row is not None and is_locked(row, self._clock())

    # ---------------------------------------------------------- run-time changes

    def login(self, agent_user: str, campaign: str) -> None:
        """Log ``agent_user`` in on ``campaign`` (moving it if already logged in)."""
        with self._lock:
            self._tables.login(agent_user, campaign)

    def logout(self, agent_user: str) -> None:
        with self._lock:
            self._tables.logout(agent_user)

    def add_user(
        self,
        user: str,
        password: str,
        *,
        api_access: bool = True,
        functions: Sequence[str] = ("ALL_FUNCTIONS",),
        user_group: str = "ADMIN",
        active: bool = True,
        custom_three: str = "",
        user_level: int = 9,
        view_reports: bool = False,
        modify_leads: int = 1,
        api_list_restrict: bool = False,
    ) -> None:
        """Add (or replace the settings of) a user."""
        config = UserConfig(
            password=password,
            api_access=api_access,
            functions=tuple(functions),
            user_group=user_group,
            active=active,
            custom_three=custom_three,
            user_level=user_level,
            view_reports=view_reports,
            modify_leads=int(modify_leads),
            api_list_restrict=api_list_restrict,
        )
        with self._lock:
            self._tables.put_user(user, config, self._clock())

    def update_user(
        self,
        user: str,
        *,
        password: str | None = None,
        api_access: bool | None = None,
        functions: Sequence[str] | None = None,
        user_group: str | None = None,
        active: bool | None = None,
        custom_three: str | None = None,
        user_level: int | None = None,
        view_reports: bool | None = None,
        modify_leads: int | None = None,
        api_list_restrict: bool | None = None,
    ) -> None:
        """Change some settings of an existing user (KeyError if there is none)."""
        with self._lock:
            row = self._tables.user(user)
            if row is None:
                raise KeyError(f"no such user: {user!r}")
            old = row.config
            row.config = UserConfig(
                password=old.password if password is None else password,
                api_access=old.api_access if api_access is None else api_access,
                functions=old.functions if functions is None else tuple(functions),
                user_group=old.user_group if user_group is None else user_group,
                active=old.active if active is None else active,
                custom_three=old.custom_three if custom_three is None else custom_three,
                last_login=old.last_login,
                user_level=old.user_level if user_level is None else user_level,
                view_reports=old.view_reports if view_reports is None else view_reports,
                modify_leads=old.modify_leads if modify_leads is None else int(modify_leads),
                api_list_restrict=(
                    old.api_list_restrict if api_list_restrict is None else api_list_restrict
                ),
            )

    def set_user_group(self, name: str, *, allowed_campaigns: Sequence[str]) -> None:
        """Add (or change) a user group and the campaigns it may read (``ALL-CAMPAIGNS``
        for all). Once one group is set, groups never set do not exist."""
        with self._lock:
            self._tables.put_user_group(
                name, UserGroupConfig(allowed_campaigns=tuple(allowed_campaigns))
            )

    def set_password(self, user: str, password: str) -> None:
        """Change a user's password (KeyError if there is no such user)."""
        self.update_user(user, password=password)

    def unlock(self, user: str) -> None:
        """Clear the user's failed login count, as an admin would."""
        with self._lock:
            row = self._tables.user(user)
            if row is not None:
                row.failed_login_count = 0

    def set_api_active(self, active: bool) -> None:
        """The system setting ``vdc_agent_api_active``."""
        with self._lock:
            self._tables.api_active = active

    def set_non_latin(self, non_latin: bool) -> None:
        """The system setting ``use_non_latin`` (letters of every script kept; utf8mb3)."""
        with self._lock:
            self._tables.non_latin = non_latin

    def set_manual_dial_list(self, campaign: str, list_id: str | None) -> None:
        """Set a campaign's manual dial list (None = NULL), creating the campaign if needed."""
        with self._lock:
            found = self._tables.campaign(campaign)
            if found is None:
                self._tables.put_campaign(campaign, CampaignConfig(list_id))
            else:
                changed = dataclasses.replace(found[1], manual_dial_list_id=list_id)
                self._tables.put_campaign(found[0], changed)

    def set_other_campaign_dnc(self, campaign: str, other: str | None) -> None:
        """Make ``campaign`` check ``other``'s campaign DNC list (None: its own)."""
        with self._lock:
            found = self._tables.campaign(campaign)
            if found is None:
                raise KeyError(f"no such campaign: {campaign!r}")
            changed = dataclasses.replace(found[1], use_other_campaign_dnc=other or "")
            self._tables.put_campaign(found[0], changed)

    def set_local_call_time(self, campaign: str, call_time: str) -> None:
        """A campaign's ``local_call_time`` (add_lead's hopper time check)."""
        with self._lock:
            found = self._tables.campaign(campaign)
            if found is None:
                raise KeyError(f"no such campaign: {campaign!r}")
            changed = dataclasses.replace(found[1], local_call_time=call_time)
            self._tables.put_campaign(found[0], changed)

    def set_list(
        self,
        list_id: str | int,
        campaign_id: str,
        *,
        active: bool = True,
        local_call_time: str = "campaign",
    ) -> None:
        """Add (or change) a ``vicidial_lists`` row."""
        config = ListConfig(campaign_id, active, local_call_time)
        with self._lock:
            self._tables.lists.lists[list_key(str(list_id))] = config

    def remove_list(self, list_id: str | int) -> None:
        """Delete a list row the state (or set_list) made; a campaign's manual dial list
        stays a list while the campaign names it."""
        with self._lock:
            self._tables.lists.lists.pop(list_key(str(list_id)), None)

    def set_custom_fields(
        self, list_id: str | int, fields: Sequence[str | CustomFieldConfig] | None
    ) -> None:
        """Create the table ``custom_{list_id}`` with these field definitions (labels or
        :class:`CustomFieldConfig`); None drops the table and its rows."""
        key = list_key(str(list_id))
        with self._lock:
            lists = self._tables.lists
            if fields is None:
                lists.custom_fields.pop(key, None)
                lists.custom_rows.pop(key, None)
                return
            lists.custom_fields[key] = tuple(
                f if isinstance(f, CustomFieldConfig) else CustomFieldConfig(label=f)
                for f in fields
            )
            lists.custom_rows.setdefault(key, {})

    def set_custom_fields_enabled(self, enabled: bool) -> None:
        """The system setting ``custom_fields_enabled``."""
        with self._lock:
            self._tables.lists.custom_fields_enabled = enabled

    def set_nanpa_prefixes(self, rows: Sequence[NanpaPrefixConfig]) -> None:
        """Replace ``vicidial_nanpa_prefix_codes`` (fewer than 10 rows: "not loaded")."""
        with self._lock:
            self._tables.lists.nanpa_prefixes = list(rows)

    def set_next_lead_id(self, lead_id: int) -> None:
        """The next lead id (``ALTER TABLE vicidial_list AUTO_INCREMENT``)."""
        if lead_id < 1:
            raise ValueError("lead ids start at 1")
        with self._lock:
            self._tables.next_lead_id = lead_id

    def set_add_lead_race_window(self, seconds: float) -> None:
        """How long add_lead waits, the lock released, between its duplicate check and its
        INSERT (0, the default: atomic). The real server has no lock there: identical
        requests within the window all pass the check and all insert."""
        if seconds < 0:
            raise ValueError("the race window cannot be negative")
        with self._lock:
            self._race_s = seconds

    def remove_campaign(self, campaign: str) -> None:
        """Delete the campaign row: its agents then get "manual dial list undefined"."""
        with self._lock:
            self._tables.remove_campaign(campaign)

    def add_dnc(self, phone: str) -> None:
        with self._lock:
            self._tables.add_dnc(phone)

    def remove_dnc(self, phone: str) -> None:
        with self._lock:
            self._tables.remove_dnc(phone)

    def add_campaign_dnc(self, campaign: str, phone: str) -> None:
        with self._lock:
            self._tables.add_campaign_dnc(campaign, phone)

    def remove_campaign_dnc(self, campaign: str, phone: str) -> None:
        with self._lock:
            self._tables.remove_campaign_dnc(campaign, phone)

    def touch_lead(
        self, lead_id: int, *, status: str | None = None, called_count: int | None = None
    ) -> None:
        """Change a stored lead as dialling it would (KeyError if there is no such lead)."""
        with self._lock:
            for i, lead in enumerate(self._tables.leads):
                if lead.lead_id == lead_id:
                    self._tables.leads[i] = dataclasses.replace(
                        lead,
                        status=lead.status if status is None else status,
                        called_count=lead.called_count if called_count is None else called_count,
                    )
                    return
        raise KeyError(f"no lead {lead_id}")

    def release_held(self) -> int:
        """Let every request held by a ``hold_insert`` fault go on (and insert); how many."""
        loop = self._loop
        with self._lock:
            held, self._held = self._held, []
        if loop is not None:
            for event in held:
                loop.call_soon_threadsafe(event.set)
        return len(held)

    def reset_leads(self) -> None:
        """Delete every lead (with its hopper, callback, alternate phone and custom field
        rows); lead ids start again at the state's first id."""
        with self._lock:
            self._tables.leads.clear()
            self._tables.lists.clear_lead_rows()
            self._tables.next_lead_id = self._initial.first_lead_id

    def reset(self) -> None:
        """Everything back to the initial state: tables, lockouts, records, call count, faults."""
        with self._lock:
            self._tables = Tables.from_state(self._initial, self._clock())
            self._records.clear()
            self._calls = 0
            self._lookup_records.clear()
            self._lookups = 0
            self._plan.clear()
            self._plan.reseed(self._seed)
            self._race_s = 0.0

    # ----------------------------------------------------------- fault injection

    def set_latency(self, ms: float, *, max_ms: float | None = None) -> None:
        """Delay every answer by ``ms`` (or uniformly between ``ms`` and ``max_ms``)."""
        with self._lock:
            self._plan.set_latency(ms, max_ms)

    def set_failure_rate(
        self, rate: float, *, kind: str | Sequence[str] = "http_503", seed: int | None = None
    ) -> None:
        """Fail each call with probability ``rate`` with ``kind`` (or one of several kinds).

        ``seed`` reseeds the RNG (otherwise the constructor's seed stream continues).
        """
        with self._lock:
            self._plan.set_rate(rate, kind)
            if seed is not None:
                self._seed = seed
                self._plan.reseed(seed)

    def script_phone(self, phone: str, kinds: Sequence[str | None]) -> None:
        """The next calls carrying ``phone`` fail with ``kinds`` in order, then behave.

        ``None`` or ``"ok"`` in the sequence means one normal answer. The phone is
        matched as the server reads it (``value``, else ``phone_number``), ignoring
        formatting characters. Appends to any script already set for that phone.
        """
        with self._lock:
            self._plan.script_phone(phone, kinds)

    def script_calls(self, script: Mapping[int, str | None]) -> None:
        """Fail the calls with these numbers (1 = the first call since start/reset)."""
        with self._lock:
            self._plan.script_calls(script)

    def set_outage(self, kind: str | None) -> None:
        """While set, every call fails with ``kind``; None ends the outage."""
        with self._lock:
            self._plan.outage = None if kind is None else check_kind(kind)

    def set_stall_seconds(self, seconds: float) -> None:
        """How long ``stall``/``stall_after`` hold the connection before closing it."""
        if seconds < 0:
            raise ValueError("stall time cannot be negative")
        with self._lock:
            self._plan.stall_s = seconds

    def clear_faults(self) -> None:
        """No outage, no scripts, no failure rate, no latency."""
        with self._lock:
            self._plan.clear()

    # ------------------------------------------------------------------ serving

    async def _handle(self, request: HttpRequest) -> Reply:
        if request.path == API_PATH:
            nonagent = False
        elif request.path == NONAGENT_PATH:
            nonagent = True
        else:
            return HttpResponse(404, b"Not Found\n", _PHP_HEADERS[:1])
        query = parse_qsl(request.query, keep_blank_values=True, errors="replace")
        post: list[tuple[str, str]] = []
        content_type = request.headers.get("content-type", "").lower()
        # PHP fills $_POST only for form bodies: JSON bodies are ignored.
        if request.method == "POST" and content_type.startswith(
            "application/x-www-form-urlencoded"
        ):
            text = request.body.decode("utf-8", "replace")
            post = parse_qsl(text, keep_blank_values=True, errors="replace")
        fields, value = merge_fields(query, post)
        if nonagent:
            phone = re.sub(r"[^0-9,]", "", fields.get("phone_number", ""))
            # non_agent_api.php's $value: what its foreach over $_POST left behind.
            value = next(reversed(merge_fields((), post)[0].values()), "")
        else:
            phone = request_phone(fields, value, non_latin=self._tables.non_latin)

        held: asyncio.Event | None = None
        first: _Outcome | _Paused | None = None
        with self._lock:
            if nonagent:
                self._lookups += 1
                number = self._lookups
                fault = self._plan.choose_lookup(phone)
                delay = self._plan.latency_s(lookup=True)
            else:
                self._calls += 1
                number = self._calls
                fault = self._plan.choose(number, phone)
                delay = self._plan.latency_s()
            now = self._clock()
            if fault == "hold_insert":
                held = asyncio.Event()
                self._held.append(held)
                hold_s = delay + self._plan.stall_s
            else:
                first = self._respond(
                    fault, fields, value, now, delay, nonagent=nonagent, pause=self._race_s > 0
                )
        if isinstance(first, _Paused):
            # add_lead between its duplicate check and its INSERT, the lock released:
            # what MyISAM without a lock allows (two identical adds may both insert).
            await asyncio.sleep(first.gap_s)
            with self._lock:
                first = self._finish(fault, first.pending.finish(self._tables, now), delay)
        if first is not None:
            outcome = first
        else:
            assert held is not None
            # Stuck "in PHP": processed only once released or after the stall time.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(held.wait(), hold_s)
            with self._lock:
                if held in self._held:
                    self._held.remove(held)
                now = self._clock()
                done = self._respond(None, fields, value, now, 0.0, nonagent=nonagent)
                assert isinstance(done, _Outcome)
                outcome = _Outcome(
                    Hangup(hold_s=0.0, reset=False), 0, "", processed=True, lead_id=done.lead_id
                )
        with self._lock:
            record = RequestRecord(
                number=number,
                method=request.method,
                fields={k: v for k, v in fields.items() if k != "pass"},
                status=outcome.status,
                body=outcome.record_body,
                fault=fault,
                processed=outcome.processed,
                lead_id=outcome.lead_id,
                at=now,
            )
            (self._lookup_records if nonagent else self._records).append(record)
        if self._on_request is not None:
            try:
                self._on_request(record)
            except Exception:
                traceback.print_exc()
        return outcome.reply

    def _respond(
        self,
        fault: FaultKind | None,
        fields: dict[str, str],
        value: str,
        now: float,
        delay: float,
        *,
        nonagent: bool = False,
        pause: bool = False,
    ) -> _Outcome | _Paused:
        """Run one call (or its fault) against the tables; the caller holds the lock.

        With ``pause``, an add_lead that passed its checks comes back as :class:`_Paused`
        (the caller finishes it after the race window).
        """
        if fault in ("reset", "stall"):
            hold = delay + (self._plan.stall_s if fault == "stall" else 0.0)
            return _Outcome(Hangup(hold_s=hold, reset=fault == "reset"), 0, "")
        if fault is not None and fault in BEFORE_PROCESSING:
            password = fields.get("pass", "")
            status, body, extra = fault_response(
                fault, user=fields.get("user", ""), password=password
            )
            headers = (("Content-Type", "text/html; charset=utf-8"), *extra)
            shown = body.replace(f"pass='{password}'", "pass='***'") if password else body
            return _Outcome(HttpResponse(status, body.encode(), headers, delay), status, shown)

        failing = fault == "insert_failed"
        result: Answer | PendingInsert
        if nonagent:
            result = answer_nonagent(
                self._tables,
                fields,
                now,
                post_value=value,
                insert_fails=failing,
                pause_before_insert=pause,
            )
            if isinstance(result, PendingInsert):
                return _Paused(result, self._race_s)
        else:
            result = answer(self._tables, fields, value, now, insert_fails=failing)
        return self._finish(fault, result, delay)

    def _finish(self, fault: FaultKind | None, result: Answer, delay: float) -> _Outcome:
        """The HTTP outcome of a processed call (and of a fault that strikes after it)."""
        lead_id = result.lead.lead_id if result.lead is not None else None
        if fault is not None and fault in AFTER_PROCESSING:
            hold = delay + (self._plan.stall_s if fault == "stall_after" else 0.0)
            hangup = Hangup(hold_s=hold, reset=fault == "reset_after")
            return _Outcome(hangup, 0, "", processed=True, lead_id=lead_id)
        proxy = PROXY_AFTER_PROCESSING.get(fault) if fault is not None else None
        if proxy is not None:
            status, page, extra = fault_response(proxy)
            headers = (("Content-Type", "text/html; charset=utf-8"), *extra)
            response = HttpResponse(status, page.encode(), headers, delay)
            return _Outcome(response, status, page, processed=True, lead_id=lead_id)
        body, record_body = result.body, result.record_body
        if fault == "html_warning":
            body, record_body = PHP_WARNING_HTML + body, PHP_WARNING_HTML + record_body
        drip = DRIP_INTERVAL_S if fault == "drip_after" else 0.0
        response = HttpResponse(result.status, body.encode(), _PHP_HEADERS, delay, drip_s=drip)
        return _Outcome(response, result.status, record_body, processed=True, lead_id=lead_id)


class _Paused(NamedTuple):
    pending: PendingInsert
    gap_s: float


class _Outcome(NamedTuple):
    reply: Reply
    status: int  # 0: no HTTP answer
    record_body: str  # the body with any echoed password masked
    processed: bool = False
    lead_id: int | None = None


def _listen(host: str, port: int) -> socket.socket:
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    return socket.create_server((host, port), family=family, backlog=1024)
