"""The Lead: VICIdial's column rules, normalisation and validation at enqueue time.

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

Two modes: ``non_latin`` is the dialer's ``use_non_latin`` (DESIGN.md "Small contract changes";
``DISPATCHER_VICIDIAL_NON_LATIN``). It is a parameter of validation, never a global: a fleet
may serve dialers of both kinds.

The normalisations (the only ones; README "Leads" lists the same)
-----------------------------------------------------------------
1. Trimming: leading and trailing white space (``str.strip``: spaces, tabs, line breaks,
   Unicode spaces) is removed from every string value, again after steps 5 and 6 below; a
   value that is then empty, or ``None``, counts as not given.
2. With ``non_latin``: every string value is NFC-normalised (``e`` + U+0301 -> ``é``).
3. Phone formatting: ``phone_number`` and ``alt_phone`` lose spaces, ``-``, ``.``, parentheses
   and one leading ``+``; a number written with a leading ``+`` is in international form: its
   country code must be ``phone_code`` and is removed (``+1 727.555.1212`` -> ``7275551212``),
   because VICIdial dials ``phone_code`` in front of the number. ``phone_code`` loses one
   leading ``+``.
4. ``gender`` and ``country_code``: ``a-z`` upper-cased (the server keeps only ``[A-Z]``).
5. Transliteration, without ``non_latin`` only, in the human-text fields (names, title,
   middle_initial, addresses, city, province, comments, security_phrase): Latin letters
   with accents lose them (``é`` -> ``e``, decomposed accents too), ``ß`` -> ``ss``,
   ``æ`` -> ``ae``, ``ø`` -> ``o``, ``ł`` -> ``l`` and the like, full-width forms and ligatures
   become ASCII, typographic quotes and primes, hyphens, dashes, the minus sign and the
   ellipsis become ``'``, ``"``, ``-`` and ``...``, Unicode spaces become a space, invisible
   characters (zero-width, word joiner, soft hyphen, BOM) are removed. Identifiers and e-mail
   addresses are never transliterated (``josé@example.com`` and ``jose@example.com`` are
   different addresses).
6. ``"`` and ``\\`` are removed from the free-text fields (the human-text fields above except
   middle_initial, plus ``source_id``, ``vendor_lead_code`` and ``owner``).

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

The column rules live in one table, :data:`_RULES` (field -> maximum length, allowed characters,
normaliser, check), in the order VICIdial documents the fields; the hot path is a dictionary
lookup, a few C-level string operations and one precompiled ``fullmatch`` per field. Values
that are not ASCII take a slower path (one Unicode category look-up per character).
"""

from __future__ import annotations

import datetime
import difflib
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Final

from dispatcher.model.errors import FieldError, InvalidLead

__all__ = [
    "LEAD_FIELDS",
    "OPTIONAL_FIELDS",
    "Lead",
    "make_lead",
    "make_leads",
]


# --------------------------------------------------------------------------------------------
# Character handling tables (built once, at import)
# --------------------------------------------------------------------------------------------

# Letters that Unicode does not decompose to an ASCII base letter, spelled the usual way.
_SPECIAL_LETTERS: Final[dict[str, str]] = {
    "ß": "ss",
    "ẞ": "SS",
    "æ": "ae",
    "Æ": "AE",
    "œ": "oe",
    "Œ": "OE",
    "ø": "o",
    "Ø": "O",
    "ł": "l",
    "Ł": "L",
    "đ": "d",
    "Đ": "D",
    "ð": "d",
    "Ð": "D",
    "þ": "th",
    "Þ": "Th",
    "\u0131": "i",  # dotless i
    "ħ": "h",
    "Ħ": "H",
    "ŧ": "t",
    "Ŧ": "T",
    "ŀ": "l",
    "Ŀ": "L",
    "ŋ": "ng",
    "Ŋ": "NG",
    "ƒ": "f",
}

# Typographic punctuation that producers paste from word processors and phones (O\u2019Brien).
# Written as escapes: the characters themselves are too easy to confuse with ASCII when read.
_PUNCTUATION: Final[dict[str, str]] = {
    # single quotes, prime, modifier apostrophe
    **dict.fromkeys("\u2018\u2019\u201a\u201b\u2032\u02bc", "'"),
    # double quotes and double prime: become '"', which free-text fields then remove
    **dict.fromkeys("\u201c\u201d\u201e\u201f\u2033", '"'),
    # hyphen, non-breaking hyphen, figure dash, en dash, em dash, horizontal bar, minus sign
    **dict.fromkeys("\u2010\u2011\u2012\u2013\u2014\u2015\u2212", "-"),
    "\u2026": "...",  # ellipsis
}

# Invisible characters that only survive copy and paste; removing them changes nothing visible.
_INVISIBLE: Final[str] = "\u00ad\u200b\u200c\u200d\u2060\ufeff"


def _build_transliteration() -> dict[int, str | None]:
    """Map non-ASCII characters to their ASCII spelling, for ``str.translate``.

    Only letters and digits whose compatibility decomposition (NFKD, accents dropped) is plain
    ASCII are mapped automatically (é, Ü, ǆ, the ﬁ ligature, full-width letters); anything
    else (李, Ж, ²) is left alone so that the charset check reports it rather than guess.
    """
    table: dict[int, str | None] = {}
    ranges = (
        range(0x00A0, 0x0250),  # Latin-1 Supplement, Latin Extended-A and -B
        range(0x1E00, 0x1F00),  # Latin Extended Additional (Vietnamese, Welsh, …)
        range(0xFB00, 0xFB07),  # Latin ligatures
        range(0xFF01, 0xFF5F),  # full-width ASCII
    )
    for block in ranges:
        for cp in block:
            ch = chr(cp)
            if unicodedata.category(ch)[0] not in "LN":
                continue
            base = "".join(
                c for c in unicodedata.normalize("NFKD", ch) if not unicodedata.combining(c)
            )
            if base.isascii() and base.isalnum():
                table[cp] = base
    for ch, ascii_form in (_SPECIAL_LETTERS | _PUNCTUATION).items():
        table[ord(ch)] = ascii_form
    # Lone combining accents, as in decomposed input ("e" + U+0301): drop the accent.
    for cp in range(0x0300, 0x0370):
        table[cp] = None
    for cp in range(0x2000, 0x200B):  # en space … hair space
        table[cp] = " "
    for ch in "\u00a0\u202f\u205f\u3000":
        table[ord(ch)] = " "
    for ch in _INVISIBLE:
        table[ord(ch)] = None
    return table


_TRANSLITERATE: Final[dict[int, str | None]] = _build_transliteration()
_DROP_QUOTES: Final[dict[int, None]] = {ord('"'): None, ord("\\"): None}
_PHONE_FORMATTING: Final[dict[int, None]] = dict.fromkeys(map(ord, " -.()"), None)


# --------------------------------------------------------------------------------------------
# Normalisers and checks (used from the table)
# --------------------------------------------------------------------------------------------


def _phone_digits(value: str) -> str:
    """Remove phone formatting: spaces, ``-``, ``.``, parentheses and one leading ``+``."""
    if value[0] == "+":
        value = value[1:]
    return value.translate(_PHONE_FORMATTING)


def _drop_leading_plus(value: str) -> str:
    return value[1:] if value[0] == "+" else value


_ASCII_UPPER: Final[dict[int, int]] = {c: c - 32 for c in range(ord("a"), ord("z") + 1)}


def _upper(value: str) -> str:
    # a-z only: str.upper() would also turn "ß" into "SS" or "ﬀ" into "FF", which are not
    # what the producer wrote.
    return value.translate(_ASCII_UPPER)


_GENDERS: Final[frozenset[str]] = frozenset({"M", "F", "U"})
_DATE_SHAPE: Final[re.Pattern[str]] = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def _check_gender(value: str) -> str | None:
    return None if value in _GENDERS else "must be one of M, F, U"


def _check_date(value: str) -> str | None:
    if _DATE_SHAPE.fullmatch(value) is None:
        return "must be a date as YYYY-MM-DD"
    try:
        datetime.date(int(value[:4]), int(value[5:7]), int(value[8:]))
    except ValueError:
        # MySQL would store an impossible date as 0000-00-00 (or refuse the whole INSERT).
        return "is not a real date (YYYY-MM-DD with an existing month and day)"
    return None


_RANK_MAX: Final = 32767  # vicidial_list.rank is a signed SMALLINT: the server clamps above
_RANK_MSG: Final = (
    f"must be a whole number from 0 to {_RANK_MAX}, digits only (no sign or leading zeros)"
)


def _check_rank(value: str) -> str | None:
    # "007" would be stored as 7: a leading zero is refused rather than silently dropped.
    if int(value) > _RANK_MAX or (value[0] == "0" and value != "0"):
        return _RANK_MSG
    return None


# --------------------------------------------------------------------------------------------
# The column table
# --------------------------------------------------------------------------------------------

# Allowed-character sets, as the bodies of a regex character class. They are the sets that
# agc/api.php keeps with use_non_latin=0, minus '+' where the server turns '+' into a space.
_NAME_SET: Final = r"\- '_.0-9a-zA-Z"  # title, first_name, last_name
_NAME_DESC: Final = "letters A-Z, digits, space and - ' _ ."
_ADDR_SET: Final = r"\- '.:/@_0-9a-zA-Z"  # address1-3, city, security_phrase, owner
_ADDR_DESC: Final = "letters A-Z, digits, space and - ' . : / @ _"
# comments, source_id, vendor_lead_code: the server only removes ';' and '#' (and turns '+'
# into a space); its INSERT breaks on '"' and '\' (removed before this check). The ASCII part:
# tab, line breaks and printable ASCII without # + ; (and without " \, which never get here).
# Non-ASCII text is kept by a server in use_non_latin mode (see _non_latin_problem), not
# otherwise: latin1 tables lose it.
_TEXT_SET: Final = r"\t\n\r\x20\x21\x24-\x2a\x2c-\x3a\x3c-\x5b\x5d-\x7e"
_TEXT_DESC: Final = "ASCII text (tab and line breaks included) except ; # +"
_TEXT_DESC_NON_LATIN: Final = "any text except ; # + and control characters"


@dataclass(frozen=True, slots=True)
class _Rule:
    """How one lead field must look for VICIdial to store it unchanged."""

    max_len: int
    allowed: str  # regex character-class body: what survives the server's preg_replace
    allowed_desc: str  # the same, for people
    min_len: int = 1
    plus_to_space: bool = False  # the server turns '+' into ' ' (else '+' is simply dropped)
    transliterate: bool = False  # human text: é -> e rather than an error
    drop_quotes: bool = False  # free text: remove '"' and '\' (DESIGN "Lead rules")
    int_ok: bool = False  # an int value is accepted (and written in decimal)
    normalise: Callable[[str], str] | None = None  # after trimming, before any check
    check: Callable[[str], str | None] | None = None  # semantic check: an error message or None
    format_msg: str | None = None  # replaces the charset/length messages (gender, rank, date)
    bad_chars_msg: str = "contains characters VICIdial would drop"
    unit: str = "characters"
    hint: bool = True  # append "(it keeps …)" to the bad-characters message
    international: bool = False  # a leading '+' means "country code included" (phones)
    # use_non_latin widens the set: letters of every script instead of a-zA-Z (letters), or
    # any text but the characters the server removes (text: comments, source_id, ...).
    letters: bool = False
    text: bool = False
    ok: re.Pattern[str] = field(init=False, repr=False, compare=False)
    bad: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ok", re.compile(f"[{self.allowed}]*"))
        object.__setattr__(self, "bad", re.compile(f"[^{self.allowed}]"))


_PHONE_MSG: Final = (
    "may only contain digits once spaces, '-', '.', parentheses and a leading '+' are removed;"
    " found"
)


def _name(size: int) -> _Rule:
    return _Rule(
        size,
        _NAME_SET,
        _NAME_DESC,
        plus_to_space=True,
        transliterate=True,
        drop_quotes=True,
        letters=True,
    )


def _address(size: int) -> _Rule:
    return _Rule(
        size,
        _ADDR_SET,
        _ADDR_DESC,
        plus_to_space=True,
        transliterate=True,
        drop_quotes=True,
        letters=True,
    )


# Every accepted key, in the order VICIdial documents them. Sizes are the vicidial_list
# columns (shared/vicidial/external_add_lead.md); character sets are agc/api.php's.
_RULES: Final[dict[str, _Rule]] = {
    "agent_user": _Rule(
        20, r"\-_0-9a-zA-Z", "letters A-Z, digits, - and _", min_len=2, int_ok=True
    ),
    "phone_number": _Rule(
        18,
        "0-9",
        "digits",
        min_len=6,
        int_ok=True,
        normalise=_phone_digits,
        bad_chars_msg=_PHONE_MSG,
        unit="digits",
        hint=False,
        international=True,
    ),
    "phone_code": _Rule(10, "0-9X", "digits and X", int_ok=True, normalise=_drop_leading_plus),
    "first_name": _name(30),
    "last_name": _name(30),
    "middle_initial": _Rule(
        1, "0-9a-zA-Z", "a letter A-Z or a digit", transliterate=True, letters=True
    ),
    # title: the server keeps no '+' at all here (it is dropped, not turned into a space).
    "title": _Rule(4, _NAME_SET, _NAME_DESC, transliterate=True, drop_quotes=True, letters=True),
    "address1": _address(100),
    "address2": _address(100),
    "address3": _address(100),
    # alt_phone: the server would keep "727-555-1212" as text, but the dialer dials it (ALT
    # dial), so it gets the same treatment as phone_number: formatting removed, digits only.
    "alt_phone": _Rule(
        12,
        "0-9",
        "digits",
        int_ok=True,
        normalise=_phone_digits,
        bad_chars_msg=_PHONE_MSG,
        unit="digits",
        hint=False,
        international=True,
    ),
    "city": _address(50),
    "state": _Rule(2, r"\- 0-9a-zA-Z", "letters A-Z, digits, space and -", letters=True),
    "province": _Rule(
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
    "postal_code": _Rule(
        10, r"\- 0-9a-zA-Z", "letters A-Z, digits, space and -", plus_to_space=True, letters=True
    ),
    "country_code": _Rule(3, "A-Z", "letters A-Z", normalise=_upper),
    "email": _Rule(
        70,
        r"\- '.:/@%_0-9a-zA-Z",
        "letters A-Z, digits, space and - ' . : / @ % _",
        plus_to_space=True,
        letters=True,
    ),
    "comments": _Rule(
        255,
        _TEXT_SET,
        _TEXT_DESC,
        plus_to_space=True,
        transliterate=True,
        drop_quotes=True,
        text=True,
    ),
    "source_id": _Rule(
        50, _TEXT_SET, _TEXT_DESC, plus_to_space=True, drop_quotes=True, int_ok=True, text=True
    ),
    "vendor_lead_code": _Rule(
        20, _TEXT_SET, _TEXT_DESC, plus_to_space=True, drop_quotes=True, int_ok=True, text=True
    ),
    "gender": _Rule(
        1,
        "A-Z",
        "M, F or U",
        normalise=_upper,
        check=_check_gender,
        format_msg="must be one of M, F, U",
    ),
    "date_of_birth": _Rule(
        10, r"\-0-9", "YYYY-MM-DD", check=_check_date, format_msg="must be a date as YYYY-MM-DD"
    ),
    "security_phrase": _address(100),
    "rank": _Rule(
        5,
        "0-9",
        "digits",
        int_ok=True,
        check=_check_rank,
        format_msg=_RANK_MSG,
    ),
    "owner": _Rule(
        20, _ADDR_SET, _ADDR_DESC, plus_to_space=True, drop_quotes=True, int_ok=True, letters=True
    ),
}

_REQUIRED: Final = ("agent_user", "phone_number", "phone_code")

LEAD_FIELDS: Final[tuple[str, ...]] = tuple(_RULES)
"""Every key :func:`make_lead` accepts, in VICIdial's order."""

OPTIONAL_FIELDS: Final[tuple[str, ...]] = tuple(f for f in LEAD_FIELDS if f not in _REQUIRED)
"""The lead fields other than ``agent_user``, ``phone_number`` and ``phone_code``."""

_ORDER: Final[dict[str, int]] = {name: i for i, name in enumerate(LEAD_FIELDS)}
_PHONE_CODE_RULE: Final = _RULES["phone_code"]
_INTERNATIONAL: Final = tuple(name for name, rule in _RULES.items() if rule.international)

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
}
_NOT_STORED.update(
    dict.fromkeys(
        ("source", "user", "pass", "function"),
        "set by the dispatcher from its settings, not by the lead",
    )
)


# --------------------------------------------------------------------------------------------
# The Lead
# --------------------------------------------------------------------------------------------


class _FrozenFields(Mapping[str, str]):
    """A read-only, hashable, picklable mapping of the optional fields of a Lead."""

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[str, str] | None = None) -> None:
        self._data: dict[str, str] = dict(data) if data is not None else {}

    @classmethod
    def _adopt(cls, data: dict[str, str]) -> _FrozenFields:
        # Hot path: take ownership of a dict nobody else holds, without copying it.
        self = cls.__new__(cls)
        self._data = data
        return self

    def __getitem__(self, key: str) -> str:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __eq__(self, other: object) -> bool:
        if isinstance(other, _FrozenFields):
            return self._data == other._data
        if isinstance(other, Mapping):
            return self._data == dict(other.items())
        return NotImplemented

    def __hash__(self) -> int:
        return hash(frozenset(self._data.items()))

    def __reduce__(self) -> tuple[type[_FrozenFields], tuple[dict[str, str]]]:
        return (_FrozenFields, (dict(self._data),))

    def __repr__(self) -> str:
        return repr(self._data)


def _mask(phone: str) -> str:
    # Same policy as the logs: never show more than the last 4 digits of a phone number.
    return "*" * max(len(phone) - 4, 0) + phone[-4:]


@dataclass(frozen=True, slots=True, repr=False)
class Lead:
    """A validated, normalised lead, ready to be queued and sent to ``external_add_lead``.

    Build leads with :func:`make_lead`: the constructor itself does not validate. ``fields``
    holds the optional fields that were given (normalised), as a read-only mapping.
    """

    agent_user: str
    phone_number: str  # digits only
    phone_code: str
    fields: Mapping[str, str] = field(default_factory=_FrozenFields)

    def __post_init__(self) -> None:
        # Keep the Lead immutable (and hashable) even when built by hand from a plain dict.
        if not isinstance(self.fields, _FrozenFields):
            object.__setattr__(self, "fields", _FrozenFields(self.fields))

    def to_dict(self) -> dict[str, str]:
        """The lead as a JSON-ready dict; ``make_lead(lead.to_dict()) == lead``."""
        return {
            "agent_user": self.agent_user,
            "phone_number": self.phone_number,
            "phone_code": self.phone_code,
            **self.fields,
        }

    def vicidial_params(self) -> dict[str, str]:
        """The lead's form fields for ``external_add_lead``.

        The HTTP client adds ``source``, ``user``, ``pass``, ``function``, ``value`` and the DNC
        flags; every value here is already in the exact form VICIdial stores unchanged. Today
        these are the same keys and values as :meth:`to_dict`; they are two methods because one
        is the queue's format and the other is VICIdial's.
        """
        return self.to_dict()

    def __repr__(self) -> str:
        # Phone numbers are personal data: a Lead that ends up in a log shows the last 4 only.
        shown = dict(self.fields)
        if "alt_phone" in shown:
            shown["alt_phone"] = _mask(shown["alt_phone"])
        return (
            f"Lead(agent_user={self.agent_user!r}, phone_number={_mask(self.phone_number)!r}, "
            f"phone_code={self.phone_code!r}, fields={shown!r})"
        )


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------

_MAX_SHOWN_CHARS: Final = 10
_MAX_INT_BITS: Final = 128  # 39 decimal digits, wider than any column


def _show_chars(chars: Iterable[str]) -> str:
    unique = list(dict.fromkeys(chars))
    shown = ", ".join(repr(c) for c in unique[:_MAX_SHOWN_CHARS])
    return shown + (", …" if len(unique) > _MAX_SHOWN_CHARS else "")


_BMP_MAX: Final = 0xFFFF


def _char_kind(char: str, rule: _Rule, non_latin: bool) -> str | None:
    """What the server would do with ``char``, which is outside the field's ASCII set.

    None: kept as sent (a letter of any script, or text, in ``non_latin`` mode).
    """
    if char == "+" and rule.plus_to_space:
        return "plus"
    if char < "\x80":
        return "dropped"
    if not non_latin:
        return "non_ascii" if rule.text else "dropped"
    if not (rule.letters or rule.text):
        return "dropped"
    if ord(char) > _BMP_MAX:
        return "astral"
    category = unicodedata.category(char)
    if rule.letters:
        if category[0] == "L":
            return None
        return "mark" if category[0] == "M" else "dropped"
    # Free text keeps anything; control characters and lone surrogates are not text.
    return "dropped" if category in ("Cc", "Cs") else None


def _charset_problem(rule: _Rule, value: str, non_latin: bool) -> str | None:
    """Why ``value``, which fails ``rule.ok`` (the ASCII set), would not be stored as sent;
    None when the server keeps it all (possible only in ``non_latin`` mode)."""
    if rule.format_msg is not None:
        return rule.format_msg
    found: dict[str, list[str]] = {}
    for char in rule.bad.findall(value):
        kind = _char_kind(char, rule, non_latin)
        if kind is not None:
            found.setdefault(kind, []).append(char)
    if not found:
        return None
    parts = []
    if "plus" in found:
        parts.append("contains '+', which VICIdial turns into a space")
    if "dropped" in found:
        desc = rule.allowed_desc
        if non_latin and rule.text:
            desc = _TEXT_DESC_NON_LATIN
        elif non_latin and rule.letters:
            desc = desc.replace(" A-Z", " of any script")
        if rule.letters and not non_latin and any(c.isalpha() for c in found["dropped"]):
            desc += "; letters of other scripts need DISPATCHER_VICIDIAL_NON_LATIN"
        hint = f" (it keeps {desc})" if rule.hint else ""
        parts.append(f"{rule.bad_chars_msg}: {_show_chars(found['dropped'])}{hint}")
    if "non_ascii" in found:
        parts.append(
            f"contains non-ASCII characters: {_show_chars(found['non_ascii'])} (a VICIdial"
            " without use_non_latin may not store them; see DISPATCHER_VICIDIAL_NON_LATIN)"
        )
    if "astral" in found:
        parts.append(
            "contains characters above U+FFFF, which VICIdial with use_non_latin stores as"
            f" '?': {_show_chars(found['astral'])}"
        )
    if "mark" in found:
        parts.append(
            "contains combining marks that do not merge into a letter (NFC), which VICIdial"
            f" with use_non_latin drops from this field: {_show_chars(found['mark'])}"
        )
    return "; ".join(parts)


def _length_problem(rule: _Rule, value: str) -> str | None:
    n = len(value)
    if rule.min_len <= n <= rule.max_len:
        return None
    if rule.format_msg is not None:
        return rule.format_msg
    if rule.min_len > 1:
        return f"must be {rule.min_len}-{rule.max_len} {rule.unit} long, got {n}"
    return (
        f"is {n} {rule.unit} long; VICIdial's column holds at most {rule.max_len}"
        " (it would cut the rest)"
    )


def _type_problem(rule: _Rule, raw: object) -> str:
    wanted = "a string or an integer" if rule.int_ok else "a string"
    return f"must be {wanted}, not {type(raw).__name__}"


def _clean(rule: _Rule, raw: object, non_latin: bool) -> tuple[str | None, str | None]:
    """Normalise and check one value: ``(value, None)``, ``(None, problem)`` or ``(None, None)``
    when the value is absent (None or blank)."""
    if isinstance(raw, str):
        value = raw.strip()
        if not value:
            return None, None
        if non_latin and not value.isascii():
            value = unicodedata.normalize("NFC", value)
    elif raw is None:
        return None, None
    elif isinstance(raw, int) and not isinstance(raw, bool) and rule.int_ok:
        if raw < 0:
            return None, rule.format_msg or "must not be negative"
        if raw.bit_length() > _MAX_INT_BITS:
            # str() of a huge int is slow (and refused past 4300 digits): no column is that wide.
            return None, rule.format_msg or f"has more than {rule.max_len} {rule.unit}"
        value = str(raw)
    else:
        return None, _type_problem(rule, raw)

    if rule.normalise is not None:
        value = rule.normalise(value)
    if rule.transliterate and not non_latin and not value.isascii():
        value = value.translate(_TRANSLITERATE).strip()
    if rule.drop_quotes and ('"' in value or "\\" in value):
        value = value.translate(_DROP_QUOTES).strip()
    if not value:
        # Only formatting, quotes or invisible characters: there was nothing to store.
        return None, None

    if rule.ok.fullmatch(value) is None:
        problem = _charset_problem(rule, value, non_latin)
        if problem is not None:
            return None, problem
    problem = _length_problem(rule, value)
    if problem is None and rule.check is not None:
        problem = rule.check(value)
    if problem is not None:
        return None, problem
    return value, None


def _unknown_problem(key: object) -> str:
    if not isinstance(key, str):
        return f"field names must be strings, not {type(key).__name__}"
    reason = _NOT_STORED.get(key)
    if reason is not None:
        return f"not accepted: {reason}"
    close = difflib.get_close_matches(key.lower(), LEAD_FIELDS, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown field: VICIdial has no lead field of that name{hint}"


def _strip_country_code(name: str, digits: str, phone_code: str) -> tuple[str | None, str | None]:
    """A number written as ``+<country code><number>``: keep the number, check the code."""
    if not digits.startswith(phone_code):
        return None, (
            f"is written with a leading '+' but does not start with phone_code {phone_code!r};"
            " send the number without its country code and set phone_code"
        )
    national = digits[len(phone_code) :]
    rule = _RULES[name]
    if not national:
        return None, f"has no digits after the country code {phone_code!r}"
    return national, _length_problem(rule, national)


def _field_sort_key(error: FieldError) -> int:
    return _ORDER.get(error.field, len(_ORDER))


def make_lead(
    data: Mapping[str, object], *, default_phone_code: str = "1", non_latin: bool = False
) -> Lead:
    """Validate and normalise one lead.

    ``data`` maps lead field names (:data:`LEAD_FIELDS`) to values. ``phone_code`` falls back to
    ``default_phone_code`` when it is absent or blank. ``non_latin`` says that the dialer runs
    VICIdial's ``use_non_latin=1`` (its rules are described at the top of this module). Raises
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
    errors: list[FieldError] = []
    values: dict[str, str] = {}
    rules = _RULES
    for key, raw in data.items():
        rule = rules.get(key) if isinstance(key, str) else None
        if rule is None:
            errors.append(FieldError(str(key), _unknown_problem(key)))
            continue
        value, problem = _clean(rule, raw, non_latin)
        if problem is not None:
            errors.append(FieldError(key, problem))
        elif value is not None:
            values[key] = value

    # Required fields. A field that already has an error is not also reported as missing.
    agent_user = values.pop("agent_user", None)
    phone_number = values.pop("phone_number", None)
    phone_code = values.pop("phone_code", None)
    if agent_user is None and not _has_error(errors, "agent_user"):
        errors.append(FieldError("agent_user", "is required"))
    if phone_number is None and not _has_error(errors, "phone_number"):
        errors.append(FieldError("phone_number", "is required"))
    if phone_code is None and not _has_error(errors, "phone_code"):
        phone_code, problem = _clean(_PHONE_CODE_RULE, default_phone_code, non_latin)
        if problem is not None or phone_code is None:
            errors.append(
                FieldError(
                    "phone_code",
                    f"not given, and the default {default_phone_code!r} is not valid: "
                    f"{problem or 'it is blank'}",
                )
            )

    # A phone written with a leading '+' includes its country code, which must be phone_code:
    # VICIdial dials phone_code in front of the number, so the code must not be in it twice.
    if phone_code is not None:
        for name in _INTERNATIONAL:
            raw = data.get(name)
            if not (isinstance(raw, str) and raw.lstrip().startswith("+")):
                continue
            digits = phone_number if name == "phone_number" else values.get(name)
            if digits is None:
                continue
            national, problem = _strip_country_code(name, digits, phone_code)
            if problem is not None or national is None:
                errors.append(FieldError(name, problem or "is empty"))
                if name == "phone_number":
                    phone_number = None
            elif name == "phone_number":
                phone_number = national
            else:
                values[name] = national

    if errors or agent_user is None or phone_number is None or phone_code is None:
        errors.sort(key=_field_sort_key)
        raise InvalidLead(errors)
    if len(values) > 1:
        # VICIdial's order, so that to_dict() and the request body are deterministic.
        values = {k: values[k] for k in sorted(values, key=_ORDER.__getitem__)}
    return Lead(agent_user, phone_number, phone_code, _FrozenFields._adopt(values))


def _has_error(errors: list[FieldError], name: str) -> bool:
    return any(e.field == name for e in errors)


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
