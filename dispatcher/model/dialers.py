"""The VICIdial servers ("dialers") a fleet serves: the TOML dialers file, or one from env.

``DISPATCHER_DIALERS_FILE`` names a TOML file (DESIGN.md, "Several dialers")::

    default = "east"                       # dialer of jobs that name none (optional)

    [dialers.east]
    url = "https://east.example.com/agc/api.php"
    user = "6666"
    pass_env = "EAST_VICIDIAL_PASS"        # the password comes from this variable
    source = "dispatcher"                  # optional
    rate_limit = 50                        # calls/s to this dialer across the fleet; 0 = none
    phone_code = "1"                       # optional default for its leads
    nonagent_url = "https://east.example.com/vicidial/non_agent_api.php"   # optional
    non_latin = false                      # the dialer's use_non_latin (optional)
    list_id = "101"                        # list of the leads that name no agent (optional)
    campaign_id = "TESTCAMP"               # campaign of list leads that name none (optional)
    duplicate_check = "DUPLIST"            # add_lead's duplicate check by default (optional)
    list_campaigns = { "102" = "OTHERCAMP" }   # campaign per list, before campaign_id

The last four are the defaults of leads for a list (the Non-Agent API's ``add_lead``,
DESIGN.md "Two ways into VICIdial"): a job naming neither ``agent_user`` nor
``list_id`` goes to ``list_id``; a list job without ``campaign_id`` takes its list's
campaign from ``list_campaigns``, else ``campaign_id``; one without ``duplicate_check``
takes ``duplicate_check``. Each is checked at start with the rule a job's value has.

Without the file, the ``DISPATCHER_VICIDIAL_*`` variables define one dialer named
``default`` (and a fleet behaves exactly as with one URL). Every problem is a
:class:`~dispatcher.model.errors.ConfigError` naming the file, the dialer and the key.
Passwords come from ``pass_env`` variables; ``pass`` in the file itself is accepted
only if the file is not readable by other users (mode 0600 or 0640).

Producers need the dialer names (an unknown ``dialer`` is an invalid lead), each
dialer's ``phone_code`` and ``non_latin``; only workers need URLs and passwords.
"""

from __future__ import annotations

import os
import re
import stat
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from dispatcher.model.errors import ConfigError
from dispatcher.model.list_lead import LIST_RULES
from dispatcher.model.list_options import check_campaign_id, check_duplicate_check
from dispatcher.model.normalise import clean

__all__ = [
    "DEFAULT_DIALER",
    "DIALER_NAME",
    "PRIORITIES",
    "Dialer",
    "Dialers",
    "load_dialers",
]

#: The name of the one dialer the DISPATCHER_VICIDIAL_* variables define.
DEFAULT_DIALER = "default"
DIALER_NAME = re.compile(r"[-_0-9a-zA-Z]{1,32}")
#: Priority lanes, in the order a worker takes them within a dialer.
PRIORITIES = ("realtime", "bulk")
_SOURCE = re.compile(r"[0-9a-zA-Z]{2,20}")
_PHONE_CODE = re.compile(r"[0-9X]{1,10}")
_KEYS = {
    "url",
    "user",
    "pass_env",
    "pass",
    "source",
    "rate_limit",
    "phone_code",
    "nonagent_url",
    "non_latin",
    "list_id",
    "campaign_id",
    "duplicate_check",
    "list_campaigns",
}


@dataclass(frozen=True)
class Dialer:
    """One VICIdial server."""

    name: str
    url: str | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    source: str = "dispatcher"
    rate_limit: float = 0.0
    phone_code: str | None = None
    nonagent_url: str | None = None
    non_latin: bool = False
    #: defaults of leads for a list (add_lead): the list of a job that names no target,
    #: the campaign of one that names none (per list first), the duplicate check
    list_id: str | None = None
    campaign_id: str | None = None
    duplicate_check: str | None = None
    list_campaigns: tuple[tuple[str, str], ...] = ()

    def campaign_for(self, list_id: str) -> str | None:
        """The default campaign of a lead for ``list_id``: its list's, else the dialer's."""
        for listed, campaign in self.list_campaigns:
            if listed == list_id:
                return campaign
        return self.campaign_id

    def missing(self) -> list[str]:
        """What a worker needs to call this dialer and it does not have."""
        return [k for k in ("url", "user", "password") if not getattr(self, k)]

    @property
    def list_scope(self) -> str:
        """The pause of this dialer's leads for a list alone (add_lead refused a permission
        that external_add_lead does not need: its agent jobs go on): a server name of
        the fleet's pauses, which no dialer name can be (``:``)."""
        return f"{self.name}:list"

    @property
    def lookup_url(self) -> str | None:
        """The Non-Agent API's URL (reconciliation's look-ups): ``nonagent_url``, else the
        agent API URL with ``agc/api.php`` replaced by ``vicidial/non_agent_api.php``."""
        if self.nonagent_url:
            return self.nonagent_url
        if not self.url:
            return None
        parts = urlsplit(self.url)
        head, sep, _ = parts.path.rpartition("agc/api.php")
        if not sep:
            return None
        return urlunsplit(parts._replace(path=head + "vicidial/non_agent_api.php"))


@dataclass(frozen=True)
class Dialers:
    """Every dialer of the fleet, in the order they were configured."""

    by_name: Mapping[str, Dialer]
    default: str | None = None
    #: where they came from, for messages: the file, or the environment
    origin: str = "DISPATCHER_VICIDIAL_*"

    def __iter__(self) -> Iterator[Dialer]:
        return iter(self.by_name.values())

    def __len__(self) -> int:
        return len(self.by_name)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.by_name)

    def resolve(self, name: object) -> Dialer | None:
        """The dialer a job names (None/"": the default); None if there is no such one."""
        if name is None or name == "":
            if self.default is not None:
                return self.by_name[self.default]
            if len(self.by_name) == 1:
                return next(iter(self.by_name.values()))
            return None
        if isinstance(name, str):
            return self.by_name.get(name)
        return None

    def resolve_or_default(self, name: object) -> Dialer | None:
        """Where a replayed or reconciled job goes: the dialer it names, or the default
        one for a job of an older version or one naming a dialer the fleet no longer has."""
        return self.resolve(name) or self.resolve(None)

    @property
    def secrets(self) -> tuple[str, ...]:
        return tuple(d.password for d in self if d.password)


def _from_env(settings: Any) -> Dialers:
    dialer = Dialer(
        name=DEFAULT_DIALER,
        url=settings.vicidial_url,
        user=settings.vicidial_user,
        password=settings.vicidial_pass,
        source=settings.vicidial_source,
        rate_limit=settings.rate_limit,
        phone_code=settings.phone_code,
        nonagent_url=getattr(settings, "vicidial_nonagent_url", None),
        non_latin=settings.vicidial_non_latin,
    )
    return Dialers({DEFAULT_DIALER: dialer}, DEFAULT_DIALER)


def load_dialers(settings: Any, *, environ: Mapping[str, str] | None = None) -> Dialers:
    """The fleet's dialers for ``settings`` (its dialers file, or its VICIDIAL variables)."""
    if not settings.dialers_file:
        return _from_env(settings)
    return read_dialers_file(
        Path(settings.dialers_file),
        environ=os.environ if environ is None else environ,
        defaults=settings,
    )


def read_dialers_file(path: Path, *, environ: Mapping[str, str], defaults: Any) -> Dialers:
    """Parse and check a dialers file; ConfigError naming the file, dialer and key."""
    where = f"DISPATCHER_DIALERS_FILE {path}"
    try:
        raw = path.read_bytes()
        mode = path.stat().st_mode
    except OSError as exc:
        raise ConfigError(f"{where}: cannot be read ({exc.strerror or exc})") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: is not valid TOML: {exc}") from None
    problems: list[str] = []
    unknown = sorted(set(data) - {"default", "dialers"})
    if unknown:
        problems.append(f"{', '.join(unknown)}: unknown key (expected default, [dialers.NAME])")
    tables = data.get("dialers")
    if not isinstance(tables, dict) or not tables:
        problems.append("[dialers.NAME]: at least one dialer is needed")
        tables = {}
    private = not mode & (stat.S_IROTH | stat.S_IWOTH)
    dialers: dict[str, Dialer] = {}
    for name, table in tables.items():
        dialer = _read_dialer(
            name, table, environ=environ, private=private, defaults=defaults, problems=problems
        )
        if dialer is not None:
            dialers[name] = dialer
    default = data.get("default")
    if default is not None and (not isinstance(default, str) or default not in tables):
        problems.append(
            f"default: {default!r} is not one of the dialers ({', '.join(tables) or 'none'})"
        )
        default = None
    if problems:
        raise ConfigError(f"{where}: " + "; ".join(problems))
    return Dialers(dialers, default, origin=str(path))


def _read_dialer(
    name: str,
    table: object,
    *,
    environ: Mapping[str, str],
    private: bool,
    defaults: Any,
    problems: list[str],
) -> Dialer | None:
    at = f"dialers.{name}"
    if not DIALER_NAME.fullmatch(name):
        problems.append(f"{at}: a dialer name is 1-32 of [-_0-9a-zA-Z]")
        return None
    if not isinstance(table, dict):
        problems.append(f"{at}: must be a table ([{at}])")
        return None
    before = len(problems)

    def text(key: str, *, required: bool = False) -> str | None:
        value = table.get(key)
        if value is None:
            if required:
                problems.append(f"{at}.{key}: required")
            return None
        if not isinstance(value, str) or not value.strip():
            problems.append(f"{at}.{key}: must be a non-empty string")
            return None
        return value.strip()

    for key in sorted(set(table) - _KEYS):
        problems.append(f"{at}.{key}: unknown key (known: {', '.join(sorted(_KEYS))})")
    url = text("url", required=True)
    if url is not None and not url.startswith(("http://", "https://")):
        problems.append(f"{at}.url: must be the full http(s) URL of agc/api.php")
    nonagent = text("nonagent_url")
    if nonagent is not None and not nonagent.startswith(("http://", "https://")):
        problems.append(f"{at}.nonagent_url: must be the full http(s) URL of non_agent_api.php")
    user = text("user", required=True)
    password: str | None = None
    pass_env = text("pass_env")
    if pass_env is not None and "pass" in table:
        problems.append(f"{at}: give pass_env or pass, not both")
    elif pass_env is not None:
        password = environ.get(pass_env) or None
        if password is None:
            problems.append(f"{at}.pass_env: the variable {pass_env} is not set (or empty)")
    elif "pass" in table:
        if not private:
            problems.append(
                f"{at}.pass: a password in a file that other users can read; use pass_env, "
                "or chmod 600 the file"
            )
        else:
            password = text("pass")
    else:
        problems.append(f"{at}: pass_env is required (the variable holding the password)")
    source = text("source") or defaults.vicidial_source
    if not _SOURCE.fullmatch(source):
        problems.append(f"{at}.source: must be 2-20 letters or digits")
    rate = table.get("rate_limit", 0)
    if isinstance(rate, bool) or not isinstance(rate, int | float) or rate < 0:
        problems.append(f"{at}.rate_limit: must be a number >= 0 (0 means no limit)")
        rate = 0
    phone_code = table.get("phone_code")
    if isinstance(phone_code, int) and not isinstance(phone_code, bool):
        phone_code = str(phone_code)
    if phone_code is not None and (
        not isinstance(phone_code, str) or not _PHONE_CODE.fullmatch(phone_code)
    ):
        problems.append(f"{at}.phone_code: must be 1-10 digits")
        phone_code = None
    non_latin = table.get("non_latin", False)
    if not isinstance(non_latin, bool):
        problems.append(f"{at}.non_latin: must be true or false")
        non_latin = False
    for_lists = _list_defaults(at, table, problems)
    if len(problems) > before:
        return None
    return Dialer(
        name=name,
        url=url,
        user=user,
        password=password,
        source=source,
        rate_limit=float(rate),
        phone_code=phone_code or defaults.phone_code,
        nonagent_url=nonagent,
        non_latin=non_latin,
        **for_lists,
    )


def _list_id(raw: object) -> tuple[str | None, str | None]:
    """A list id as a job's must be: (value, None) or (None, why)."""
    if isinstance(raw, bool) or not isinstance(raw, str | int):
        return None, "must be a list id (3-20 digits)"
    value, problem = clean(LIST_RULES.rules["list_id"], raw, False)
    if value is None:
        return None, problem or "must be a list id (3-20 digits)"
    return value, None


def _list_defaults(at: str, table: dict[str, Any], problems: list[str]) -> dict[str, Any]:
    """The dialer's defaults for list jobs, each checked with the rule of a job's value."""
    out: dict[str, Any] = {}
    if "list_id" in table:
        value, problem = _list_id(table["list_id"])
        if problem is not None:
            problems.append(f"{at}.list_id: {problem}")
        out["list_id"] = value
    if "campaign_id" in table:
        campaign = table["campaign_id"]
        problem = (
            check_campaign_id(campaign)
            if isinstance(campaign, str)
            else "must be a campaign id (a string)"
        )
        if problem is not None:
            problems.append(f"{at}.campaign_id: {problem}")
        out["campaign_id"] = campaign
    if "duplicate_check" in table:
        check = table["duplicate_check"]
        if isinstance(check, str):
            check = check.strip().upper()
            problem = check_duplicate_check(check) if check else "must not be empty"
        else:
            problem = "must be a string, e.g. DUPLIST"
        if problem is not None:
            problems.append(f"{at}.duplicate_check: {problem}")
        out["duplicate_check"] = check
    raw = table.get("list_campaigns", {})
    pairs: list[tuple[str, str]] = []
    if not isinstance(raw, dict):
        problems.append(f"{at}.list_campaigns: must be a table of list id = campaign id")
        raw = {}
    for listed, campaign in raw.items():
        value, problem = _list_id(listed)
        if problem is not None:
            problems.append(f"{at}.list_campaigns.{listed}: the key {problem}")
            continue
        why = (
            check_campaign_id(campaign)
            if isinstance(campaign, str)
            else "must be a campaign id (a string)"
        )
        if why is not None:
            problems.append(f"{at}.list_campaigns.{listed}: {why}")
            continue
        assert value is not None
        pairs.append((value, campaign))
    out["list_campaigns"] = tuple(pairs)
    return out
