"""Hypothesis strategies for leads close to what VICIdial keeps, for both ways into it.

For a lead for an agent (``external_add_lead``): :func:`near_valid` draws a value the
simulator stores unchanged in a field (:func:`server_keeps`), often at its column's edge,
now and then with a tricky character; :data:`LETTER_FIELDS` are the fields that keep
letters of every script with ``non_latin``. Used by the lead's property
(tests/model/test_lead_property.py).

For a lead for a list (``add_lead``): :func:`list_near_valid` draws likewise from what
add_lead keeps (:func:`list_keeps`, :func:`list_server_stores`), :data:`LIST_TYPED` holds
the fields with a format of their own, and :func:`list_leads` draws whole leads of a few
fields. Used by the list client's property (tests/workers/test_list_client.py).

Both kinds of lead feed the end-to-end property through real workers
(tests/e2e/test_targets_property.py). What the server keeps is the simulator's own logic
(:mod:`dispatcher.simulator.mangling`, :mod:`dispatcher.simulator.addlead_fields`), pinned
byte for byte to shared/vicidial/*.md by tests/simulator/.
"""

from __future__ import annotations

import string
import unicodedata

from hypothesis import strategies as st

from dispatcher.model.list_lead import LIST_LEAD_FIELDS
from dispatcher.simulator.addlead_fields import FREE_TEXT, column, sanitize_add_lead
from dispatcher.simulator.mangling import COLUMN_SIZES, sanitize, sql_literal, to_column
from tests.support.leads import ANY_VALUE, TRICKY

__all__ = [
    "CANDIDATES",
    "LETTER_FIELDS",
    "LIST_RANDOM_FIELDS",
    "LIST_SIZES",
    "LIST_SPECIAL",
    "LIST_TYPED",
    "list_keeps",
    "list_leads",
    "list_near_valid",
    "list_server_stores",
    "near_valid",
    "server_keeps",
]

#: Candidates for "characters the server keeps unchanged": ASCII (its first 97: the
#: printable ones, tab and line feed), and a sample of other scripts.
CANDIDATES = "".join(map(chr, range(0x20, 0x7F))) + "\t\n" + "éÜñЖжαβ李龍بحक्ष٣ǅ☎€😀𠮷"

# --------------------------------------------------------------------------------------------
# A lead for an agent (external_add_lead)
# --------------------------------------------------------------------------------------------

#: The fields that keep letters of every script with non_latin.
LETTER_FIELDS: tuple[str, ...] = (
    "first_name",
    "last_name",
    "middle_initial",
    "title",
    "address1",
    "address2",
    "address3",
    "city",
    "state",
    "province",
    "postal_code",
    "email",
    "security_phrase",
    "owner",
    "comments",
    "source_id",
    "vendor_lead_code",
)


def server_keeps(field: str, non_latin: bool) -> str:
    """The candidate characters the simulator stores unchanged in ``field``."""
    return "".join(
        c
        for c in CANDIDATES
        if to_column(field, sanitize(field, c, non_latin=non_latin), non_latin=non_latin) == c
        and c not in '"\\'  # reach the SQL statement unescaped in the free-text fields
    )


@st.composite
def near_valid(draw: st.DrawFn, field: str, non_latin: bool) -> str:
    """A value of ``field`` made of what the simulator keeps (often at the column's
    edge), with a few tricky characters inserted now and then."""
    keeps = server_keeps(field, non_latin)
    ascii_keeps = [c for c in keeps if c.isascii()]
    # Without non_latin the product accepts ASCII only (even where a utf8mb4 server would keep
    # more); with it, half the characters come from other scripts.
    other = [c for c in keeps if not c.isascii()] if non_latin else []
    # Per value: ASCII only, other scripts only, or both mixed.
    alphabets = [ascii_keeps, other, ascii_keeps + other] if other else [ascii_keeps]
    chars = st.sampled_from(draw(st.sampled_from(alphabets)))
    size = COLUMN_SIZES.get(field, 20)
    # Lengths at the column's edge are drawn often: that is where truncation starts.
    pick = draw(st.integers(0, 5))
    n = size + 1 if pick == 0 else size if pick == 1 else draw(st.integers(1, size))
    value = draw(st.text(chars, min_size=n, max_size=n))
    insertions = [0, 0, 0, 1, 1, 2, 3] if size > 4 else [0, 0, 0, 1]
    for _ in range(draw(st.sampled_from(insertions))):
        at = draw(st.integers(0, len(value)))
        value = value[:at] + draw(st.sampled_from(TRICKY)) + value[at:]
    if non_latin and draw(st.integers(0, 3)) == 0:
        value = unicodedata.normalize("NFD", value)  # as some keyboards and OSes send it
    return value


# --------------------------------------------------------------------------------------------
# A lead for a list (add_lead)
# --------------------------------------------------------------------------------------------

#: The fields a list lead's strategy draws (list_id and phone_number are always there).
LIST_RANDOM_FIELDS: tuple[str, ...] = tuple(
    f for f in LIST_LEAD_FIELDS if f not in ("list_id", "phone_number")
)
#: add_lead's column sizes (20 for a field not named).
LIST_SIZES: dict[str, int] = {
    "title": 4,
    "middle_initial": 1,
    "state": 2,
    "country_code": 3,
    "alt_phone": 12,
}
LIST_SIZES |= {"postal_code": 10, "vendor_lead_code": 20, "owner": 20, "first_name": 30}
LIST_SIZES |= {"last_name": 30, "city": 50, "province": 50, "source_id": 50, "email": 70}
#: Characters special to some rule: ASCII punctuation, and the agent property's tricky ones.
LIST_SPECIAL = string.punctuation + " " + TRICKY
#: The fields with a format of their own: values around it.
LIST_TYPED: dict[str, st.SearchStrategy[object]] = {
    "gender": st.sampled_from(["M", "F", "U", "m", " f ", "X", "MF", "É"]),
    "rank": st.one_of(st.sampled_from([0, 32767, 32768, "007", " 12 "]), st.integers(-2, 70000)),
    "date_of_birth": st.one_of(
        st.dates().map(lambda d: d.isoformat()), st.sampled_from(["2023-02-29", "1970/01/02"])
    ),
    "entry_list_id": st.sampled_from(["0", "101", "0101", 102, "x", str(10**20)]),
    "phone_code": st.sampled_from(["1", "+1", "44", "1X", "", 61]),
    "alt_phone": st.sampled_from(["7275550123", "(727) 555-0123", "+1 727 555 0123", "72A"]),
}


def list_server_stores(field: str, sent: str, non_latin: bool) -> str | None:
    """What the simulator's add_lead stores for ``sent`` (None: its INSERT breaks)."""
    value: str | None = sanitize_add_lead(field, sent, non_latin=non_latin)
    if field in FREE_TEXT:
        value = sql_literal(value or "")
    return None if value is None else column(field, value, non_latin=non_latin)


def list_keeps(field: str, non_latin: bool) -> str:
    """The candidate characters add_lead stores unchanged in ``field``."""
    return "".join(
        c for c in CANDIDATES if list_server_stores(field, c, non_latin) == c and c not in '"\\'
    )


@st.composite
def list_near_valid(draw: st.DrawFn, field: str, non_latin: bool, *, edgy: bool = True) -> object:
    """A value add_lead keeps (often at its column's edge), now and then with a character
    that is special to some rule; or, one time in six, anything at all. ``edgy``: special
    characters often (the per-field property); else seldom, so that a lead of several
    fields is often valid (the end-to-end property)."""
    if draw(st.integers(0, 5)) == 0:
        return draw(st.one_of(ANY_VALUE, st.integers(0, 10**6)))
    keeps = list_keeps(field, non_latin) or string.digits
    size = LIST_SIZES.get(field, 20)
    pick = draw(st.integers(0, 7))
    n = size + 1 if pick == 0 else size if pick == 1 else draw(st.integers(1, size))
    value = draw(st.text(st.sampled_from(keeps), min_size=n, max_size=n))
    # The characters a rule is about: the ASCII ones add_lead drops from this field (and
    # '+', which it turns into a space), and the tricky ones of the agent's property.
    dropped = [c for c in CANDIDATES[:97] if c not in keeps] or [" "]
    for _ in range(draw(st.sampled_from([0, 0, 1, 1, 2] if edgy else [0, 0, 0, 0, 1]))):
        at = draw(st.integers(0, len(value)))
        pool = draw(st.sampled_from([dropped, dropped, LIST_SPECIAL]))
        value = value[:at] + draw(st.sampled_from(pool)) + value[at:]
    return value


@st.composite
def list_leads(draw: st.DrawFn, non_latin: bool) -> dict[str, object]:
    """A lead for a list: a list id and a phone number (valid or not, in several
    writings), and up to three other fields, mostly near valid."""
    data: dict[str, object] = {
        "list_id": draw(
            st.sampled_from(["101", "102", "998", "999", 101, "101", "102", "0101", "12"])
        ),
        "phone_number": draw(
            st.sampled_from(
                ["7275551212", "(727) 555-1212", "+1 727 555 1212", "8085551212"] * 2 + ["12345"]
            )
        ),
    }
    for name in draw(st.lists(st.sampled_from(LIST_RANDOM_FIELDS), max_size=3, unique=True)):
        data[name] = draw(
            LIST_TYPED[name] if name in LIST_TYPED else list_near_valid(name, non_latin, edgy=False)
        )
    return data
