"""The Lead, and the agent target's rules: VICIdial's ``external_add_lead`` columns.

Why this module exists
----------------------
VICIdial's ``external_add_lead`` never refuses a badly formed field: it *mangles* it and
answers SUCCESS (shared/vicidial/external_add_lead.md, "How the server mangles field
values"). The server (``agc/api.php``)

* removes every character outside the field's allowed set (``preg_replace('/[^...]/', '')``);
  with the default ``use_non_latin=0`` the sets are ASCII, so ``José`` is stored as ``Jos``;
  with ``use_non_latin=1`` they keep letters of every script but no combining marks;
* turns ``+`` into a space in most text fields (``first_name``, ``address1``, ``email``, …);
* removes only ``;`` and ``#`` from ``comments``, ``source_id`` and ``vendor_lead_code``, and
  builds its INSERT with these values inside double quotes and no escaping, so a ``"`` or a
  backslash breaks the statement (HTTP 500, nothing inserted) or is read as an escape;
* cuts values longer than the column (in characters) and clamps ``rank`` to 32767 (a signed
  SMALLINT);
* with ``use_non_latin=1`` talks utf8mb3 to MariaDB: a character above U+FFFF becomes ``????``
  in every field.

The dispatcher runs this validator when a producer enqueues a lead, long before a worker calls
VICIdial, so that what VICIdial stores is *exactly* what the producer sent once normalised, or
the producer gets an :class:`~dispatcher.model.errors.InvalidLead` at once that names every bad
field and why. A worker runs it again on every message it reads.

Two targets, one Lead
---------------------
A lead goes either to a logged-in agent's manual dial list (``agent_user``, this module's
table, ``external_add_lead``) or to a list (``list_id``, the Non-Agent API's ``add_lead``,
whose filters differ field by field: :mod:`dispatcher.model.list_lead`). Both make a
:class:`Lead`: who gets it (``agent_user`` or ``list_id``), the phone and the other fields.
The normalisations and the checking of one value are shared
(:mod:`dispatcher.model.normalise`, where they are described; README "Leads" lists the
same).

Two modes: ``non_latin`` is the dialer's ``use_non_latin`` (DESIGN.md "Small contract changes";
``DISPATCHER_VICIDIAL_NON_LATIN``). It is a parameter of validation, never a global: a fleet
may serve dialers of both kinds.

Everything else VICIdial would change is an error: characters outside the field's set (``+``
gets its own message where the server turns it into a space; without ``non_latin`` any
non-ASCII character; with it, characters above U+FFFF and combining marks left after NFC in
the letter fields), a value longer than its column (never truncated), ``rank`` outside
0-32767 or written with a sign or leading zeros, a field name VICIdial does not store, a value
of the wrong type. Control characters other than tab and line breaks are refused everywhere,
and tab and line breaks are accepted only in ``comments``, ``source_id`` and
``vendor_lead_code`` (the only fields whose set has them).

Values may be ``str``, or ``int`` for the numeric-ish fields (``agent_user``,
``phone_number``, ``phone_code``, ``alt_phone``, ``rank``, ``vendor_lead_code``,
``source_id``, ``owner``), non-negative and written in decimal. ``bool``, ``float``, lists and
dicts are errors (``True`` is not a rank; ``7.0`` is not a phone number).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

from dispatcher.model.errors import FieldError, InvalidLead
from dispatcher.model.normalise import (
    ADDR_DESC,
    ADDR_SET,
    NAME_DESC,
    NAME_SET,
    PHONE_MSG,
    RANK_MSG,
    TEXT_DESC,
    TEXT_SET,
    FrozenFields,
    Rule,
    RuleTable,
    address_rule,
    check_date,
    check_gender,
    check_rank,
    drop_leading_plus,
    mask,
    name_rule,
    phone_digits,
    upper,
    validate,
)

__all__ = [
    "AGENT_RULES",
    "LEAD_FIELDS",
    "OPTIONAL_FIELDS",
    "Lead",
    "make_lead",
    "make_leads",
]


# --------------------------------------------------------------------------------------------
# The column table of external_add_lead
# --------------------------------------------------------------------------------------------

# Every accepted key, in the order VICIdial documents them. Sizes are the vicidial_list
# columns (shared/vicidial/external_add_lead.md); character sets are agc/api.php's.
_RULES: Final[dict[str, Rule]] = {
    "agent_user": Rule(20, r"\-_0-9a-zA-Z", "letters A-Z, digits, - and _", min_len=2, int_ok=True),
    "phone_number": Rule(
        18,
        "0-9",
        "digits",
        min_len=6,
        int_ok=True,
        normalise=phone_digits,
        bad_chars_msg=PHONE_MSG,
        unit="digits",
        hint=False,
        international=True,
    ),
    "phone_code": Rule(10, "0-9X", "digits and X", int_ok=True, normalise=drop_leading_plus),
    "first_name": name_rule(30),
    "last_name": name_rule(30),
    "middle_initial": Rule(
        1, "0-9a-zA-Z", "a letter A-Z or a digit", transliterate=True, letters=True
    ),
    # title: the server keeps no '+' at all here (it is dropped, not turned into a space).
    "title": Rule(4, NAME_SET, NAME_DESC, transliterate=True, drop_quotes=True, letters=True),
    "address1": address_rule(100),
    "address2": address_rule(100),
    "address3": address_rule(100),
    # alt_phone: the server would keep "727-555-1212" as text, but the dialer dials it (ALT
    # dial), so it gets the same treatment as phone_number: formatting removed, digits only.
    "alt_phone": Rule(
        12,
        "0-9",
        "digits",
        int_ok=True,
        normalise=phone_digits,
        bad_chars_msg=PHONE_MSG,
        unit="digits",
        hint=False,
        international=True,
    ),
    "city": address_rule(50),
    "state": Rule(2, r"\- 0-9a-zA-Z", "letters A-Z, digits, space and -", letters=True),
    "province": Rule(
        50,
        r"\- '._0-9a-zA-Z",
        "letters A-Z, digits, space and - ' . _",
        plus_to_space=True,
        transliterate=True,
        drop_quotes=True,
        letters=True,
    ),
    # postal_code is filtered twice by the server: [- '+0-9a-zA-Z], '+' -> ' ', then
    # [- ._0-9a-zA-Z]; what survives both is [- 0-9a-zA-Z].
    "postal_code": Rule(
        10, r"\- 0-9a-zA-Z", "letters A-Z, digits, space and -", plus_to_space=True, letters=True
    ),
    "country_code": Rule(3, "A-Z", "letters A-Z", normalise=upper),
    "email": Rule(
        70,
        r"\- '.:/@%_0-9a-zA-Z",
        "letters A-Z, digits, space and - ' . : / @ % _",
        plus_to_space=True,
        letters=True,
    ),
    "comments": Rule(
        255,
        TEXT_SET,
        TEXT_DESC,
        plus_to_space=True,
        transliterate=True,
        drop_quotes=True,
        text=True,
    ),
    "source_id": Rule(
        50, TEXT_SET, TEXT_DESC, plus_to_space=True, drop_quotes=True, int_ok=True, text=True
    ),
    "vendor_lead_code": Rule(
        20, TEXT_SET, TEXT_DESC, plus_to_space=True, drop_quotes=True, int_ok=True, text=True
    ),
    "gender": Rule(
        1,
        "A-Z",
        "M, F or U",
        normalise=upper,
        check=check_gender,
        format_msg="must be one of M, F, U",
    ),
    "date_of_birth": Rule(
        10, r"\-0-9", "YYYY-MM-DD", check=check_date, format_msg="must be a date as YYYY-MM-DD"
    ),
    "security_phrase": address_rule(100),
    "rank": Rule(
        5,
        "0-9",
        "digits",
        int_ok=True,
        check=check_rank,
        format_msg=RANK_MSG,
    ),
    "owner": Rule(
        20, ADDR_SET, ADDR_DESC, plus_to_space=True, drop_quotes=True, int_ok=True, letters=True
    ),
}

_REQUIRED: Final = ("agent_user", "phone_number")

LEAD_FIELDS: Final[tuple[str, ...]] = tuple(_RULES)
"""Every key :func:`make_lead` accepts, in VICIdial's order."""

OPTIONAL_FIELDS: Final[tuple[str, ...]] = tuple(
    f for f in LEAD_FIELDS if f not in (*_REQUIRED, "phone_code")
)
"""The lead fields other than ``agent_user``, ``phone_number`` and ``phone_code``."""

# Keys that are not lead fields but that a producer may plausibly send: say why they are refused.
_NOT_STORED: Final[dict[str, str]] = {
    "gmt_offset_now": "VICIdial's external_add_lead never stores gmt_offset_now (its INSERT "
    "leaves that column out); leave it out",
    "status": "VICIdial's external_add_lead ignores status (every new lead is NEW); leave it out",
    "value": "set by the dispatcher (it carries the phone number); use phone_number",
    "vendor_id": "VICIdial would copy it over vendor_lead_code; use vendor_lead_code",
    "alt_user": "not supported: the lead is for agent_user",
    "dnc_check": "an enqueue option, not a lead field",
    "campaign_dnc_check": "an enqueue option, not a lead field",
    "idempotency_key": "an enqueue option, not a lead field",
    "list_id": "a lead for an agent (agent_user) goes to the list of the agent's campaign; "
    "a lead for a list names list_id instead of agent_user",
    "entry_list_id": "only a lead for a list (list_id) has it",
}
_NOT_STORED.update(
    dict.fromkeys(
        ("source", "user", "pass", "function"),
        "set by the dispatcher from its settings, not by the lead",
    )
)

AGENT_RULES: Final = RuleTable(_RULES, _NOT_STORED)
"""external_add_lead's fields (the agent target)."""


# --------------------------------------------------------------------------------------------
# The Lead
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, repr=False)
class Lead:
    """A validated, normalised lead, ready to be queued and sent to VICIdial.

    It names who gets it: ``agent_user`` (the agent's manual dial list, through
    ``external_add_lead``; ``list_id`` is "") or ``list_id`` (a list, through the Non-Agent
    API's ``add_lead``; ``agent_user`` is ""). Build leads with :func:`make_lead` or
    :func:`dispatcher.model.list_lead.make_list_lead`: the constructor itself does not
    validate. ``fields`` holds the optional fields that were given (normalised), as a
    read-only mapping.
    """

    agent_user: str
    phone_number: str  # digits only
    phone_code: str
    fields: Mapping[str, str] = field(default_factory=FrozenFields)
    list_id: str = ""

    def __post_init__(self) -> None:
        # Keep the Lead immutable (and hashable) even when built by hand from a plain dict.
        if not isinstance(self.fields, FrozenFields):
            object.__setattr__(self, "fields", FrozenFields(self.fields))

    @property
    def target(self) -> str:
        """``"list"`` (add_lead to ``list_id``) or ``"agent"`` (external_add_lead)."""
        return "list" if self.list_id else "agent"

    def to_dict(self) -> dict[str, str]:
        """The lead as a JSON-ready dict; ``make_lead(lead.to_dict()) == lead`` (or
        ``make_list_lead`` for a list's lead)."""
        who = {"list_id": self.list_id} if self.list_id else {"agent_user": self.agent_user}
        return {
            **who,
            "phone_number": self.phone_number,
            "phone_code": self.phone_code,
            **self.fields,
        }

    def vicidial_params(self) -> dict[str, str]:
        """The lead's form fields for its call (``external_add_lead``, or ``add_lead``).

        The HTTP client adds the credentials, the function and the options; every value
        here is already in the exact form VICIdial stores unchanged. Today these are the
        same keys and values as :meth:`to_dict`; they are two methods because one is the
        queue's format and the other is VICIdial's.
        """
        return self.to_dict()

    def __repr__(self) -> str:
        # Phone numbers are personal data: a Lead that ends up in a log shows the last 4 only.
        shown = dict(self.fields)
        if "alt_phone" in shown:
            shown["alt_phone"] = mask(shown["alt_phone"])
        who = f"list_id={self.list_id!r}" if self.list_id else f"agent_user={self.agent_user!r}"
        return (
            f"Lead({who}, phone_number={mask(self.phone_number)!r}, "
            f"phone_code={self.phone_code!r}, fields={shown!r})"
        )


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


def make_lead(
    data: Mapping[str, object], *, default_phone_code: str = "1", non_latin: bool = False
) -> Lead:
    """Validate and normalise one lead for an agent (``external_add_lead``).

    ``data`` maps lead field names (:data:`LEAD_FIELDS`) to values. ``phone_code`` falls back to
    ``default_phone_code`` when it is absent or blank. ``non_latin`` says that the dialer runs
    VICIdial's ``use_non_latin=1`` (:mod:`dispatcher.model.normalise`). Raises
    :class:`InvalidLead` listing every problem (one :class:`FieldError` per bad field); nothing
    is half-accepted.
    """
    if not isinstance(data, Mapping):
        raise InvalidLead(
            [
                FieldError(
                    "lead", f"must be a mapping of field names to values, not {type(data).__name__}"
                )
            ]
        )
    values, errors = validate(
        data,
        AGENT_RULES,
        required=_REQUIRED,
        default_phone_code=default_phone_code,
        non_latin=non_latin,
    )
    if errors:
        raise InvalidLead(errors)
    agent_user = values.pop("agent_user")
    phone_number = values.pop("phone_number")
    phone_code = values.pop("phone_code")
    return Lead(
        agent_user, phone_number, phone_code, FrozenFields.adopt(AGENT_RULES.ordered(values))
    )


def make_leads(
    items: Iterable[Mapping[str, object]],
    *,
    default_phone_code: str = "1",
    non_latin: bool = False,
) -> list[Lead]:
    """Validate every item; return all the leads, or raise one :class:`InvalidLead`.

    The raised error lists the problems of every bad item, each :class:`FieldError` carrying
    ``index`` (the item's position), and nothing is returned: a batch is all or nothing.
    """
    leads: list[Lead] = []
    errors: list[FieldError] = []
    for index, item in enumerate(items):
        try:
            lead = make_lead(item, default_phone_code=default_phone_code, non_latin=non_latin)
        except InvalidLead as exc:
            errors.extend(FieldError(e.field, e.message, index) for e in exc.errors)
        else:
            leads.append(lead)
    if errors:
        raise InvalidLead(errors)
    return leads
