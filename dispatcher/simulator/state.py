"""The simulator's configuration: users, logged-in agents, campaigns, DNC lists.

This is the JSON "state file" of DESIGN.md (every key optional)::

    {
      "users": {"6666": {"pass": "1234", "api_access": true, "functions": ["ALL_FUNCTIONS"],
                         "user_group": "ADMIN", "user_level": 9, "view_reports": true,
                         "modify_leads": true}},
      "agents": {"1000": "TESTCAMP", "1003": "GHOST"},
      "campaigns": {"TESTCAMP": {"manual_dial_list_id": "101"},
                    "NOLIST": {"manual_dial_list_id": null}},
      "dnc": ["7275550000"],
      "campaign_dnc": {"TESTCAMP": ["7275550001"]},
      "api_active": true,
      "non_latin": false
    }

``non_latin`` is VICIdial's system setting ``use_non_latin`` (default false): with it,
the lead's text fields keep letters of every script and characters above U+FFFF are
stored as ``?`` (see :mod:`dispatcher.simulator.mangling`).

Per user, what the Non-Agent API's permissions look at (``vicidial/non_agent_api.php``):
``user_level`` (0-9, default 9; its login needs 7 or more), ``view_reports`` (default
false, as on VICIdial's seed user 6666), ``modify_leads`` (true = 1, false = 0, or the
number 0-5; default true), ``api_list_restrict`` (default false: with it the user's
group row must exist for ``lead_search`` and ``update_lead``, and ``lead_all_info``
prints a ``LIST NOT FOUND`` line for each lead it skips).

User groups (``vicidial_user_groups``), as far as ``lead_all_info`` cares: top level
``"user_groups": {"AGENTS": {"allowed_campaigns": ["TESTCAMP"]}}`` (or
``["ALL-CAMPAIGNS"]``, the default of a group). A lead is shown only when its list is a
list (a campaign's manual dial list here: list 0 never is) whose campaign the user's
group may read. Without the key every group exists and reads every campaign; with
it, exactly the groups named exist (a user of another group sees no lead at all).

Extra keys, all optional: per user ``active`` (default true), ``custom_three`` (what
``alt_user`` is matched against), ``last_login`` (epoch seconds of the user's last
login, the anchor of VICIdial's lockout window; default: when the simulator is
created or reset);
per campaign ``use_other_campaign_dnc`` (add_lead's campaign DNC check and the agent
API's use it) and ``local_call_time`` (default ``9am-9pm``; add_lead's hopper time
check); top level ``first_lead_id`` (default 1).
A campaign may also be given as just its list id: ``"campaigns": {"X": "101"}``.

For the Non-Agent API's ``add_lead`` (shared/vicidial/non_agent_add_lead.md), all
optional and described in :mod:`dispatcher.simulator.listconfig`::

    "lists": {"101": {"campaign_id": "TESTCAMP", "local_call_time": "campaign"}},
    "phone_codes": [{"country_code": 1, "areacode": "727", "state": "FL",
                     "gmt_offset": "-5.00", "dst": true, "dst_range": "SSM-FSN"}],
    "postal_codes": [], "nanpa_prefixes": [],
    "custom_fields": {"102": [{"label": "favorite_color"}]},
    "custom_fields_enabled": true,
    "call_times": {"9am-6pm": {"start": 900, "stop": 1800}},
    "servers_local_gmt": "-5.00",
    "php_timezone": "UTC"

``lists`` are the rows of ``vicidial_lists`` (each campaign's manual dial list is a
list of that campaign too); ``custom_fields_enabled`` is the system setting (default
false, as VICIdial ships); ``servers_local_gmt`` is the active ``servers`` row's
``local_gmt`` (default ``-5.00``; null: no row), reported by the Non-Agent ``version``
and used by add_lead's DST arithmetic; ``php_timezone`` is PHP's time zone (an IANA
name; default null: this machine's), the clock of every date VICIdial prints or
stores (``version``'s DATE, entry dates, duplicate-check windows, callbacks). Users'
``api_list_restrict`` applies to add_lead too (the list must belong to one of the
group's campaigns); add_lead needs ``modify_leads`` 1-4 and ``user_level`` 8+.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dispatcher.simulator.listconfig import (
    DEFAULT_CALL_TIMES,
    DEFAULT_PHONE_CODES,
    CallTimeConfig,
    CustomFieldConfig,
    ListConfig,
    NanpaPrefixConfig,
    PhoneCodeConfig,
    PostalCodeConfig,
    call_times_to_json,
    custom_fields_to_json,
    lists_to_json,
    nanpa_to_json,
    phone_codes_to_json,
    postal_codes_to_json,
    read_call_times,
    read_custom_fields,
    read_lists,
    read_nanpa,
    read_phone_codes,
    read_postal_codes,
)
from dispatcher.simulator.servertime import DEFAULT_LOCAL_GMT, check_local_gmt, check_timezone

__all__ = ["ALL_CAMPAIGNS", "CampaignConfig", "SimulatorState", "UserConfig", "UserGroupConfig"]

# VICIdial's schema default for vicidial_campaigns.manual_dial_list_id.
DEFAULT_MANUAL_DIAL_LIST = "998"
#: The value of a user group's allowed_campaigns that lets it read every campaign.
ALL_CAMPAIGNS = "ALL-CAMPAIGNS"


@dataclass(frozen=True)
class UserConfig:
    """One row of ``vicidial_users`` as far as the agent and Non-Agent APIs care.

    ``functions`` is VICIdial's ``api_allowed_functions``: ``ALL_FUNCTIONS`` or the
    function names the user may call. ``api_access`` is ``vdc_agent_api_access``;
    ``user_level``, ``view_reports`` and ``modify_leads`` (0-5) are what the Non-Agent
    API's permission checks read. The password is left out of ``repr``.
    """

    password: str = field(repr=False)
    api_access: bool = True
    functions: tuple[str, ...] = ("ALL_FUNCTIONS",)
    user_group: str = "ADMIN"
    active: bool = True
    custom_three: str = ""
    last_login: float | None = None
    user_level: int = 9
    view_reports: bool = False
    modify_leads: int = 1
    #: vicidial_users.api_list_restrict: the Non-Agent API checks the user group's
    #: lists (lead_search and update_lead need the group row; lead_all_info prints a
    #: LIST NOT FOUND line for each lead it skips)
    api_list_restrict: bool = False


@dataclass(frozen=True)
class UserGroupConfig:
    """One row of ``vicidial_user_groups`` as far as the Non-Agent API's look-ups care.

    ``allowed_campaigns``: the campaigns whose lists the group's users may read
    (``lead_all_info``), or ``ALL-CAMPAIGNS``.
    """

    allowed_campaigns: tuple[str, ...] = (ALL_CAMPAIGNS,)


@dataclass(frozen=True)
class CampaignConfig:
    """One row of ``vicidial_campaigns``; ``manual_dial_list_id`` None is SQL NULL."""

    manual_dial_list_id: str | None = DEFAULT_MANUAL_DIAL_LIST
    use_other_campaign_dnc: str = ""
    #: a vicidial_call_times id (VICIdial's default): add_lead's hopper time check
    local_call_time: str = "9am-9pm"


@dataclass
class SimulatorState:
    """Everything the simulated VICIdial knows before the first request.

    ``agents`` maps each logged-in agent to the campaign it is on; an agent not listed
    is not logged in, and a campaign missing from ``campaigns`` gives "campaign manual
    dial list undefined". Build one with :meth:`demo`, :meth:`from_dict` or
    :meth:`from_file`, or directly.
    """

    users: dict[str, UserConfig] = field(default_factory=dict)
    agents: dict[str, str] = field(default_factory=dict)
    campaigns: dict[str, CampaignConfig] = field(default_factory=dict)
    dnc: list[str] = field(default_factory=list)
    campaign_dnc: dict[str, list[str]] = field(default_factory=dict)
    api_active: bool = True
    non_latin: bool = False
    first_lead_id: int = 1
    #: vicidial_user_groups; None (the default): every user's group exists and may read
    #: every campaign (ALL-CAMPAIGNS). Given: exactly these rows exist.
    user_groups: dict[str, UserGroupConfig] | None = None
    #: vicidial_lists rows (list id -> row), besides the campaigns' manual dial lists
    lists: dict[str, ListConfig] = field(default_factory=dict)
    phone_codes: tuple[PhoneCodeConfig, ...] = DEFAULT_PHONE_CODES
    postal_codes: tuple[PostalCodeConfig, ...] = ()
    nanpa_prefixes: tuple[NanpaPrefixConfig, ...] = ()
    #: list id -> its vicidial_lists_fields (the list has a custom_{list} table)
    custom_fields: dict[str, tuple[CustomFieldConfig, ...]] = field(default_factory=dict)
    custom_fields_enabled: bool = False
    call_times: dict[str, CallTimeConfig] = field(default_factory=lambda: dict(DEFAULT_CALL_TIMES))
    #: the active servers row's local_gmt; None: no such row
    servers_local_gmt: str | None = DEFAULT_LOCAL_GMT
    #: PHP's time zone (IANA name); None: this machine's
    php_timezone: str | None = None

    @classmethod
    def demo(cls) -> SimulatorState:
        """The documented default state (what ``dispatcher simulate`` serves without --state).

        Users (password ``1234`` for all):

        - ``6666``: API user, ALL_FUNCTIONS, group ADMIN, level 9, View Reports and
          Modify Leads on (so the Non-Agent API's lead look-ups work) -- the one to
          call with;
        - ``6667``: password right but no agent-API access (auth message ``GOOD``);
        - ``6668``: API access, but may only call ``version`` (permission error);
        - ``1000``: an agent user (no API access) with ``custom_three`` ``EXT1000``,
          so ``alt_user=EXT1000`` resolves to agent 1000.

        Logged-in agents: ``1000`` on TESTCAMP, ``1001`` on NOLIST, ``1002`` on OTHERDNC,
        ``1003`` on GHOST (a campaign that does not exist: "manual dial list undefined").

        Campaigns: TESTCAMP (manual dial list 101), NOLIST (list NULL: leads are added
        with an empty list id), OTHERDNC (list 102, uses TESTCAMP's campaign DNC list).

        DNC: system ``7275550000`` and ``7275550002``; TESTCAMP's campaign DNC
        ``7275550001`` and ``7275550002`` (so ``7275550002`` hits both). API active,
        lead ids start at 1.

        Lists (for the Non-Agent API's add_lead): 101 (TESTCAMP), 102 (OTHERDNC, with the
        custom field ``favorite_color``), 998 and 999 (TESTCAMP, inactive as VICIdial
        ships them; 999 is add_lead's default list); custom fields enabled. The phone
        codes of the facts (1/727 FL -5.00, 1/808 HI -10.00, 44 +0.00, 61 NSW +10.00),
        no NANPA prefix data, VICIdial's six call times, servers row ``local_gmt``
        -5.00, PHP in this machine's time zone.
        """
        return cls(
            users={
                "6666": UserConfig(password="1234", view_reports=True),
                "6667": UserConfig(password="1234", api_access=False),
                "6668": UserConfig(password="1234", functions=("version",)),
                "1000": UserConfig(
                    password="1234", api_access=False, user_group="AGENTS", custom_three="EXT1000"
                ),
            },
            agents={"1000": "TESTCAMP", "1001": "NOLIST", "1002": "OTHERDNC", "1003": "GHOST"},
            campaigns={
                "TESTCAMP": CampaignConfig(manual_dial_list_id="101"),
                "NOLIST": CampaignConfig(manual_dial_list_id=None),
                "OTHERDNC": CampaignConfig(
                    manual_dial_list_id="102", use_other_campaign_dnc="TESTCAMP"
                ),
            },
            dnc=["7275550000", "7275550002"],
            campaign_dnc={"TESTCAMP": ["7275550001", "7275550002"]},
            lists={
                "101": ListConfig(campaign_id="TESTCAMP"),
                "102": ListConfig(campaign_id="OTHERDNC"),
                "998": ListConfig(campaign_id="TESTCAMP", active=False),
                "999": ListConfig(campaign_id="TESTCAMP", active=False),
            },
            custom_fields={"102": (CustomFieldConfig(label="favorite_color"),)},
            custom_fields_enabled=True,
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SimulatorState:
        """Build a state from the JSON shape above; every key is optional.

        Raises ValueError naming the offending key (e.g. ``users.6666.api_access``).
        """
        reader = _Reader()
        return reader.state(data)

    @classmethod
    def from_file(cls, path: str | Path) -> SimulatorState:
        """Read a JSON state file. Any problem (unreadable, not JSON, bad key) is a ValueError."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"cannot read state file {path}: {exc.strerror or exc}") from exc
        except UnicodeDecodeError as exc:
            raise ValueError(f"state file {path} is not UTF-8 text") from exc
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"state file {path} is not valid JSON: {exc.msg} (line {exc.lineno}, "
                f"column {exc.colno})"
            ) from exc
        try:
            return cls.from_dict(data)
        except ValueError as exc:
            raise ValueError(f"state file {path}: {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape of this state (passwords included: it is a configuration)."""
        return {
            "users": {
                name: {
                    "pass": user.password,
                    "api_access": user.api_access,
                    "functions": list(user.functions),
                    "user_group": user.user_group,
                    "active": user.active,
                    "custom_three": user.custom_three,
                    "user_level": user.user_level,
                    "view_reports": user.view_reports,
                    "modify_leads": user.modify_leads,
                    "api_list_restrict": user.api_list_restrict,
                    **({"last_login": user.last_login} if user.last_login is not None else {}),
                }
                for name, user in self.users.items()
            },
            "agents": dict(self.agents),
            "campaigns": {
                name: {
                    "manual_dial_list_id": camp.manual_dial_list_id,
                    "use_other_campaign_dnc": camp.use_other_campaign_dnc,
                    "local_call_time": camp.local_call_time,
                }
                for name, camp in self.campaigns.items()
            },
            "dnc": list(self.dnc),
            "campaign_dnc": {name: list(phones) for name, phones in self.campaign_dnc.items()},
            "api_active": self.api_active,
            "non_latin": self.non_latin,
            "first_lead_id": self.first_lead_id,
            **(
                {
                    "user_groups": {
                        name: {"allowed_campaigns": list(group.allowed_campaigns)}
                        for name, group in self.user_groups.items()
                    }
                }
                if self.user_groups is not None
                else {}
            ),
            "lists": lists_to_json(self.lists),
            "phone_codes": phone_codes_to_json(self.phone_codes),
            "postal_codes": postal_codes_to_json(self.postal_codes),
            "nanpa_prefixes": nanpa_to_json(self.nanpa_prefixes),
            "custom_fields": custom_fields_to_json(self.custom_fields),
            "custom_fields_enabled": self.custom_fields_enabled,
            "call_times": call_times_to_json(self.call_times),
            "servers_local_gmt": self.servers_local_gmt,
            "php_timezone": self.php_timezone,
        }

    def copy(self) -> SimulatorState:
        """A deep copy, so a running simulator never shares lists with its caller."""
        return copy.deepcopy(self)

    def summary(self) -> str:
        """One line for humans, e.g. for the CLI's start-up message."""
        agents = ", ".join(f"{agent}@{camp}" for agent, camp in self.agents.items()) or "none"
        api_users = [name for name, user in self.users.items() if user.api_access and user.active]
        return (
            f"{len(self.users)} users (API: {', '.join(api_users) or 'none'}); "
            f"agents logged in: {agents}; {len(self.campaigns)} campaigns; "
            f"{len(self.dnc)} system DNC, {sum(map(len, self.campaign_dnc.values()))} campaign DNC "
            f"numbers; API {'active' if self.api_active else 'NOT active'}"
            f"{'; use_non_latin' if self.non_latin else ''}; "
            f"{len(self.lists)} lists ({len(self.custom_fields)} with custom fields"
            f"{'' if self.custom_fields_enabled else ', disabled'})"
        )


_TOP_KEYS = frozenset(
    {
        "users",
        "agents",
        "campaigns",
        "dnc",
        "campaign_dnc",
        "api_active",
        "non_latin",
        "first_lead_id",
        "user_groups",
        "lists",
        "phone_codes",
        "postal_codes",
        "nanpa_prefixes",
        "custom_fields",
        "custom_fields_enabled",
        "call_times",
        "servers_local_gmt",
        "php_timezone",
    }
)
_USER_KEYS = frozenset(
    {
        "pass",
        "api_access",
        "functions",
        "user_group",
        "active",
        "custom_three",
        "last_login",
        "user_level",
        "view_reports",
        "modify_leads",
        "api_list_restrict",
    }
)
_GROUP_KEYS = frozenset({"allowed_campaigns"})
_CAMPAIGN_KEYS = frozenset({"manual_dial_list_id", "use_other_campaign_dnc", "local_call_time"})


class _Reader:
    """Validates the JSON shape, naming the dotted key of the first problem."""

    def state(self, data: Any) -> SimulatorState:
        top = self._object(data, "state")
        self._known(top, _TOP_KEYS, "")
        state = SimulatorState()
        for name, raw in self._object(top.get("users", {}), "users").items():
            state.users[name] = self._user(raw, f"users.{name}")
        for agent, camp in self._object(top.get("agents", {}), "agents").items():
            state.agents[agent] = self._text(camp, f"agents.{agent}")
        for name, raw in self._object(top.get("campaigns", {}), "campaigns").items():
            state.campaigns[name] = self._campaign(raw, f"campaigns.{name}")
        state.dnc = self._phones(top.get("dnc", []), "dnc")
        for name, phones in self._object(top.get("campaign_dnc", {}), "campaign_dnc").items():
            state.campaign_dnc[name] = self._phones(phones, f"campaign_dnc.{name}")
        state.api_active = self._bool(top.get("api_active", True), "api_active")
        state.non_latin = self._bool(top.get("non_latin", False), "non_latin")
        first = top.get("first_lead_id", 1)
        if isinstance(first, bool) or not isinstance(first, int) or first < 1:
            raise ValueError(f"first_lead_id: expected a whole number >= 1, got {first!r}")
        state.first_lead_id = first
        if "user_groups" in top:
            groups = self._object(top["user_groups"], "user_groups")
            state.user_groups = {
                name: self._group(raw, f"user_groups.{name}") for name, raw in groups.items()
            }
        state.lists = read_lists(top.get("lists", {}), "lists")
        if "phone_codes" in top:
            state.phone_codes = read_phone_codes(top["phone_codes"], "phone_codes")
        state.postal_codes = read_postal_codes(top.get("postal_codes", []), "postal_codes")
        state.nanpa_prefixes = read_nanpa(top.get("nanpa_prefixes", []), "nanpa_prefixes")
        state.custom_fields = read_custom_fields(top.get("custom_fields", {}), "custom_fields")
        state.custom_fields_enabled = self._bool(
            top.get("custom_fields_enabled", False), "custom_fields_enabled"
        )
        state.call_times = read_call_times(top.get("call_times", {}), "call_times")
        local_gmt = top.get("servers_local_gmt", DEFAULT_LOCAL_GMT)
        if local_gmt is not None:
            try:
                local_gmt = check_local_gmt(self._text(local_gmt, "servers_local_gmt"))
            except ValueError as exc:
                raise ValueError(f"servers_local_gmt: {exc}") from None
        state.servers_local_gmt = local_gmt
        zone = top.get("php_timezone")
        if zone is not None:
            try:
                check_timezone(self._text(zone, "php_timezone"))
            except ValueError as exc:
                raise ValueError(f"php_timezone: {exc}") from None
        state.php_timezone = zone
        return state

    def _group(self, raw: Any, where: str) -> UserGroupConfig:
        obj = self._object(raw, where)
        self._known(obj, _GROUP_KEYS, where + ".")
        allowed = obj.get("allowed_campaigns", [ALL_CAMPAIGNS])
        if not isinstance(allowed, list) or not all(isinstance(c, str) for c in allowed):
            raise ValueError(f"{where}.allowed_campaigns: expected a list of campaign ids")
        return UserGroupConfig(allowed_campaigns=tuple(allowed))

    def _user(self, raw: Any, where: str) -> UserConfig:
        obj = self._object(raw, where)
        self._known(obj, _USER_KEYS, where + ".")
        if "pass" not in obj:
            raise ValueError(f"{where}.pass: missing (every user needs a password)")
        functions = obj.get("functions", ["ALL_FUNCTIONS"])
        if not isinstance(functions, list) or not all(isinstance(f, str) for f in functions):
            raise ValueError(f"{where}.functions: expected a list of function names")
        last_login = obj.get("last_login")
        if last_login is not None and (
            isinstance(last_login, bool) or not isinstance(last_login, int | float)
        ):
            raise ValueError(f"{where}.last_login: expected epoch seconds, got {last_login!r}")
        level = obj.get("user_level", 9)
        if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level <= 9:
            raise ValueError(f"{where}.user_level: expected a whole number 0-9, got {level!r}")
        modify = obj.get("modify_leads", True)
        if isinstance(modify, bool):
            modify = int(modify)
        elif not isinstance(modify, int) or not 0 <= modify <= 5:
            raise ValueError(
                f"{where}.modify_leads: expected true, false or a number 0-5, got {modify!r}"
            )
        return UserConfig(
            password=self._text(obj["pass"], f"{where}.pass"),
            api_access=self._bool(obj.get("api_access", True), f"{where}.api_access"),
            functions=tuple(functions),
            user_group=self._text(obj.get("user_group", "ADMIN"), f"{where}.user_group"),
            active=self._bool(obj.get("active", True), f"{where}.active"),
            custom_three=self._text(obj.get("custom_three", ""), f"{where}.custom_three"),
            last_login=None if last_login is None else float(last_login),
            user_level=level,
            view_reports=self._bool(obj.get("view_reports", False), f"{where}.view_reports"),
            modify_leads=modify,
            api_list_restrict=self._bool(
                obj.get("api_list_restrict", False), f"{where}.api_list_restrict"
            ),
        )

    def _campaign(self, raw: Any, where: str) -> CampaignConfig:
        if raw is None or (isinstance(raw, str | int) and not isinstance(raw, bool)):
            return CampaignConfig(manual_dial_list_id=None if raw is None else str(raw))
        obj = self._object(raw, where)
        self._known(obj, _CAMPAIGN_KEYS, where + ".")
        list_id = obj.get("manual_dial_list_id", DEFAULT_MANUAL_DIAL_LIST)
        if list_id is not None:
            list_id = self._text(list_id, f"{where}.manual_dial_list_id")
        other = self._text(obj.get("use_other_campaign_dnc", ""), f"{where}.use_other_campaign_dnc")
        call_time = self._text(obj.get("local_call_time", "9am-9pm"), f"{where}.local_call_time")
        return CampaignConfig(
            manual_dial_list_id=list_id, use_other_campaign_dnc=other, local_call_time=call_time
        )

    def _phones(self, raw: Any, where: str) -> list[str]:
        if not isinstance(raw, list):
            raise ValueError(f"{where}: expected a list of phone numbers, got {_kind(raw)}")
        return [self._text(phone, f"{where}[{i}]") for i, phone in enumerate(raw)]

    @staticmethod
    def _object(raw: Any, where: str) -> dict[str, Any]:
        if not isinstance(raw, Mapping):
            raise ValueError(f"{where}: expected an object, got {_kind(raw)}")
        return dict(raw)

    @staticmethod
    def _known(obj: Mapping[str, Any], allowed: frozenset[str], prefix: str) -> None:
        unknown = sorted(set(obj) - allowed)
        if unknown:
            raise ValueError(
                f"{prefix}{unknown[0]}: unknown key (allowed: {', '.join(sorted(allowed))})"
            )

    @staticmethod
    def _text(raw: Any, where: str) -> str:
        # Numbers are accepted where VICIdial has numeric-looking ids (list ids, phones).
        if isinstance(raw, str):
            return raw
        if isinstance(raw, int) and not isinstance(raw, bool):
            return str(raw)
        raise ValueError(f"{where}: expected a string, got {_kind(raw)}")

    @staticmethod
    def _bool(raw: Any, where: str) -> bool:
        if not isinstance(raw, bool):
            raise ValueError(f"{where}: expected true or false, got {raw!r}")
        return raw


def _kind(raw: Any) -> str:
    return {
        dict: "an object",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        type(None): "null",
    }.get(type(raw), type(raw).__name__)
