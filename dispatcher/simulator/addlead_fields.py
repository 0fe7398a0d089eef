"""How ``non_agent_api.php`` filters ``add_lead``'s input: its own table, not agc/api.php's.

shared/vicidial/non_agent_add_lead.md ("Lead fields and their filters"): characters
outside each field's set are dropped silently, ``+`` becomes a space in some fields,
and nothing is trimmed; the value is truncated only when it reaches its column
(:func:`column`), so the checks and the answer lines use the untruncated value
(``state=NSW`` finds the NSW phone code row and is stored ``NS``). With the system
setting ``use_non_latin=1`` the letter ranges of the lead fields become "any letter"
(PCRE ``\\p{L}``, Python's ``str.isalpha``), ASCII digits and punctuation unchanged.

Differences from the Agent API's filters (:mod:`dispatcher.simulator.mangling`):
``phone_number`` keeps ``[0-9,]``, ``phone_code`` digits only (empty -> ``1``),
``middle_initial`` and ``country_code`` keep ``-`` and ``_`` (and lower case),
``postal_code`` is filtered once (``'`` kept, ``.`` and ``_`` dropped), the three
free-text fields lose ``"`` as well, ``gender`` empty -> ``U``.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from dispatcher.simulator.mangling import to_column

__all__ = ["ADD_LEAD_FIELDS", "FREE_TEXT", "column", "option", "sanitize_add_lead"]

_DIGITS = "0123456789"

#: field -> (characters kept besides letters, letters kept?, "+" becomes a space?)
_SETS: dict[str, tuple[str, bool, bool]] = {
    "phone_number": (_DIGITS + ",", False, False),
    "phone_code": (_DIGITS, False, False),
    "list_id": (_DIGITS, False, False),
    "title": ("- '_." + _DIGITS, True, False),
    "first_name": ("- '+_." + _DIGITS, True, True),
    "last_name": ("- '+_." + _DIGITS, True, True),
    "middle_initial": ("-_" + _DIGITS, True, False),
    "address1": ("- '+.:/@_" + _DIGITS, True, True),
    "address2": ("- '+.:/@_" + _DIGITS, True, True),
    "address3": ("- '+.:/@_" + _DIGITS, True, True),
    "city": ("- '+.:/@_" + _DIGITS, True, True),
    "state": ("- " + _DIGITS, True, False),
    "province": ("- '+._" + _DIGITS, True, True),
    "postal_code": ("- '+" + _DIGITS, True, True),
    "country_code": ("-_" + _DIGITS, True, False),
    "date_of_birth": ("-" + _DIGITS, False, False),
    "alt_phone": ("- '+_." + _DIGITS, True, True),
    "email": ("- '+.:/@%_" + _DIGITS, True, True),
    "security_phrase": ("- '+.:/@_" + _DIGITS, True, True),
    "owner": ("- '+.:/@_" + _DIGITS, True, True),
    "rank": (_DIGITS, False, False),
    "entry_list_id": (_DIGITS, False, False),
}

#: Only ``;``, ``#`` and ``"`` are removed from these (and ``+`` becomes a space).
FREE_TEXT: tuple[str, ...] = ("vendor_lead_code", "source_id", "comments")

#: The lead columns add_lead writes from request fields, in INSERT order.
ADD_LEAD_FIELDS: tuple[str, ...] = (
    "vendor_lead_code",
    "source_id",
    "title",
    "first_name",
    "middle_initial",
    "last_name",
    "address1",
    "address2",
    "address3",
    "city",
    "state",
    "province",
    "postal_code",
    "country_code",
    "gender",
    "date_of_birth",
    "alt_phone",
    "email",
    "security_phrase",
    "comments",
    "rank",
    "owner",
)

_ASCII_LETTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _keeper(others: str, letters: bool, non_latin: bool) -> Callable[[str], bool]:
    kept = frozenset(others)
    if not letters:
        return kept.__contains__
    if non_latin:
        return lambda c: c in kept or c.isalpha()
    return lambda c: c in kept or c in _ASCII_LETTERS


def sanitize_add_lead(name: str, value: str, *, non_latin: bool = False) -> str:
    """``value`` after add_lead's input filter for the lead field ``name``."""
    if name in FREE_TEXT:
        return re.sub(r'[;#"]', "", value).replace("+", " ")
    if name == "gender":
        return re.sub(r"[^A-Z]", "", value)
    spec = _SETS.get(name)
    if spec is None:
        return value
    others, letters, plus = spec
    keep = _keeper(others, letters, non_latin)
    out = "".join(c for c in value if keep(c))
    return out.replace("+", " ") if plus else out


#: Options: field -> characters kept (ASCII in both modes).
_OPTIONS: dict[str, str] = {
    "source": "0-9a-zA-Z",
    "duplicate_check": "-_0-9a-zA-Z",
    "campaign_id": "-_0-9a-zA-Z",
    "tz_method": "-_0-9a-zA-Z",
    "callback_status": "-_0-9a-zA-Z",
    "callback_user": "-_0-9a-zA-Z",
    "hopper_priority": "-0-9",
    "callback_datetime": "- +.:/@_0-9a-zA-Z",
    "callback_comments": "- +.:/@_0-9a-zA-Z",
    "multi_alt_phones": "- +!:_0-9a-zA-Z",
}
_OPTION_RES = {name: re.compile(f"[^{chars}]") for name, chars in _OPTIONS.items()}
_SWITCH = re.compile("[^A-Z]")


def option(name: str, value: str) -> str:
    """An add_lead option after its filter; switches (``dnc_check``, ``callback``, ...)
    keep ``[A-Z]`` only."""
    regex = _OPTION_RES.get(name)
    if regex is None:
        return _SWITCH.sub("", value)
    out = regex.sub("", value)
    return out.replace("+", " ") if name == "multi_alt_phones" else out


def column(name: str, value: str, *, non_latin: bool = False) -> str:
    """What the ``vicidial_list`` column ``name`` stores for a filtered value."""
    return to_column(name, value, non_latin=non_latin)
