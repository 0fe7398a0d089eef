"""What the lead tests share: a valid lead to vary, the table of invalid leads with the
field each must name, the normalisations README "Leads" documents (written again here, not
taken from the product), and values of every kind for property tests.

Used by tests/model/ (the lead's rules and their property against the simulator), the
producer's tests (tests/ops/test_enqueue.py) and the list client's property
(tests/workers/test_list_client.py).
"""

from __future__ import annotations

import datetime
import string
import unicodedata

import pytest
from hypothesis import strategies as st

from dispatcher.simulator.mangling import RAW_SQL_FIELDS

__all__ = [
    "ANY_CHAR",
    "ANY_VALUE",
    "BASE",
    "FREE_TEXT",
    "INVALID",
    "PHONES",
    "QUOTES_REMOVED",
    "TRANSLITERATED",
    "TRANSLITERATION",
    "TRICKY",
    "UPPER",
    "documented",
    "lead_with",
    "refused_by_design",
    "with_int_key",
]

BASE: dict[str, object] = {"agent_user": "1000", "phone_number": "7275551212"}


def lead_with(**fields: object) -> dict[str, object]:
    """:data:`BASE` with ``fields`` set (or added)."""
    return {**BASE, **fields}


def with_int_key() -> dict[object, object]:
    """:data:`BASE` with a key that is not a string."""
    data: dict[object, object] = {7: "x"}
    for key, value in BASE.items():
        data[key] = value
    return data


# ---------------------------------------------------------------------------------------------
# Invalid leads: the exact field named, and a helpful message
# ---------------------------------------------------------------------------------------------

INVALID = [
    # required fields
    pytest.param({"phone_number": "7275551212"}, "agent_user", "is required", id="no-agent"),
    pytest.param(lead_with(agent_user=None), "agent_user", "is required", id="agent-none"),
    pytest.param(lead_with(agent_user="  "), "agent_user", "is required", id="agent-blank"),
    pytest.param({"agent_user": "1000"}, "phone_number", "is required", id="no-phone"),
    pytest.param(lead_with(phone_number=""), "phone_number", "is required", id="phone-empty"),
    # agent_user
    pytest.param(lead_with(agent_user="1"), "agent_user", "2-20", id="agent-short"),
    pytest.param(lead_with(agent_user="a" * 21), "agent_user", "2-20", id="agent-long"),
    pytest.param(
        lead_with(agent_user="jo smith!"), "agent_user", "would drop: ' ', '!'", id="agent-chars"
    ),
    pytest.param(lead_with(agent_user="jöe"), "agent_user", "'ö'", id="agent-accent"),
    # phone_number
    pytest.param(lead_with(phone_number="12345"), "phone_number", "6-18 digits", id="phone-5"),
    pytest.param(lead_with(phone_number="1" * 19), "phone_number", "6-18 digits", id="phone-19"),
    pytest.param(lead_with(phone_number=12345), "phone_number", "got 5", id="phone-int-short"),
    pytest.param(
        lead_with(phone_number="727-555-CALL"), "phone_number", "'C', 'A', 'L'", id="phone-letters"
    ),
    pytest.param(lead_with(phone_number="727555*1212"), "phone_number", "'*'", id="phone-star"),
    pytest.param(lead_with(phone_number="7275551212#"), "phone_number", "'#'", id="phone-hash"),
    pytest.param(
        lead_with(phone_number="727/555/1212"), "phone_number", "only contain digits", id="phone-/"
    ),
    pytest.param(lead_with(phone_number="++17275551212"), "phone_number", "'+'", id="phone-++"),
    pytest.param(
        lead_with(phone_number="+44 20 7946 0958"),
        "phone_number",
        "does not start with phone_code '1'",
        id="phone-foreign-plus",
    ),
    pytest.param(lead_with(phone_number=-7275551212), "phone_number", "negative", id="phone-neg"),
    pytest.param(lead_with(phone_number=10**60), "phone_number", "more than 18", id="phone-huge"),
    # phone_code
    pytest.param(lead_with(phone_code="1-2"), "phone_code", "'-'", id="code-dash"),
    pytest.param(lead_with(phone_code="x1"), "phone_code", "'x'", id="code-lower-x"),
    pytest.param(lead_with(phone_code="1" * 11), "phone_code", "at most 10", id="code-long"),
    # unknown and unstored fields
    pytest.param(lead_with(favourite_colour="red"), "favourite_colour", "unknown", id="unknown"),
    pytest.param(
        lead_with(frist_name="Bob"), "frist_name", "did you mean 'first_name'", id="misspelt"
    ),
    pytest.param(
        lead_with(gmt_offset_now="-5.00"), "gmt_offset_now", "never stores", id="gmt-offset"
    ),
    pytest.param(lead_with(status="SALE"), "status", "ignores status", id="status"),
    pytest.param(lead_with(vendor_id="V1"), "vendor_id", "vendor_lead_code", id="vendor-id"),
    pytest.param(lead_with(value="7275551212"), "value", "phone_number", id="value"),
    pytest.param(lead_with(dnc_check=True), "dnc_check", "enqueue option", id="dnc-flag"),
    pytest.param(with_int_key(), "7", "must be strings", id="non-str-key"),
    # gender, date_of_birth, rank, state
    pytest.param(lead_with(gender="X"), "gender", "one of M, F, U", id="gender-X"),
    pytest.param(lead_with(gender="male"), "gender", "one of M, F, U", id="gender-word"),
    pytest.param(lead_with(gender=1), "gender", "not int", id="gender-int"),
    pytest.param(lead_with(date_of_birth="03/02/1980"), "date_of_birth", "YYYY-MM-DD", id="dob-us"),
    pytest.param(
        lead_with(date_of_birth="1980-3-2"), "date_of_birth", "YYYY-MM-DD", id="dob-short"
    ),
    pytest.param(
        lead_with(date_of_birth="2023-02-30"), "date_of_birth", "not a real date", id="dob-feb-30"
    ),
    pytest.param(
        lead_with(date_of_birth="1980-13-01"), "date_of_birth", "not a real date", id="dob-month-13"
    ),
    pytest.param(
        lead_with(date_of_birth="0000-00-00"), "date_of_birth", "not a real date", id="dob-zero"
    ),
    pytest.param(lead_with(rank=-1), "rank", "0 to 32767", id="rank-minus-1"),
    pytest.param(lead_with(rank="-1"), "rank", "0 to 32767", id="rank-minus-1-str"),
    # a signed SMALLINT: the server would store 32767 for anything above
    pytest.param(lead_with(rank=32768), "rank", "0 to 32767", id="rank-32768"),
    pytest.param(lead_with(rank="65535"), "rank", "0 to 32767", id="rank-65535"),
    pytest.param(lead_with(rank=65536), "rank", "0 to 32767", id="rank-65536"),
    pytest.param(lead_with(rank="999999"), "rank", "0 to 32767", id="rank-6-digits"),
    pytest.param(lead_with(rank="abc"), "rank", "0 to 32767", id="rank-abc"),
    pytest.param(lead_with(rank="1.5"), "rank", "0 to 32767", id="rank-decimal-str"),
    # the server would store 7: not a documented normalisation, so an error
    pytest.param(lead_with(rank="007"), "rank", "no sign or leading zeros", id="rank-007"),
    pytest.param(lead_with(rank="+5"), "rank", "no sign or leading zeros", id="rank-plus"),
    pytest.param(lead_with(rank=True), "rank", "not bool", id="rank-true"),
    pytest.param(lead_with(rank=2.0), "rank", "not float", id="rank-float"),
    pytest.param(lead_with(state="FLA"), "state", "at most 2", id="state-3"),
    # characters VICIdial would drop
    pytest.param(lead_with(first_name="李"), "first_name", "would drop: '李'", id="cjk"),
    pytest.param(lead_with(last_name="Иванов"), "last_name", "'И'", id="cyrillic"),
    pytest.param(
        lead_with(first_name="李!"), "first_name", "would drop: '李', '!'", id="cjk-and-bang"
    ),
    pytest.param(lead_with(comments="great 😀"), "comments", "'😀'", id="emoji"),
    pytest.param(lead_with(comments="a;b#c"), "comments", "';', '#'", id="comments-semicolon"),
    pytest.param(lead_with(comments="ring\x07bell"), "comments", "'\\x07'", id="comments-bel"),
    pytest.param(lead_with(comments="a\x00b"), "comments", "'\\x00'", id="comments-nul"),
    pytest.param(lead_with(first_name="Ann\tMarie"), "first_name", "'\\t'", id="name-tab"),
    pytest.param(lead_with(source_id="web#1"), "source_id", "'#'", id="source-hash"),
    pytest.param(lead_with(email="bob\t@x.com"), "email", "'\\t'", id="email-tab"),
    pytest.param(lead_with(email="josé@example.com"), "email", "'é'", id="email-accent"),
    pytest.param(lead_with(vendor_lead_code="Ü-1"), "vendor_lead_code", "'Ü'", id="vlc-accent"),
    pytest.param(lead_with(city="Tampa, FL"), "city", "','", id="city-comma"),
    pytest.param(lead_with(postal_code="12'345"), "postal_code", '"\'"', id="postal-quote"),
    pytest.param(lead_with(country_code="U$"), "country_code", "'$'", id="country-dollar"),
    pytest.param(lead_with(middle_initial="J."), "middle_initial", "'.'", id="initial-dot"),
    pytest.param(lead_with(gender='"M"'), "gender", "one of M, F, U", id="gender-quoted"),
    pytest.param(lead_with(email='"bob"@x.com'), "email", "'\"'", id="email-dquote"),
    # '+': turned into a space by the server in most text fields, dropped in a few
    pytest.param(
        lead_with(email="bob+tag@example.com"),
        "email",
        "'+', which VICIdial turns into a space",
        id="email-plus",
    ),
    pytest.param(
        lead_with(first_name="Mary+Ann"), "first_name", "turns into a space", id="name-plus"
    ),
    pytest.param(lead_with(comments="1+1"), "comments", "turns into a space", id="comments-plus"),
    pytest.param(lead_with(title="Dr+"), "title", "would drop: '+'", id="title-plus-dropped"),
    pytest.param(lead_with(state="F+"), "state", "would drop: '+'", id="state-plus-dropped"),
    pytest.param(
        lead_with(alt_phone="+1 (813) 555-01+2"), "alt_phone", "'+'", id="alt-phone-inner-plus"
    ),
    # alt_phone is dialled, so digits only
    pytest.param(
        lead_with(alt_phone="813-555-CALL"), "alt_phone", "only contain digits", id="alt-letters"
    ),
    pytest.param(lead_with(alt_phone="1" * 13), "alt_phone", "at most 12", id="alt-13"),
    # wrong value types
    pytest.param(lead_with(phone_number=["7275551212"]), "phone_number", "not list", id="list"),
    pytest.param(lead_with(first_name={"x": 1}), "first_name", "not dict", id="dict"),
    pytest.param(lead_with(phone_number=7275551212.0), "phone_number", "not float", id="float"),
    pytest.param(lead_with(first_name=True), "first_name", "not bool", id="bool"),
    pytest.param(
        lead_with(first_name=42), "first_name", "must be a string, not int", id="int-name"
    ),
    pytest.param(lead_with(postal_code=2134), "postal_code", "must be a string", id="int-postal"),
    pytest.param(lead_with(agent_user=b"1000"), "agent_user", "not bytes", id="bytes"),
]


# --------------------------------------------------------------------------------------------
# The documented normalisations, written again here from README "Leads"
# --------------------------------------------------------------------------------------------

PHONES = ("phone_number", "alt_phone")
UPPER = ("gender", "country_code")
TRANSLITERATED = frozenset(
    {
        "first_name",
        "last_name",
        "middle_initial",
        "title",
        "address1",
        "address2",
        "address3",
        "city",
        "province",
        "comments",
        "security_phrase",
    }
)
QUOTES_REMOVED = (TRANSLITERATED - {"middle_initial"}) | {"source_id", "vendor_lead_code", "owner"}
TRANSLITERATION = object()  # the value went through transliteration: checked separately


def documented(field: str, raw: object, *, non_latin: bool, phone_code: str) -> object:
    """The normalised value README "Leads" promises (None: not given), for a value that is
    accepted. TRANSLITERATION when the latin-mode transliteration table applies."""
    if raw is None:
        return None
    value = str(raw).strip()
    if not value:
        return None
    if non_latin:
        value = unicodedata.normalize("NFC", value)
    if field in PHONES:
        international = value.startswith("+")
        value = value.removeprefix("+")
        for char in " -.()":
            value = value.replace(char, "")
        if international:
            value = value.removeprefix(phone_code)
    elif field == "phone_code":
        value = value.removeprefix("+")
    elif field in UPPER:
        value = "".join(c.upper() if "a" <= c <= "z" else c for c in value)
    if not non_latin and field in TRANSLITERATED and not value.isascii():
        return TRANSLITERATION
    if field in QUOTES_REMOVED:
        value = value.replace('"', "").replace("\\", "").strip()
    return value or None


FREE_TEXT = frozenset(RAW_SQL_FIELDS)


def refused_by_design(field: str, raw: object, value: str, non_latin: bool) -> bool:
    """The documented refusals of values the server would store unchanged (README "Leads")."""
    if isinstance(raw, int) and raw < 0:
        return True  # integers are accepted for numbers, which are never negative
    if field in PHONES:  # dialled: digits only, 6-18 (alt_phone: its column's 12)
        international = str(raw).strip().startswith("+")
        return (
            not (value.isascii() and value.isdigit())
            or (field == "phone_number" and len(value) < 6)
            or (international and not str(raw).strip().removeprefix("+").lstrip().startswith("1"))
        )
    if field == "agent_user":
        return not 2 <= len(value) <= 20
    if field == "date_of_birth":  # a real date: not MySQL's zero date 0000-00-00
        try:
            datetime.date.fromisoformat(value)
        except ValueError:
            return True
    if field in FREE_TEXT:
        if not non_latin and not value.isascii():
            return True  # a latin1 server would lose it
        return any(unicodedata.category(c) in ("Cc", "Cs") and c not in "\t\n\r" for c in value)
    return False


# --------------------------------------------------------------------------------------------
# Values: anything at all
# --------------------------------------------------------------------------------------------

# Characters producers send, and characters each rule is about: the server's special ones,
# accents (precomposed and combining), scripts with and without combining marks, digits of
# other scripts, spaces of all kinds, controls, symbols, above U+FFFF, a lone surrogate.
TRICKY = (
    "'\"\\+;#%@:/._-|*()$!,? \t\n\r\x00\x07\x7f"
    "éÜßæøłÆŁñçÅ\u0301\u0308\u00a0\u3000\u200b\u00ad\u2019\u201c\u2013\u2026"
    "李龍Жжαب\u064f\u0651नम\u094dส\u0e49٣\uff17ﬁǅ★€©"
    "😀𠮷\ud800"
)
ANY_CHAR = st.one_of(
    st.sampled_from(string.printable),
    st.sampled_from(TRICKY),
    st.characters(exclude_categories=()),  # the whole of Unicode, surrogates included
)
ANY_VALUE: st.SearchStrategy[object] = st.one_of(
    st.text(ANY_CHAR, max_size=40),
    st.text(ANY_CHAR, min_size=240, max_size=260),
    st.integers(-(10**6), 10**20),
    st.sampled_from([None, "", "   ", True, 1.5, ["x"], b"x"]),
)
