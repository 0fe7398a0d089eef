"""The lead rules both targets share: the normalisations, and how one field is checked.

VICIdial has two lead-add calls (DESIGN.md, "Two ways into VICIdial"): the Agent API's
``external_add_lead`` (:mod:`dispatcher.model.lead`) and the Non-Agent API's ``add_lead``
(:mod:`dispatcher.model.list_lead`). Neither refuses a badly formed field: each *mangles*
it (drops characters outside the field's set, turns ``+`` into a space, cuts at the
column) and answers SUCCESS. Their filters differ field by field, so each target has its
own table of :class:`Rule`; what they share lives here:

* the normalisations, the only ones (README "Leads"): trimming (a blank value is not
  given), NFC with ``non_latin``, phone formatting, ``a-z`` upper-cased in ``gender`` and
  ``country_code``, transliteration of human text without ``non_latin``, ``"`` and ``\\``
  removed from free text;
* :func:`clean`, which applies them to one value and says why the value would not be
  stored as sent (a character the server drops, a ``+`` it turns into a space, a value
  over its column, what ``use_non_latin`` still loses), naming nothing but the problem;
* :func:`validate`, the loop over a lead's fields with a table: unknown names, every
  problem collected, ``phone_code``'s default, and a phone written ``+<country code>``;
* :class:`FrozenFields`, the read-only mapping a ``Lead`` keeps its fields in.

The hot path is a dictionary look-up, a few C-level string operations and one
precompiled ``fullmatch`` per field. Values that are not ASCII take a slower path (one
Unicode category look-up per character).
"""

from __future__ import annotations

import datetime
import difflib
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Final

from dispatcher.model.errors import FieldError

__all__ = [
    "ADDR_DESC",
    "ADDR_SET",
    "NAME_DESC",
    "NAME_SET",
    "PHONE_MSG",
    "RANK_MSG",
    "TEXT_DESC",
    "TEXT_SET",
    "FrozenFields",
    "Rule",
    "RuleTable",
    "address_rule",
    "check_date",
    "check_gender",
    "check_rank",
    "clean",
    "drop_leading_plus",
    "length_problem",
    "mask",
    "name_rule",
    "phone_digits",
    "upper",
    "validate",
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
# Normalisers and checks (used from the tables)
# --------------------------------------------------------------------------------------------


def phone_digits(value: str) -> str:
    """Remove phone formatting: spaces, ``-``, ``.``, parentheses and one leading ``+``."""
    if value[0] == "+":
        value = value[1:]
    return value.translate(_PHONE_FORMATTING)


def drop_leading_plus(value: str) -> str:
    return value[1:] if value[0] == "+" else value


_ASCII_UPPER: Final[dict[int, int]] = {c: c - 32 for c in range(ord("a"), ord("z") + 1)}


def upper(value: str) -> str:
    # a-z only: str.upper() would also turn "ß" into "SS" or "ﬀ" into "FF", which are not
    # what the producer wrote.
    return value.translate(_ASCII_UPPER)


_GENDERS: Final[frozenset[str]] = frozenset({"M", "F", "U"})
_DATE_SHAPE: Final[re.Pattern[str]] = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def check_gender(value: str) -> str | None:
    return None if value in _GENDERS else "must be one of M, F, U"


def check_date(value: str) -> str | None:
    if _DATE_SHAPE.fullmatch(value) is None:
        return "must be a date as YYYY-MM-DD"
    try:
        datetime.date(int(value[:4]), int(value[5:7]), int(value[8:]))
    except ValueError:
        # MySQL would store an impossible date as 0000-00-00 (or refuse the whole INSERT).
        return "is not a real date (YYYY-MM-DD with an existing month and day)"
    return None


_RANK_MAX: Final = 32767  # vicidial_list.rank is a signed SMALLINT: the server clamps above
RANK_MSG: Final = (
    f"must be a whole number from 0 to {_RANK_MAX}, digits only (no sign or leading zeros)"
)


def check_rank(value: str) -> str | None:
    # "007" would be stored as 7: a leading zero is refused rather than silently dropped.
    if int(value) > _RANK_MAX or (value[0] == "0" and value != "0"):
        return RANK_MSG
    return None


# --------------------------------------------------------------------------------------------
# One field's rule
# --------------------------------------------------------------------------------------------

# Allowed-character sets, as the bodies of a regex character class: the sets that both
# APIs keep with use_non_latin=0, minus '+' where the server turns '+' into a space.
NAME_SET: Final = r"\- '_.0-9a-zA-Z"  # title, first_name, last_name
NAME_DESC: Final = "letters A-Z, digits, space and - ' _ ."
ADDR_SET: Final = r"\- '.:/@_0-9a-zA-Z"  # address1-3, city, security_phrase, owner
ADDR_DESC: Final = "letters A-Z, digits, space and - ' . : / @ _"
# comments, source_id, vendor_lead_code: the servers only remove ';' and '#' (add_lead also
# '"') and turn '+' into a space; their INSERTs break on '"' and '\' (removed before this
# check). The ASCII part: tab, line breaks and printable ASCII without # + ; (and without
# " \, which never get here). Non-ASCII text is kept by a server in use_non_latin mode (see
# _char_kind), not otherwise: latin1 tables lose it.
TEXT_SET: Final = r"\t\n\r\x20\x21\x24-\x2a\x2c-\x3a\x3c-\x5b\x5d-\x7e"
TEXT_DESC: Final = "ASCII text (tab and line breaks included) except ; # +"
_TEXT_DESC_NON_LATIN: Final = "any text except ; # + and control characters"
PHONE_MSG: Final = (
    "may only contain digits once spaces, '-', '.', parentheses and a leading '+' are removed;"
    " found"
)


@dataclass(frozen=True, slots=True)
class Rule:
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


def name_rule(size: int) -> Rule:
    """first_name, last_name: the same set for both APIs."""
    return Rule(
        size,
        NAME_SET,
        NAME_DESC,
        plus_to_space=True,
        transliterate=True,
        drop_quotes=True,
        letters=True,
    )


def address_rule(size: int) -> Rule:
    """address1-3, city, security_phrase: the same set for both APIs."""
    return Rule(
        size,
        ADDR_SET,
        ADDR_DESC,
        plus_to_space=True,
        transliterate=True,
        drop_quotes=True,
        letters=True,
    )


# --------------------------------------------------------------------------------------------
# The fields of a Lead
# --------------------------------------------------------------------------------------------


class FrozenFields(Mapping[str, str]):
    """A read-only, hashable, picklable mapping of the optional fields of a Lead."""

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[str, str] | None = None) -> None:
        self._data: dict[str, str] = dict(data) if data is not None else {}

    @classmethod
    def adopt(cls, data: dict[str, str]) -> FrozenFields:
        """Take ownership of a dict nobody else holds, without copying it (the hot path)."""
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
        if isinstance(other, FrozenFields):
            return self._data == other._data
        if isinstance(other, Mapping):
            return self._data == dict(other.items())
        return NotImplemented

    def __hash__(self) -> int:
        return hash(frozenset(self._data.items()))

    def __reduce__(self) -> tuple[type[FrozenFields], tuple[dict[str, str]]]:
        return (FrozenFields, (dict(self._data),))

    def __repr__(self) -> str:
        return repr(self._data)


def mask(phone: str) -> str:
    """Same policy as the logs: never show more than the last 4 digits of a phone number."""
    return "*" * max(len(phone) - 4, 0) + phone[-4:]


# --------------------------------------------------------------------------------------------
# Checking one value
# --------------------------------------------------------------------------------------------

_MAX_SHOWN_CHARS: Final = 10
_MAX_INT_BITS: Final = 128  # 39 decimal digits, wider than any column


def _show_chars(chars: Iterable[str]) -> str:
    unique = list(dict.fromkeys(chars))
    shown = ", ".join(repr(c) for c in unique[:_MAX_SHOWN_CHARS])
    return shown + (", …" if len(unique) > _MAX_SHOWN_CHARS else "")


_BMP_MAX: Final = 0xFFFF


def _char_kind(char: str, rule: Rule, non_latin: bool) -> str | None:
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


def _charset_problem(rule: Rule, value: str, non_latin: bool) -> str | None:
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


def length_problem(rule: Rule, value: str) -> str | None:
    """Why ``value`` is too short or too long for its column; None when it fits."""
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


def _type_problem(rule: Rule, raw: object) -> str:
    wanted = "a string or an integer" if rule.int_ok else "a string"
    return f"must be {wanted}, not {type(raw).__name__}"


def clean(rule: Rule, raw: object, non_latin: bool) -> tuple[str | None, str | None]:
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
    problem = length_problem(rule, value)
    if problem is None and rule.check is not None:
        problem = rule.check(value)
    if problem is not None:
        return None, problem
    return value, None


# --------------------------------------------------------------------------------------------
# Checking a lead's fields with one target's table
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RuleTable:
    """One target's lead fields: every accepted key's rule, in the order VICIdial documents
    them, and why some plausible keys are refused."""

    rules: Mapping[str, Rule]
    #: keys that are not lead fields of this target but that a producer may plausibly
    #: send, and why they are refused
    not_stored: Mapping[str, str]
    #: appended to the message for a name the table does not know
    unknown_hint: str = ""
    order: Mapping[str, int] = field(init=False, repr=False)
    international: tuple[str, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "order", {name: i for i, name in enumerate(self.rules)})
        object.__setattr__(
            self,
            "international",
            tuple(name for name, rule in self.rules.items() if rule.international),
        )

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.rules)

    def unknown_problem(self, key: object) -> str:
        if not isinstance(key, str):
            return f"field names must be strings, not {type(key).__name__}"
        reason = self.not_stored.get(key)
        if reason is not None:
            return f"not accepted: {reason}"
        close = difflib.get_close_matches(key.lower(), self.names, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else self.unknown_hint
        return f"unknown field: VICIdial has no lead field of that name{hint}"

    def sort(self, errors: list[FieldError]) -> None:
        """Errors in the table's order (unknown names last)."""
        errors.sort(key=lambda e: self.order.get(e.field, len(self.order)))

    def ordered(self, values: dict[str, str]) -> dict[str, str]:
        """``values`` in the table's order, so that to_dict() and the request are
        deterministic."""
        if len(values) <= 1:
            return values
        return {k: values[k] for k in sorted(values, key=self.order.__getitem__)}


def _strip_country_code(rule: Rule, digits: str, phone_code: str) -> tuple[str | None, str | None]:
    """A number written as ``+<country code><number>``: keep the number, check the code."""
    if not digits.startswith(phone_code):
        return None, (
            f"is written with a leading '+' but does not start with phone_code {phone_code!r};"
            " send the number without its country code and set phone_code"
        )
    national = digits[len(phone_code) :]
    if not national:
        return None, f"has no digits after the country code {phone_code!r}"
    return national, length_problem(rule, national)


def validate(
    data: Mapping[str, object],
    table: RuleTable,
    *,
    required: tuple[str, ...],
    default_phone_code: str,
    non_latin: bool,
) -> tuple[dict[str, str], list[FieldError]]:
    """Every field of ``data`` checked with ``table``: the normalised values (the required
    ones and ``phone_code`` included) and every problem, in the table's order.

    A required field that is missing is reported ``is required`` (unless it already has an
    error). ``phone_code`` falls back to ``default_phone_code``. A phone written with a
    leading ``+`` includes its country code, which must be ``phone_code``: VICIdial dials
    ``phone_code`` in front of the number, so the code must not be in it twice.
    """
    errors: list[FieldError] = []
    values: dict[str, str] = {}
    rules = table.rules
    for key, raw in data.items():
        rule = rules.get(key) if isinstance(key, str) else None
        if rule is None:
            errors.append(FieldError(str(key), table.unknown_problem(key)))
            continue
        value, problem = clean(rule, raw, non_latin)
        if problem is not None:
            errors.append(FieldError(key, problem))
        elif value is not None:
            values[key] = value

    for name in required:
        if name not in values and not any(e.field == name for e in errors):
            errors.append(FieldError(name, "is required"))
    phone_code = values.get("phone_code")
    if phone_code is None and not any(e.field == "phone_code" for e in errors):
        phone_code, problem = clean(rules["phone_code"], default_phone_code, non_latin)
        if problem is not None or phone_code is None:
            errors.append(
                FieldError(
                    "phone_code",
                    f"not given, and the default {default_phone_code!r} is not valid: "
                    f"{problem or 'it is blank'}",
                )
            )
        else:
            values["phone_code"] = phone_code

    if phone_code is not None:
        for name in table.international:
            raw = data.get(name)
            if not (isinstance(raw, str) and raw.lstrip().startswith("+")):
                continue
            digits = values.get(name)
            if digits is None:
                continue
            national, problem = _strip_country_code(rules[name], digits, phone_code)
            if problem is not None or national is None:
                errors.append(FieldError(name, problem or "is empty"))
                del values[name]
            else:
                values[name] = national
    if errors:
        table.sort(errors)
    return values, errors
