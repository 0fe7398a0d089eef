"""Every Redis key name is written once, in ``dispatcher/store/keys.py``.

The Lua scripts build their key names themselves (``P .. ':job:' .. id``) and list
the keys they touch at their top. These tests hold the three in step, reading the
scripts' text (no Redis needed):

* every key a script's header lists is a key of :class:`~dispatcher.store.keys.Keys`
  (the same name pattern, placeholders aside) or one of kombu's;
* every key name a script's code builds from ``P`` or ``Q`` is listed in its header;
* every key of ``Keys`` is listed by a script that changes it, but for the few that
  plain commands change (named below, with where);
* no Python module outside ``keys.py`` writes a key name under the prefix itself.

A header's key list starts at a line ``-- Keys (...)``; each entry is a line
``--   NAME[, NAME...]  TYPE  what it holds`` (names at three spaces, then at least
two spaces), continued on lines indented deeper; a line ``--`` ends the list.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from dispatcher.store.keys import KOMBU_KEYS, Keys
from tests.support.settings import ROOT

SCRIPTS = sorted((ROOT / "dispatcher").rglob("*.lua"))

#: Keys no script changes: written with plain commands, documented where they are.
WITHOUT_SCRIPT = {
    "P:user:{}": "dispatcher/store/users.py (MULTI)",
    "P:users": "dispatcher/store/users.py (MULTI)",
}

_PLACEHOLDER = re.compile(r"\{[^{}]*\}")
_ENTRY = re.compile(r"^--   (\S.*?)(?:\s{2,}(\S.*))?$")
_LITERAL = re.compile(r"'([^']*)'|\"([^\"]*)\"")
_OPERAND = re.compile(r"\s*\.\.\s*('[^']*'|\"[^\"]*\"|[A-Za-z_][A-Za-z0-9_]*(?:\[[^\]]*\])?)")


def normal(name: str) -> str:
    """A key name pattern with every placeholder written ``{}``."""
    return _PLACEHOLDER.sub("{}", name.strip())


def keys_patterns() -> dict[str, str]:
    """Pattern -> the ``Keys`` member that builds it (``Keys(prefix="P", queue="Q")``)."""
    keys = Keys(prefix="P", queue="Q")
    out: dict[str, str] = {"Q": "queue"}  # the queue's own list (messages of older versions)
    for name, member in inspect.getmembers(Keys):
        if name.startswith("_") or name in ("of", "pattern"):
            continue
        if isinstance(member, property):
            value = getattr(keys, name)
        elif inspect.isfunction(member):
            params = list(inspect.signature(member).parameters)[1:]
            value = getattr(keys, name)(*("{" + p + "}" for p in params))
        else:
            continue
        assert isinstance(value, str), name
        out[normal(value)] = name
    return out


def header_entries(text: str) -> list[str]:
    """The key names the header's key list documents (raw, as written)."""
    return [name for name, _kind in header_list(text)]


def header_list(text: str) -> list[tuple[str, str]]:
    """(key name, type) per key the header's key list documents; type ``read`` for a
    key the script only reads."""
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("-- Keys (")]
    assert len(starts) == 1, "one key list (a line '-- Keys (...)') at the top of the script"
    i = starts[0] + 1
    while i < len(lines) and not lines[i].startswith("--   "):
        i += 1  # the opening line's own continuation
    names: list[tuple[str, str]] = []
    while i < len(lines) and lines[i].startswith("--") and lines[i].strip() != "--":
        line = lines[i]
        i += 1
        if line.startswith("--    "):
            continue  # the entry's description, continued
        match = _ENTRY.match(line)
        assert match, f"not a key entry: {line!r}"
        kind = re.split(r"\s{2,}", match.group(2) or "")[0]
        names += [(n.strip(), kind) for n in match.group(1).split(",")]
    assert names, "an empty key list"
    return names


def built_names(text: str) -> list[str]:
    """The key names the script's code builds from P or Q: ``P .. ':job:' .. id`` gives
    ``P:job:{}``. A name that ends in a separator (``Q .. '.'``) is a prefix the code
    compares names with, given with a trailing ``*``."""
    code = "\n".join(line.split("--", 1)[0] for line in text.splitlines())
    out: list[str] = []
    for match in re.finditer(r"(?<![\w.'\"])([PQ])\s*\.\.", code):
        name = match.group(1)
        pos = match.start() + 1
        while True:
            operand = _OPERAND.match(code, pos)
            if operand is None:
                break
            token = operand.group(1)
            literal = _LITERAL.fullmatch(token)
            name += (literal.group(1) or literal.group(2) or "") if literal else "{}"
            pos = operand.end()
        if name[-1] in ".:":
            name += "*"
        out.append(name)
    return out


def documents(documented: list[str], built: str) -> bool:
    """Whether a built name is one of the documented patterns (a documented placeholder
    stands for anything, a literal lane name included)."""
    for entry in documented:
        pattern = "".join(
            ".+" if part.startswith("{") else re.escape(part)
            for part in re.split(r"(\{[^{}]*\})", entry)
        )
        if built.endswith("*"):
            if re.fullmatch(pattern, built[:-1] + "x") or normal(entry).startswith(built[:-1]):
                return True
        elif re.fullmatch(pattern, built):
            return True
    return False


def check_script(text: str) -> list[str]:
    """What is wrong with one script's key list (nothing: an empty list)."""
    known = keys_patterns()
    problems = []
    documented = header_entries(text)
    for name in documented:
        if normal(name) not in known and name not in KOMBU_KEYS:
            problems.append(f"{name}: documented, but not a key of dispatcher/store/keys.py")
    for name in built_names(text):
        if not documents(documented, name):
            problems.append(f"{name}: built by the code, not in the key list")
    return problems


def test_the_scripts_are_found() -> None:
    found = {p.name for p in SCRIPTS}
    assert {"execution.lua", "fleet.lua", "broker.lua", "layout.lua", "sessions.lua"} <= found


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_a_scripts_key_list_matches_keys_py_and_its_code(script: Path) -> None:
    assert check_script(script.read_text(encoding="utf-8")) == []


def test_every_key_of_keys_py_is_listed_by_a_script_that_changes_it() -> None:
    documented = {
        normal(name)
        for script in SCRIPTS
        for name, kind in header_list(script.read_text())
        if kind != "read"
    }
    missing = set(keys_patterns()) - documented - set(WITHOUT_SCRIPT)
    assert not missing, f"keys no script lists: {sorted(missing)}"


def test_the_check_finds_what_is_wrong() -> None:
    """The checks are not vacuous: a header that misspells a key, and code that builds
    one its header does not list, are both reported."""
    text = (ROOT / "dispatcher/store/execution.lua").read_text(encoding="utf-8")
    assert check_script(text) == []
    misspelt = text.replace("--   P:dlq:reason:{r}", "--   P:dlq:reasons:{r}", 1)
    assert check_script(misspelt) == [
        "P:dlq:reasons:{r}: documented, but not a key of dispatcher/store/keys.py",
        "P:dlq:reason:{}: built by the code, not in the key list",
    ]
    extra = text.replace(
        "local k_pauses = P .. ':pauses'", "local k_pauses = P .. ':pauses:' .. ARGV[2]", 1
    )
    assert check_script(extra) == ["P:pauses:{}: built by the code, not in the key list"]


def test_kombus_key_names_are_kombus_defaults() -> None:
    """The worker never renames kombu's keys: the names keys.py gives are kombu's."""
    from kombu.transport.redis import Channel  # the workers' dependency, not dispatcher's

    assert (Channel.unacked_key, Channel.unacked_index_key, Channel.unacked_mutex_key) == (
        KOMBU_KEYS[:3]
    )
    assert Channel.keyprefix_queue == "_kombu.binding.%s"


#: Key names written by hand: a prefix followed by a separator in an f-string or a
#: concatenation, or the in-flight lists' own prefix.
_HANDMADE = re.compile(
    r"""f["'][^"']*\{[^}]*(?:prefix|queue)[^}]*\}[:.]"""
    r"""|(?:prefix|queue)\s*\+\s*["'][:.]|["']_dispatcher\.inflight"""
)


def test_no_python_module_writes_a_key_name_itself() -> None:
    offenders = []
    for folder in ("dispatcher", "workers", "bench"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path == ROOT / "dispatcher/store/keys.py":
                continue
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if _HANDMADE.search(line.split("#", 1)[0]):
                    offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not offenders, "\n".join(offenders)
