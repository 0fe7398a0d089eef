"""The list target's lead rules: the Non-Agent API's ``add_lead`` columns and filters.

A lead for a list (``list_id``) is added by ``vicidial/non_agent_api.php``'s ``add_lead``
(shared/vicidial/non_agent_add_lead.md, "Lead fields and their filters"), whose input
filters are its own, not ``external_add_lead``'s. Where they differ:

* ``phone_number``: 6-16 characters (the server refuses other lengths; commas are kept
  and stored, and count): digits only here, like the agent's rule, 6-16 of them;
* ``phone_code``: digits only (``X`` is dropped), 1-10;
* ``list_id`` (required, in place of ``agent_user``): digits; fewer than 3 digits put the
  lead in list 999, ``00101`` is answered ``00101`` and stored 101, ``000`` is stored as
  list 0 (which no look-up can read), beyond 64 bits it is clamped: 3-20 digits without a
  leading zero, at most 18446744073709551615;
* ``middle_initial``: ``-`` and ``_`` are kept too;
* ``postal_code``: filtered once, so ``'`` is kept (``.`` and ``_`` are not);
* ``country_code``: ``[-_0-9a-zA-Z]`` (``usa`` stays lower case); the shared normalisation
  still upper-cases ``a-z``, so a list's lead stores ``USA`` as an agent's does;
* ``gender``: not given, the server stores ``U``;
* ``entry_list_id``: a field of its own (digits; the list whose custom fields hold the
  lead's values; with custom fields VICIdial sets it to ``list_id``, which
  :func:`dispatcher.model.list_options.check_with_lead` enforces);
* the three free-text fields lose ``"`` as well (the shared normalisation removes it
  anyway).

Everything else (names, addresses, email, text, sizes, ``rank``, ``date_of_birth``) is the
same filter as the agent's, and so the same rule. The normalisations are the shared ones
(:mod:`dispatcher.model.normalise`); what VICIdial stores is what was sent after them, or
an :class:`~dispatcher.model.errors.InvalidLead` names the field and says why.

A ``'`` is accepted where ``add_lead`` stores it; where it breaks the server (with the
duplicate checks that compare that field, or ``tz_method=TZCODE`` for ``owner``) the job's
options make it an error (:mod:`dispatcher.model.list_options`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from dispatcher.model.errors import FieldError, InvalidLead
from dispatcher.model.lead import AGENT_RULES, Lead
from dispatcher.model.normalise import (
    PHONE_MSG,
    FrozenFields,
    Rule,
    RuleTable,
    drop_leading_plus,
    phone_digits,
    upper,
    validate,
)

__all__ = ["LIST_LEAD_FIELDS", "LIST_RULES", "MAX_LIST_ID", "make_list_lead"]

#: vicidial_list.list_id is a BIGINT UNSIGNED: MariaDB clamps a larger value to this.
MAX_LIST_ID: Final = 18446744073709551615


def _check_list_id(value: str) -> str | None:
    if value[0] == "0":
        return (
            "must not start with 0: VICIdial stores 00101 as list 101 (and 000 as list 0, "
            "which no look-up can read)"
        )
    if int(value) > MAX_LIST_ID:
        return f"is larger than VICIdial's largest list id ({MAX_LIST_ID})"
    return None


def _check_entry_list_id(value: str) -> str | None:
    if value[0] == "0" and value != "0":
        return "must not start with 0 (VICIdial would store it without)"
    if int(value) > MAX_LIST_ID:
        return f"is larger than VICIdial's largest list id ({MAX_LIST_ID})"
    return None


_AGENT = AGENT_RULES.rules
_LIST_ID_MSG: Final = "may only contain digits; found"

# Every accepted key, in the order of the add_lead INSERT. Sizes are the vicidial_list
# columns; character sets are non_agent_api.php's (rules the same as the agent's are shared).
_RULES: Final[dict[str, Rule]] = {
    "list_id": Rule(
        20,
        "0-9",
        "digits",
        min_len=3,
        int_ok=True,
        check=_check_list_id,
        bad_chars_msg=_LIST_ID_MSG,
        unit="digits",
        hint=False,
    ),
    "phone_number": Rule(
        16,
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
    "phone_code": Rule(10, "0-9", "digits", int_ok=True, normalise=drop_leading_plus),
    "vendor_lead_code": _AGENT["vendor_lead_code"],
    "source_id": _AGENT["source_id"],
    "title": _AGENT["title"],
    "first_name": _AGENT["first_name"],
    "middle_initial": Rule(
        1,
        r"\-_0-9a-zA-Z",
        "a letter A-Z, a digit, - or _",
        transliterate=True,
        letters=True,
    ),
    "last_name": _AGENT["last_name"],
    "address1": _AGENT["address1"],
    "address2": _AGENT["address2"],
    "address3": _AGENT["address3"],
    "city": _AGENT["city"],
    "state": _AGENT["state"],
    "province": _AGENT["province"],
    "postal_code": Rule(
        10,
        r"\- '0-9a-zA-Z",
        "letters A-Z, digits, space and - '",
        plus_to_space=True,
        letters=True,
    ),
    "country_code": Rule(
        3, r"\-_0-9A-Z", "letters A-Z, digits, - and _", normalise=upper, letters=True
    ),
    "gender": _AGENT["gender"],
    "date_of_birth": _AGENT["date_of_birth"],
    "alt_phone": _AGENT["alt_phone"],
    "email": _AGENT["email"],
    "security_phrase": _AGENT["security_phrase"],
    "comments": _AGENT["comments"],
    "rank": _AGENT["rank"],
    "owner": _AGENT["owner"],
    "entry_list_id": Rule(
        20,
        "0-9",
        "digits",
        int_ok=True,
        check=_check_entry_list_id,
        bad_chars_msg=_LIST_ID_MSG,
        unit="digits",
        hint=False,
    ),
}

_OPTION = "an option of the job, not a lead field"
_NOT_STORED: Final[dict[str, str]] = {
    "agent_user": "a lead goes to an agent (agent_user) or to a list (list_id), not both",
    "status": "add_lead ignores status (a new lead is NEW; CBHOLD with a callback)",
    "gmt_offset_now": "add_lead computes gmt_offset_now itself (tz_method chooses how)",
    "called_count": "add_lead ignores called_count (a new lead was never called)",
    "force_entry_list_id": "add_lead ignores force_entry_list_id; use entry_list_id",
    "list_name": "add_lead ignores list_name; the list is list_id",
    "value": "add_lead takes the phone from phone_number",
    "multi_alt_phones": "not supported: add_lead prints its records without a line break, "
    "and they are not validated; use alt_phone",
    "alt_user": "not supported by add_lead",
    "vendor_id": "not a field of add_lead; use vendor_lead_code",
    "dnc_check": _OPTION,
    "campaign_dnc_check": _OPTION,
    "idempotency_key": _OPTION,
}
_NOT_STORED.update(
    dict.fromkeys(
        ("source", "user", "pass", "function"),
        "set by the dispatcher from its settings, not by the lead",
    )
)

LIST_RULES: Final = RuleTable(
    _RULES,
    _NOT_STORED,
    unknown_hint="; a custom field of the list goes in custom_fields",
)
"""add_lead's lead fields (the list target)."""

LIST_LEAD_FIELDS: Final[tuple[str, ...]] = LIST_RULES.names
"""Every key :func:`make_list_lead` accepts, in add_lead's order."""

_REQUIRED: Final = ("list_id", "phone_number")


def make_list_lead(
    data: Mapping[str, object], *, default_phone_code: str = "1", non_latin: bool = False
) -> Lead:
    """Validate and normalise one lead for a list (the Non-Agent API's ``add_lead``).

    ``data`` maps the fields of :data:`LIST_LEAD_FIELDS` (``list_id`` and ``phone_number``
    required) to values; ``phone_code`` falls back to ``default_phone_code``; ``non_latin``
    is the dialer's ``use_non_latin``. Returns a :class:`~dispatcher.model.lead.Lead` whose
    ``list_id`` is set (and ``agent_user`` is ""). Raises :class:`InvalidLead` naming every
    bad field.
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
        LIST_RULES,
        required=_REQUIRED,
        default_phone_code=default_phone_code,
        non_latin=non_latin,
    )
    if errors:
        raise InvalidLead(errors)
    list_id = values.pop("list_id")
    phone_number = values.pop("phone_number")
    phone_code = values.pop("phone_code")
    return Lead(
        "",
        phone_number,
        phone_code,
        FrozenFields.adopt(LIST_RULES.ordered(values)),
        list_id=list_id,
    )
