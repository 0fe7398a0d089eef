"""Tests for dispatcher.model.lead: VICIdial column rules, normalisation and validation.

Examples, in both modes (``non_latin`` false and true). The property "whatever validates,
VICIdial stores exactly the normalised value" is tests/model/test_lead_property.py, against
the simulator (itself pinned to shared/vicidial/external_add_lead.md by
tests/simulator/test_simulator.py). The table of invalid leads is tests/support/leads.py.
"""

from __future__ import annotations

import pickle
import re
import string
import unicodedata
from collections.abc import Iterator, Mapping

import pytest

from dispatcher.model import lead as lead_module
from dispatcher.model.errors import FieldError, InvalidLead
from dispatcher.model.lead import LEAD_FIELDS, OPTIONAL_FIELDS, Lead, make_lead, make_leads
from dispatcher.simulator import mangling
from tests.support.leads import BASE, INVALID, lead_with
from tests.support.settings import ROOT


def errors_of(data: Mapping[str, object], **kwargs: str | bool) -> dict[str, str]:
    """field -> message of the InvalidLead that make_lead must raise."""
    with pytest.raises(InvalidLead) as info:
        make_lead(data, **kwargs)
    errors = info.value.errors
    assert all(isinstance(e, FieldError) for e in errors)
    assert len({e.field for e in errors}) == len(errors), "one error per field"
    return {e.field: e.message for e in errors}


# ---------------------------------------------------------------------------------------------
# Invalid leads: the exact field named, and a helpful message (the table: support/leads.py)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("data", "field", "fragment"), INVALID)
def test_invalid_lead_names_the_field(data: dict[str, object], field: str, fragment: str) -> None:
    errors = errors_of(data)
    assert field in errors, errors
    assert fragment in errors[field], errors[field]
    # Only the broken field is reported: the rest of the base lead is fine.
    assert set(errors) == {field}, errors


def test_invalid_lead_is_a_value_error_with_readable_message() -> None:
    with pytest.raises(ValueError, match=r"first_name: contains characters VICIdial would drop"):
        make_lead(lead_with(first_name="李!"))


# Column sizes, from shared/vicidial/external_add_lead.md, with a value VICIdial keeps.
COLUMN_SIZES: dict[str, tuple[int, str]] = {
    "first_name": (30, "a"),
    "last_name": (30, "a"),
    "middle_initial": (1, "A"),
    "title": (4, "a"),
    "address1": (100, "a"),
    "address2": (100, "a"),
    "address3": (100, "a"),
    "city": (50, "a"),
    "alt_phone": (12, "1"),
    "state": (2, "A"),
    "province": (50, "a"),
    "postal_code": (10, "1"),
    "country_code": (3, "A"),
    "email": (70, "a"),
    "comments": (255, "a"),
    "source_id": (50, "a"),
    "vendor_lead_code": (20, "a"),
    "security_phrase": (100, "a"),
    "owner": (20, "a"),
    "phone_code": (10, "1"),
}


@pytest.mark.parametrize(("field", "size", "char"), [(f, *v) for f, v in COLUMN_SIZES.items()])
def test_every_column_over_its_size_is_an_error(field: str, size: int, char: str) -> None:
    assert make_lead(lead_with(**{field: char * size})).to_dict()[field] == char * size
    errors = errors_of(lead_with(**{field: char * (size + 1)}))
    assert set(errors) == {field}
    assert f"at most {size}" in errors[field]
    assert "cut" in errors[field]


def test_length_is_checked_after_normalisation() -> None:
    # 30 characters once transliterated and trimmed: fits.
    assert make_lead(lead_with(first_name="  " + "é" * 30 + "  ")).fields["first_name"] == "e" * 30
    # "ß" becomes "ss": 16 of them make 32 characters, over first_name's 30.
    assert "is 32 characters long" in errors_of(lead_with(first_name="ß" * 16))["first_name"]


# ---------------------------------------------------------------------------------------------
# Many errors at once; batches
# ---------------------------------------------------------------------------------------------


def test_every_bad_field_is_named() -> None:
    data = {
        "agent_user": "x",
        "phone_number": "555-CALL",
        "first_name": "李",
        "email": "a+b@example.com",
        "gender": "Q",
        "date_of_birth": "2023-02-30",
        "rank": 70000,
        "state": "FLA",
        "status": "NEW",
        "bogus": 1,
        "comments": ["not", "text"],
    }
    errors = errors_of(data)
    assert set(errors) == set(data)  # every single key is bad, and each is named
    with pytest.raises(InvalidLead) as info:
        make_lead(data)
    for name in data:
        assert f"{name}: " in str(info.value)
    # Known fields come in VICIdial's order, unknown ones last.
    names = [e.field for e in info.value.errors]
    assert set(names[-2:]) == {"status", "bogus"}
    assert names[:-2] == sorted(names[:-2], key=LEAD_FIELDS.index)


def test_missing_required_and_bad_optional_together() -> None:
    errors = errors_of({"first_name": "Bob+"})
    assert set(errors) == {"agent_user", "phone_number", "first_name"}


def test_make_leads_reports_each_bad_item_with_its_index() -> None:
    items: list[dict[str, object]] = [
        lead_with(first_name="Ann"),
        {"agent_user": "1000", "phone_number": "123"},
        lead_with(first_name="Bea"),
        {"phone_number": "7275551212", "rank": "x"},
        lead_with(first_name="Cat"),
    ]
    with pytest.raises(InvalidLead) as info:
        make_leads(items)
    found = {(e.index, e.field) for e in info.value.errors}
    assert found == {(1, "phone_number"), (3, "agent_user"), (3, "rank")}
    assert "lead 1: phone_number" in str(info.value)
    assert "lead 3: agent_user: is required" in str(info.value)


def test_make_leads_returns_all_leads_in_order() -> None:
    def generate() -> Iterator[dict[str, object]]:
        for i in range(3):
            yield lead_with(vendor_lead_code=f"V{i}")

    leads = make_leads(generate(), default_phone_code="44")
    assert [lead.fields["vendor_lead_code"] for lead in leads] == ["V0", "V1", "V2"]
    assert {lead.phone_code for lead in leads} == {"44"}
    assert make_leads([]) == []


def test_make_leads_rejects_an_item_that_is_not_a_mapping() -> None:
    with pytest.raises(InvalidLead) as info:
        make_leads([BASE, ["1000", "7275551212"]])  # type: ignore[list-item]
    [error] = info.value.errors
    assert (error.index, error.field) == (1, "lead")
    assert "mapping" in error.message


def test_make_lead_rejects_a_non_mapping() -> None:
    with pytest.raises(InvalidLead, match="mapping"):
        make_lead("1000,7275551212")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Normalisation
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("phone", "code", "expected"),
    [
        ("(727) 555-1212", None, "7275551212"),
        ("727.555.1212", None, "7275551212"),
        (" 727 555 1212 ", None, "7275551212"),
        ("+1 727.555.1212", None, "7275551212"),  # country code = phone_code: removed
        ("+1 (727) 555-1212", "1", "7275551212"),
        ("+44 20 7946 0958", "44", "2079460958"),
        ("+44 20 7946 0958", "+44", "2079460958"),
        ("17275551212", None, "17275551212"),  # no '+': taken as written
        (7275551212, None, "7275551212"),
        ("0044123456", "44", "0044123456"),
    ],
)
def test_phone_formatting_is_removed(phone: object, code: str | None, expected: str) -> None:
    data = lead_with(phone_number=phone)
    if code is not None:
        data["phone_code"] = code
    lead = make_lead(data)
    assert lead.phone_number == expected
    assert lead.phone_code == (code or "1").lstrip("+")


def test_international_number_too_short_once_the_country_code_is_removed() -> None:
    assert "6-18 digits" in errors_of(lead_with(phone_number="+1 55512"))["phone_number"]


def test_phone_code_default_and_normalisation() -> None:
    assert make_lead(BASE).phone_code == "1"
    assert make_lead(BASE, default_phone_code="52").phone_code == "52"
    assert make_lead(lead_with(phone_code="")).phone_code == "1"
    assert make_lead(lead_with(phone_code=None), default_phone_code="33").phone_code == "33"
    assert make_lead(lead_with(phone_code=" +44 ")).phone_code == "44"
    assert make_lead(lead_with(phone_code=49)).phone_code == "49"
    assert make_lead(lead_with(phone_code="1X")).phone_code == "1X"


def test_invalid_default_phone_code_is_reported() -> None:
    assert "default" in errors_of(BASE, default_phone_code="one")["phone_code"]
    assert "default" in errors_of(BASE, default_phone_code="")["phone_code"]


def test_alt_phone_is_normalised_like_phone() -> None:
    lead = make_lead(lead_with(alt_phone="(813) 555-0000"))
    assert lead.fields["alt_phone"] == "8135550000"
    assert make_lead(lead_with(alt_phone="+1 813 555 0000")).fields["alt_phone"] == "8135550000"
    assert make_lead(lead_with(alt_phone=8135550000)).fields["alt_phone"] == "8135550000"
    assert (
        "does not start with phone_code" in errors_of(lead_with(alt_phone="+33 1 2"))["alt_phone"]
    )


@pytest.mark.parametrize(
    ("field", "given", "stored"),
    [
        ("first_name", "José Müller", "Jose Muller"),
        ("last_name", "Straße", "Strasse"),
        ("last_name", "Łukasiewicz-Øster", "Lukasiewicz-Oster"),
        ("first_name", "Æsa Þórunn", "AEsa Thorunn"),
        ("last_name", "O\u2019Brien", "O'Brien"),
        ("last_name", "Nguyễn", "Nguyen"),
        ("first_name", "Jose\u0301", "Jose"),  # decomposed accent
        ("city", "São Paulo", "Sao Paulo"),
        ("address1", "12 Rue de l\u2019Église", "12 Rue de l'Eglise"),
        ("province", "Québec", "Quebec"),
        ("first_name", "Bob\u200b", "Bob"),  # zero-width space
        ("first_name", "\u00a0Ann\u00a0", "Ann"),  # non-breaking spaces
        (
            "comments",
            "Called \u2013 left \u201cvoicemail\u201d\u2026",
            "Called - left voicemail...",
        ),
        ("comments", 'He said "call me" at C:\\home\\', "He said call me at C:home"),
        ("comments", "'single' quotes are fine", "'single' quotes are fine"),
        ("source_id", 'web"form"\\', "webform"),
        ("vendor_lead_code", "ABC-123\\", "ABC-123"),
        ("owner", 'team "a"', "team a"),
        ("first_name", 'Robert "Bob"', "Robert Bob"),
        ("gender", "m", "M"),
        ("gender", " f ", "F"),
        ("country_code", "us", "US"),
        ("rank", "0", "0"),
        ("rank", 0, "0"),
        ("rank", "32767", "32767"),
        ("rank", " 32767 ", "32767"),
        ("rank", 12, "12"),
        ("date_of_birth", " 1980-02-29 ", "1980-02-29"),
        ("email", " bob@example.com ", "bob@example.com"),
        ("postal_code", "SW1A 1AA", "SW1A 1AA"),
        ("vendor_lead_code", 12345, "12345"),
        ("security_phrase", "blue: 42/7 @home", "blue: 42/7 @home"),
        # The server keeps tabs, line breaks and '|' in its three free-text fields.
        ("comments", "line1\nline2\r\n\tend | ok", "line1\nline2\r\n\tend | ok"),
        ("source_id", "web|form\t7", "web|form\t7"),
        ("comments", "\n  trimmed  \n", "trimmed"),
        # a-z only: "ß".upper() would be "SS", which nobody wrote.
        ("country_code", "gb", "GB"),
    ],
)
def test_normalisation(field: str, given: object, stored: str) -> None:
    assert make_lead(lead_with(**{field: given})).fields[field] == stored


@pytest.mark.parametrize("blank", [None, "", "   ", '""'])
def test_blank_optional_values_are_not_given(blank: object) -> None:
    lead = make_lead(lead_with(comments=blank, first_name=None))
    assert dict(lead.fields) == {}


def test_agent_user_accepts_int_and_dash_underscore() -> None:
    assert make_lead(lead_with(agent_user=1000)).agent_user == "1000"
    assert make_lead(lead_with(agent_user=" agent_07-b ")).agent_user == "agent_07-b"


# ---------------------------------------------------------------------------------------------
# The Lead object
# ---------------------------------------------------------------------------------------------


def test_to_dict_round_trip_and_params() -> None:
    lead = make_lead(
        lead_with(
            phone_number="(727) 555-1212",
            first_name="José",
            comments='say "hi"',
            rank="1",
            gender="u",
        )
    )
    assert lead.to_dict() == {
        "agent_user": "1000",
        "phone_number": "7275551212",
        "phone_code": "1",
        "first_name": "Jose",
        "gender": "U",
        "comments": "say hi",
        "rank": "1",
    }
    assert list(lead.to_dict())[3:] == ["first_name", "comments", "gender", "rank"]  # VICIdial's
    assert make_lead(lead.to_dict()) == lead
    assert lead.vicidial_params() == lead.to_dict()
    assert not {"source", "user", "pass", "function", "value"} & set(lead.vicidial_params())


def test_lead_is_immutable_hashable_and_picklable() -> None:
    lead = make_lead(lead_with(first_name="Bob"))
    with pytest.raises(TypeError):
        lead.fields["first_name"] = "Eve"  # type: ignore[index]
    with pytest.raises(AttributeError):
        lead.phone_number = "1"  # type: ignore[misc]
    assert hash(lead) == hash(make_lead(lead.to_dict()))
    assert pickle.loads(pickle.dumps(lead)) == lead
    assert lead.fields == {"first_name": "Bob"}
    # A Lead built by hand from a plain dict is still immutable.
    hand_made = Lead("1000", "7275551212", "1", {"first_name": "Bob"})
    assert hand_made == lead
    with pytest.raises(TypeError):
        hand_made.fields["first_name"] = "Eve"  # type: ignore[index]


def test_repr_masks_phone_numbers() -> None:
    text = repr(make_lead(lead_with(alt_phone="8135550000")))
    assert "7275551212" not in text and "8135550000" not in text
    assert "1212" in text and "0000" in text


def test_field_lists() -> None:
    assert LEAD_FIELDS[:3] == ("agent_user", "phone_number", "phone_code")
    assert LEAD_FIELDS[3:] == OPTIONAL_FIELDS
    # Exactly the lead columns the server writes (the simulator's list, from the facts doc).
    assert set(LEAD_FIELDS) == {"agent_user", *mangling.LEAD_FIELDS}
    assert "gmt_offset_now" not in LEAD_FIELDS and "status" not in LEAD_FIELDS


# ---------------------------------------------------------------------------------------------
# non_latin: the dialer runs VICIdial's use_non_latin=1 (external_add_lead.md)
# ---------------------------------------------------------------------------------------------


def non_latin(**fields: object) -> dict[str, str]:
    return dict(make_lead(lead_with(**fields), non_latin=True).fields)


@pytest.mark.parametrize(
    ("field", "given"),
    [
        # The facts document's examples of what the server keeps in that mode.
        ("first_name", "Иван"),
        ("last_name", "Петров"),
        ("first_name", "李小龍"),
        ("first_name", "محمد علي"),
        ("last_name", "Nguyễn"),
        ("first_name", "José Müller"),
        ("first_name", "Ж" * 30),  # column sizes are in characters
        ("title", "Г-н"),
        ("middle_initial", "Ж"),
        ("address1", "ул. Ленина 5/2"),
        ("city", "Αθήνα"),
        ("state", "\u041c\u041e"),  # Cyrillic MO
        ("province", "Québec"),
        ("postal_code", "ГД 12"),
        ("email", "иван@пример.рф"),
        ("security_phrase", "синий: 42"),
        ("owner", "Ольга"),
        # Free text: any text but ; # + (and " \, which are removed).
        ("comments", "Перезвонить завтра, 10:00 (★ VIP) — ок | 李 | नमस्ते"),
        ("source_id", "веб-форма\t№7"),
        ("vendor_lead_code", "КОД-١٢٣"),
    ],
)
def test_non_latin_keeps_letters_of_every_script(field: str, given: str) -> None:
    assert non_latin(**{field: given}) == {field: given}


def test_non_latin_input_is_nfc_normalised() -> None:
    decomposed = unicodedata.normalize("NFD", "José Nguyễn")
    assert decomposed != "José Nguyễn"
    assert non_latin(first_name=decomposed) == {"first_name": "José Nguyễn"}
    assert non_latin(comments=decomposed) == {"comments": "José Nguyễn"}
    # 30 characters once composed: fits first_name's 30 (the check counts after NFC).
    assert non_latin(first_name="e\u0301" * 30) == {"first_name": "é" * 30}


@pytest.mark.parametrize(
    ("field", "given", "fragment"),
    [
        # Characters above U+FFFF: stored as '?' per UTF-8 byte (utf8mb3), in every field.
        ("comments", "Bob😀", "above U+FFFF"),
        ("first_name", "𠮷野", "above U+FFFF"),
        ("source_id", "\U0001d4001", "above U+FFFF"),  # bold A
        # Combining marks NFC cannot merge: letter fields drop them.
        ("first_name", "नमस्ते", "combining marks"),
        ("last_name", "مُحَمَّد", "combining marks"),
        ("city", "น้ำ", "combining marks"),
        # Only the ASCII space is a space; symbols and non-ASCII digits are dropped.
        ("first_name", "李\u3000龍", "would drop: '\\u3000'"),
        ("first_name", "Ann\u00a0Marie", "would drop: '\\xa0'"),
        ("address1", "ул. Ленина ★", "would drop: '★'"),
        ("postal_code", "\u0663\u0664\u0665", "would drop: '\u0663', '\u0664'"),
        ("last_name", "O\u2019Brien", "would drop: '\u2019'"),  # no transliteration in this mode
        # Unchanged: ; # + are lost, country_code and gender stay A-Z, phones are digits.
        ("comments", "a;b", "would drop: ';'"),
        ("comments", "1+1", "turns into a space"),
        ("vendor_lead_code", "#7", "would drop: '#'"),
        ("comments", "a\x00b", "would drop: '\\x00'"),
        ("country_code", "РФ", "would drop"),
        ("gender", "Ж", "one of M, F, U"),
        ("phone_number", "٧٢٧٥٥٥١٢١٢", "only contain digits"),
        ("agent_user", "агент", "would drop"),
        ("rank", "32768", "0 to 32767"),
    ],
)
def test_non_latin_refuses_what_the_server_would_still_lose(
    field: str, given: str, fragment: str
) -> None:
    errors = errors_of(lead_with(**{field: given}), non_latin=True)
    assert set(errors) == {field}, errors
    assert fragment in errors[field], errors[field]


def test_non_latin_error_names_every_bad_field() -> None:
    errors = errors_of(
        lead_with(first_name="नमस्ते", comments="😀", last_name="Ок", city="★"), non_latin=True
    )
    assert set(errors) == {"first_name", "comments", "city"}


def test_latin_mode_points_at_the_setting_for_other_scripts() -> None:
    assert "DISPATCHER_VICIDIAL_NON_LATIN" in errors_of(lead_with(first_name="Иван"))["first_name"]
    assert "DISPATCHER_VICIDIAL_NON_LATIN" in errors_of(lead_with(comments="Привет"))["comments"]
    # Not for characters no mode would keep.
    assert "NON_LATIN" not in errors_of(lead_with(first_name="Bob!"))["first_name"]


def test_a_lead_valid_in_latin_mode_is_unchanged_in_non_latin_mode() -> None:
    # A worker of a non-Latin dialer re-validates leads enqueued under either mode.
    lead = make_lead(lead_with(first_name="José", comments='say "hi"\n', rank=5, country_code="us"))
    assert make_lead(lead.to_dict(), non_latin=True) == lead


def test_make_leads_passes_the_mode() -> None:
    [lead] = make_leads([lead_with(first_name="Иван")], non_latin=True)
    assert lead.fields["first_name"] == "Иван"
    with pytest.raises(InvalidLead) as info:
        make_leads([BASE, lead_with(first_name="Иван")])
    assert [(e.index, e.field) for e in info.value.errors] == [(1, "first_name")]


# ---------------------------------------------------------------------------------------------
# README "Leads" states the rules of the code, line for line
# ---------------------------------------------------------------------------------------------

README = ROOT / "README.md"
RULES = lead_module.AGENT_RULES.rules


def _leads_section() -> str:
    text = README.read_text(encoding="utf-8")
    return text[text.index("### Leads") : text.index("## Command line")]


def _fields_in(text: str) -> set[str]:
    names = set(re.findall(r"`([a-z_0-9-]+)`", text))
    if "address1-3" in names:
        names = (names - {"address1-3"}) | {"address1", "address2", "address3"}
    return names & set(LEAD_FIELDS)


def _between(text: str, start: str, end: str) -> str:
    i = text.index(start) + len(start)
    return text[i : text.index(end, i)]


def test_readme_table_is_the_column_table() -> None:
    rows = re.findall(r"^\| (`[^|]+) \| ([^|]+) \| ([^|]+) \|$", _leads_section(), re.M)
    documented: dict[str, tuple[str, str]] = {}
    for names, size, chars in rows:
        for name in _fields_in(names):
            documented[name] = (size, chars)
    assert set(documented) == set(LEAD_FIELDS)
    ascii_chars = "".join(map(chr, range(0x20, 0x7F)))
    for name, (size, chars) in documented.items():
        rule = RULES[name]
        numbers = [int(n) for n in re.findall(r"\d+", size)]
        assert numbers[0] == rule.max_len, name
        assert (numbers[1] if len(numbers) > 1 else 1) == rule.min_len, name
        assert ("see below" in chars) == rule.text, name
        assert ("letter" in chars) == rule.letters, name  # "letters": any script in non_latin
        if rule.text or rule.format_msg is not None:
            continue
        kept = {c for c in ascii_chars if rule.ok.fullmatch(c)}
        expected = set(re.findall(r"`(.)`", chars)) | ({" "} if "space" in chars else set())
        if "digit" in chars:
            expected |= set(string.digits)
        if "letter" in chars or "`a-z`" in chars:
            expected |= set(string.ascii_lowercase)
        if "letter" in chars or "`A-Z`" in chars:
            expected |= set(string.ascii_uppercase)
        assert kept == expected, name


def test_readme_lists_of_fields_are_the_codes() -> None:
    section = " ".join(_leads_section().split())  # line breaks anywhere
    transliterated = _between(section, "transliteration in", ": Latin letters")
    assert _fields_in(transliterated) == {f for f, r in RULES.items() if r.transliterate}
    quotes = _between(section, "are removed from", "(VICIdial would drop")
    assert _fields_in(quotes) == {f for f, r in RULES.items() if r.drop_quotes}
    integers = _between(section, "Values are strings;", "may also")
    assert _fields_in(integers) == {f for f, r in RULES.items() if r.int_ok}
    phones = _between(section, "Phone formatting:", "lose spaces")
    assert _fields_in(phones) == {f for f, r in RULES.items() if r.international}
    upper = _between(section, "4. ", "are upper-cased")
    assert _fields_in(upper) == {"gender", "country_code"}
    assert "0-32767" in section and "65535" not in section
