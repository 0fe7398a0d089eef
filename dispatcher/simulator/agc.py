"""What VICIdial's ``agc/api.php`` answers for ``version`` and ``external_add_lead``.

Pure request -> answer logic over in-memory "tables"; no HTTP and no locking here
(the caller holds the simulator's lock). The order of checks and every answer string
follow shared/vicidial/external_add_lead.md, with details the spec leaves open taken
from agc/api.php itself (2.14-81 source):

- every function except ``version`` (and the ``coffee`` teapot) first goes through
  the source check, authentication and the API-active check; a function that is not
  implemented then answers with an empty body, like an unknown one;
- look-ups compare case-insensitively, as MySQL's default ``_ci`` collations do
  (user, password, agent, campaign, DNC numbers);
- authentication is VICIdial's ``user_authorization()`` with its lockout state
  machine: a failure with fewer than 10 recorded failures adds one; at 10 or more,
  the user is locked (``LOCK``) while the last login is less than 15 minutes old, and
  otherwise the count restarts at 1 and the last login is set to now. A correct
  password does not reset the count on this API path;
- field values are filtered and stored by :mod:`dispatcher.simulator.mangling`, in
  the mode of the system setting ``use_non_latin`` (:attr:`Tables.non_latin`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from dispatcher.simulator.listconfig import ListConfig
from dispatcher.simulator.listtables import ListTables, list_key
from dispatcher.simulator.mangling import (
    LEAD_FIELDS,
    RAW_SQL_FIELDS,
    sanitize,
    sql_literal,
    to_column,
)
from dispatcher.simulator.servertime import ServerTime
from dispatcher.simulator.state import CampaignConfig, SimulatorState, UserConfig, UserGroupConfig

__all__ = [
    "API_BUILD",
    "API_VERSION",
    "LOCK_ATTEMPTS",
    "LOCK_SECONDS",
    "Answer",
    "StoredLead",
    "Tables",
    "answer",
    "is_locked",
    "merge_fields",
]

API_VERSION = "2.14-82"
API_BUILD = "250122-1010"
LOCK_ATTEMPTS = 10  # $LOCK_trigger_attempts in functions.php
LOCK_SECONDS = 900  # failed login lockout time is 15 minutes

_COFFEE = frozenset({"coffee", "start_coffee", "make_coffee", "brew_coffee"})
# The lead fields stored in StoredLead.fields (phone_number and phone_code have attributes).
_STORED_FIELDS = tuple(f for f in LEAD_FIELDS if f not in ("phone_number", "phone_code"))


@dataclass(frozen=True)
class StoredLead:
    """One row the simulator inserted into ``vicidial_list``.

    ``fields`` holds the lead fields that were sent (other than phone_number and
    phone_code), as stored: sanitised, truncated, coerced. ``agent_user`` is the agent
    whose campaign gave the list (after ``alt_user`` resolution); ``user`` is the API
    user, which VICIdial stores in the row.
    """

    lead_id: int
    list_id: str
    campaign: str
    agent_user: str
    phone_number: str
    phone_code: str
    fields: dict[str, str]
    user: str = ""
    status: str = "NEW"
    entry_date: str = ""
    #: how often it was dialled (the Non-Agent API shows it; see Simulator.touch_lead)
    called_count: int = 0
    #: the DECIMAL(4,2) column: add_lead computes it, external_add_lead never sets it
    gmt_offset_now: str = "0.00"
    #: add_lead's ``entry_list_id`` (the list whose custom fields hold its values)
    entry_list_id: str = "0"
    #: which API call added it: ``external_add_lead`` or ``add_lead``
    function: str = "external_add_lead"


@dataclass
class UserRow:
    """A user and VICIdial's lockout bookkeeping for it."""

    user: str
    config: UserConfig
    failed_login_count: int = 0
    last_login: float = 0.0


@dataclass(frozen=True)
class Answer:
    """What the server sends back; ``record_body`` is ``body`` with the password masked."""

    status: int
    body: str
    record_body: str
    lead: StoredLead | None = None


def _fold(text: str) -> str:
    return text.lower()


@dataclass
class Tables:
    """The simulator's database, built from a :class:`SimulatorState`.

    Keys are case-folded; the original spelling is kept in the values.
    """

    users: dict[str, UserRow] = field(default_factory=dict)
    agents: dict[str, tuple[str, str]] = field(default_factory=dict)
    campaigns: dict[str, tuple[str, CampaignConfig]] = field(default_factory=dict)
    dnc: set[str] = field(default_factory=set)
    campaign_dnc: dict[str, set[str]] = field(default_factory=dict)
    api_active: bool = True
    non_latin: bool = False  # the system setting use_non_latin
    leads: list[StoredLead] = field(default_factory=list)
    next_lead_id: int = 1
    #: vicidial_user_groups (case-folded name -> (name, row)); None: every group
    #: exists and reads every campaign
    user_groups: dict[str, tuple[str, UserGroupConfig]] | None = None
    #: lists, time-zone tables, call times, custom fields, hopper, callbacks (add_lead)
    lists: ListTables = field(default_factory=ListTables)
    #: PHP's time zone and the servers row's local_gmt
    time: ServerTime = field(default_factory=ServerTime)

    @classmethod
    def from_state(cls, state: SimulatorState, now: float) -> Tables:
        tables = cls(
            api_active=state.api_active,
            non_latin=state.non_latin,
            next_lead_id=state.first_lead_id,
        )
        for name, user in state.users.items():
            tables.put_user(name, user, now)
        for agent, campaign in state.agents.items():
            tables.login(agent, campaign)
        for name, camp in state.campaigns.items():
            tables.put_campaign(name, camp)
        if state.user_groups is not None:
            tables.user_groups = {}
            for name, group in state.user_groups.items():
                tables.put_user_group(name, group)
        tables.dnc = {_fold(phone) for phone in state.dnc}
        for name, phones in state.campaign_dnc.items():
            tables.campaign_dnc[_fold(name)] = {_fold(phone) for phone in phones}
        tables.lists = ListTables(
            lists=dict(state.lists),
            phone_codes=list(state.phone_codes),
            postal_codes=list(state.postal_codes),
            nanpa_prefixes=list(state.nanpa_prefixes),
            call_times=dict(state.call_times),
            custom_fields=dict(state.custom_fields),
            custom_fields_enabled=state.custom_fields_enabled,
            custom_rows={list_id: {} for list_id in state.custom_fields},
        )
        tables.time = ServerTime(state.php_timezone, state.servers_local_gmt)
        return tables

    def list_rows(self) -> dict[str, ListConfig]:
        """The rows of vicidial_lists (list id -> row): the state's ``lists``, and each
        campaign's manual dial list (of the first campaign naming it) not among them."""
        rows: dict[str, ListConfig] = {}
        for name, camp in self.campaigns.values():
            list_id = camp.manual_dial_list_id
            if list_id and list_id.isdigit():
                rows.setdefault(list_key(list_id), ListConfig(campaign_id=name))
        rows.update(self.lists.lists)
        return rows

    def list_row(self, list_id: str) -> ListConfig | None:
        """The list's row, the id compared as a number like SQL does (``00101`` is 101)."""
        return self.list_rows().get(list_key(list_id))

    def put_user(self, name: str, config: UserConfig, now: float) -> None:
        old = self.users.get(_fold(name))
        if old is not None:  # keep the lockout bookkeeping when a user is edited
            old.config = config
            return
        last_login = now if config.last_login is None else config.last_login
        self.users[_fold(name)] = UserRow(name, config, last_login=last_login)

    def user(self, name: str) -> UserRow | None:
        return self.users.get(_fold(name))

    def login(self, agent: str, campaign: str) -> None:
        self.agents[_fold(agent)] = (agent, campaign)

    def logout(self, agent: str) -> None:
        self.agents.pop(_fold(agent), None)

    def put_user_group(self, name: str, config: UserGroupConfig) -> None:
        if self.user_groups is None:
            self.user_groups = {}
        self.user_groups[_fold(name)] = (name, config)

    def user_group(self, name: str) -> UserGroupConfig | None:
        """The group's row; None if it does not exist (every group exists while the
        state names none)."""
        if self.user_groups is None:
            return UserGroupConfig()
        found = self.user_groups.get(_fold(name))
        return found[1] if found is not None else None

    def put_campaign(self, name: str, config: CampaignConfig) -> None:
        self.campaigns[_fold(name)] = (name, config)

    def campaign(self, name: str) -> tuple[str, CampaignConfig] | None:
        return self.campaigns.get(_fold(name))

    def remove_campaign(self, name: str) -> None:
        self.campaigns.pop(_fold(name), None)

    def add_dnc(self, phone: str) -> None:
        self.dnc.add(_fold(phone))

    def remove_dnc(self, phone: str) -> None:
        self.dnc.discard(_fold(phone))

    def add_campaign_dnc(self, campaign: str, phone: str) -> None:
        self.campaign_dnc.setdefault(_fold(campaign), set()).add(_fold(phone))

    def remove_campaign_dnc(self, campaign: str, phone: str) -> None:
        self.campaign_dnc.get(_fold(campaign), set()).discard(_fold(phone))


def merge_fields(
    query: Iterable[tuple[str, str]], post: Iterable[tuple[str, str]]
) -> tuple[dict[str, str], str]:
    """Combine query-string and form-body fields the way PHP and agc/api.php do.

    Returns ``(fields, value)``: fields with the query string winning per field, and
    the raw ``value`` the script ends up with -- including the POST quirk: the script's
    ``foreach($_POST as $key=>$value)`` leaves ``$value`` holding the LAST form field's
    value, and only a ``value`` field (query first, then body) overrides it.
    """
    post_fields: dict[str, str] = {}
    for key, val in post:
        post_fields[_php_key(key)] = val  # a repeated key keeps its first position, like PHP
    fields = dict(post_fields)
    query_fields: dict[str, str] = {}
    for key, val in query:
        query_fields[_php_key(key)] = val
    fields.update(query_fields)
    if "value" in query_fields:
        value = query_fields["value"]
    elif "value" in post_fields:
        value = post_fields["value"]
    elif post_fields:
        value = next(reversed(post_fields.values()))
    else:
        value = ""
    return fields, value


def _php_key(key: str) -> str:
    # PHP turns dots and spaces in variable names into underscores.
    return key.replace(".", "_").replace(" ", "_")


def _reply(*lines: str) -> Answer:
    body = "".join(line + "\n" for line in lines)
    return Answer(200, body, body)


def answer(
    tables: Tables,
    fields: dict[str, str],
    value: str,
    now: float,
    *,
    insert_fails: bool = False,
) -> Answer:
    """Answer one request to agc/api.php, updating ``tables`` as the server would.

    ``fields`` and ``value`` come from :func:`merge_fields`; ``now`` is epoch seconds.
    With ``insert_fails`` the INSERT affects no row ("lead insertion failed").
    """
    function = sanitize("function", fields.get("function", ""))
    if function == "version":
        stamp = tables.time.stamp(now)  # PHP's date(): its time zone, not the host's
        return _reply(f"VERSION: {API_VERSION}|BUILD: {API_BUILD}|DATE: {stamp}|EPOCH: {int(now)}")
    if function in _COFFEE:  # agc/api.php really has this (no trailing newline)
        body = f"Coffee: {function}|Error 418 I'm a teapot"
        return Answer(418, body, body)

    source = sanitize("source", fields.get("source", ""))
    if len(source) < 2:
        return _reply(f"ERROR: Invalid Source - {source}")

    user = sanitize("user", fields.get("user", ""))
    password = sanitize("pass", fields.get("pass", ""))
    auth_message = _authorize(tables, user, password, now)
    row = tables.user(user)
    auth = 1 if auth_message == "GOOD" else 0
    auth_api = 1 if row is not None and row.config.api_access else 0
    if len(user) < 2 or len(password) < 2 or auth == 0 or auth_api == 0:

        def auth_line(shown: str) -> str:
            message = auth_message.replace(f"pass='{password}'", f"pass='{shown}'")
            return (
                f"ERROR: Invalid Username/Password: |{user}|{shown}|{auth}|{auth_api}|{message}|\n"
            )

        # The real answer echoes the password; the simulator's records must not keep it.
        return Answer(200, auth_line(password), auth_line("<redacted>"))

    if not tables.api_active:
        return _reply("ERROR: System API NOT ACTIVE")

    assert row is not None  # auth_api == 1 implies the row exists
    if function == "external_add_lead":
        return _external_add_lead(tables, user, row, fields, value, now, insert_fails)
    return _reply()  # unknown (or not simulated) function: empty body


def _authorize(tables: Tables, user: str, password: str, now: float) -> str:
    """VICIdial's ``user_authorization()`` as called by agc/api.php (API call, no update)."""
    epoch = int(now)
    lock_over = epoch - LOCK_SECONDS
    row = tables.user(user)
    if (
        row is not None
        and row.config.active
        and _fold(row.config.password) == _fold(password)
        and (row.failed_login_count < LOCK_ATTEMPTS or row.last_login < lock_over)
    ):
        return "GOOD"
    stmt = (
        f"SELECT count(*) from vicidial_users where user='{user}' and pass='{password}' "
        f"and user_level > 0 and active='Y' and ( (failed_login_count < {LOCK_ATTEMPTS}) "
        f"or (UNIX_TIMESTAMP(last_login_date) < {lock_over}) );"
    )
    message = f"BAD|0|api|{stmt}"
    if row is not None:
        if row.failed_login_count < LOCK_ATTEMPTS:
            row.failed_login_count += 1
        elif lock_over > row.last_login:
            row.last_login = epoch
            row.failed_login_count = 1
        else:
            message = "LOCK"
    return message


def is_locked(row: UserRow, now: float) -> bool:
    """Whether every login of this user is refused right now (the LOCK state)."""
    return row.failed_login_count >= LOCK_ATTEMPTS and not (
        row.last_login < int(now) - LOCK_SECONDS
    )


def _external_add_lead(
    tables: Tables,
    user: str,
    api_user: UserRow,
    fields: dict[str, str],
    raw_value: str,
    now: float,
    insert_fails: bool,
) -> Answer:
    non_latin = tables.non_latin

    def get(name: str) -> str:
        return sanitize(name, fields.get(name, ""), non_latin=non_latin)

    agent_user = get("agent_user")
    alt_user = get("alt_user")
    phone_code = get("phone_code")
    value = sanitize("value", raw_value, non_latin=non_latin)
    if not value and len(get("phone_number")) > 1:
        value = get("phone_number")
    if (len(agent_user) < 2 and len(alt_user) < 2) or not phone_code or len(value) < 2:
        return _reply(
            f"ERROR: external_add_lead not valid - {value}|{phone_code}|{agent_user}|{alt_user}"
        )

    allowed = " " + " ".join(api_user.config.functions) + " "
    if " external_add_lead " not in allowed and "ALL_FUNCTIONS" not in allowed:
        return _reply(
            "ERROR: auth USER DOES NOT HAVE PERMISSION TO USE THIS FUNCTION - "
            f"{value}|{user}|external_add_lead|{api_user.config.user_group}"
        )

    lines: list[str] = []
    if len(alt_user) > 1:
        # select user from vicidial_users where custom_three='$alt_user' order by user
        found = sorted(
            (
                row.user
                for row in tables.users.values()
                if _fold(row.config.custom_three) == _fold(alt_user)
            ),
            key=_fold,
        )
        if found:
            agent_user = found[0]
        else:
            lines.append(f"ERROR: no user found - {alt_user}")  # and the script carries on

    live = tables.agents.get(_fold(agent_user))
    if live is None:
        return _reply(*lines, f"ERROR: agent_user is not logged in - {agent_user}")
    campaign_row = tables.campaign(live[1])
    if campaign_row is None:
        # $campaign_id is not set yet at this point, hence the empty middle field.
        return _reply(*lines, f"ERROR: campaign manual dial list undefined - {value}||{agent_user}")
    campaign_id, campaign = campaign_row
    list_id = campaign.manual_dial_list_id or ""  # SQL NULL prints as an empty string

    dnc_found = get("dnc_check") in ("YES", "Y") and _fold(value) in tables.dnc
    dnc_campaign = campaign.use_other_campaign_dnc or campaign_id
    camp_dnc_found = get("campaign_dnc_check") in ("YES", "Y") and _fold(
        value
    ) in tables.campaign_dnc.get(_fold(dnc_campaign), set())
    if dnc_found or camp_dnc_found:
        if dnc_found:
            lines.append(f"ERROR: add_lead PHONE NUMBER IN DNC - {value}|{agent_user}")
        if camp_dnc_found:
            lines.append(
                f"ERROR: add_lead PHONE NUMBER IN CAMPAIGN DNC - {value}|{campaign_id}|{agent_user}"
            )
        return _reply(*lines)

    sent = {name: get(name) for name in _STORED_FIELDS if name in fields}
    vendor_id = get("vendor_id")
    if vendor_id:
        sent["vendor_lead_code"] = vendor_id
    for name in RAW_SQL_FIELDS:
        if name in sent:
            literal = sql_literal(sent[name])
            if literal is None:
                # The INSERT is a syntax error; PHP 8.1+ mysqli throws: a fatal error, HTTP 500.
                return Answer(500, "", "")
            sent[name] = literal

    if insert_fails:
        lines.append(f"ERROR: lead insertion failed - {value}|{campaign_id}|{list_id}|{agent_user}")
        return _reply(*lines)

    lead = StoredLead(
        lead_id=tables.next_lead_id,
        list_id=list_id,
        campaign=campaign_id,
        agent_user=agent_user,
        phone_number=to_column("phone_number", value, non_latin=non_latin),
        phone_code=to_column("phone_code", phone_code, non_latin=non_latin),
        fields={name: to_column(name, val, non_latin=non_latin) for name, val in sent.items()},
        user=user,
        entry_date=tables.time.stamp(now),
    )
    tables.next_lead_id += 1
    tables.leads.append(lead)
    lines.append(
        f"SUCCESS: lead added - {value}|{campaign_id}|{list_id}|{lead.lead_id}|{agent_user}"
    )
    reply = _reply(*lines)
    return Answer(reply.status, reply.body, reply.record_body, lead)
