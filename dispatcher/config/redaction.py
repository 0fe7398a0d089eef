"""One redactor for every text that may echo a password: VICIdial's answers, error pages, logs.

VICIdial echoes the API password back, and never in the form it was configured
(``/work/shared/vicidial/*.md``):

* the Agent API's refusal ``ERROR: Invalid Username/Password: |{user}|{pass}|{auth}|...``,
  often followed by the SQL it ran (``... and pass='{pass}' ...``);
* the Non-Agent API's refusal ``ERROR: Login incorrect, please try again: |{user}|{pass}|BAD|``
  (``2FA`` in place of ``BAD`` with two-factor auth);
* both APIs reduce ``user`` and ``pass`` to ``[-_0-9a-zA-Z]`` first (``Tr0ub4dor&3-horse!``
  comes back as ``Tr0ub4dor3-horse``, which is a working credential: VICIdial filters the
  password it checks the same way), or to ``[-_0-9\\p{L}]`` under ``use_non_latin=1``
  (``wr&ng!é`` → ``wrngé``);
* a URL or form body quoted in an error (``pass=Tr0ub4dor%263-horse%21``).

:class:`SecretRedactor` removes the password twice over:

* **by structure**: the password field of every echo line above and of echoed SQL
  (``pass='…'``) or form/query text (``pass=…``), whatever it holds, so that a password
  this process does not know (an old one, a mistyped one, another dialer's) is removed too;
* **by form**: every form of every configured secret (:func:`secret_forms`): as configured,
  URL-encoded (``quote`` and ``quote_plus``, upper- and lower-case hex), and reduced to
  VICIdial's characters (ASCII, and with letters of any script kept), wherever it stands
  as a token of its own; a form shorter than :data:`UNBOUNDED_LENGTH` is never matched
  inside a longer run of letters and digits (a password ``1234`` must not eat the digits
  of a phone number), a longer one is matched anywhere.

A derived form shorter than :data:`MIN_FORM_LENGTH` characters is not searched for in
free text (a password like ``!!ab!!`` reduces to ``ab``, which would redact every
"ab"): the echo lines are still covered by structure, and a credential that short is
no secret. The configured value itself is always searched for.

:func:`redact` is the one entry point; :func:`dispatcher.config.logs.redact_vicidial_line`
and the log processor call it, and every path that stores, shows, logs or exports
VICIdial text goes through one of them (job state, dead letters, look-up records,
pauses, ``status``/``health``, console pages, exports).
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Iterable
from urllib.parse import quote, quote_plus

__all__ = [
    "MIN_FORM_LENGTH",
    "REDACTED",
    "UNBOUNDED_LENGTH",
    "SecretRedactor",
    "redact",
    "redactor_for",
    "secret_forms",
]

REDACTED = "[REDACTED]"
#: Derived forms shorter than this are left to the structural patterns.
MIN_FORM_LENGTH = 4
#: Forms this long are found even inside a longer run of letters and digits.
UNBOUNDED_LENGTH = 8

# The field after "|{user}|" in both APIs' login refusals. The user field never holds a
# "|" (VICIdial filters it); the password field runs to the next "|" or line end (a
# text cut short may end inside it).
_AGENT_ECHO = re.compile(r"(Invalid Username/Password: \|[^|\n]*\|)([^|\n]*)")
_NONAGENT_ECHO = re.compile(r"(Login incorrect, please try again: \|[^|\n]*\|)([^|\n]*)")
# pass='...' (or pass_hash=) in echoed SQL; the closing quote may be missing when cut.
_SQL_PASS = re.compile(r"""((?<![0-9A-Za-z_])pass(?:_hash)?\s*=\s*\\?['"])([^'"\\\n]*)""")
# pass=... in a quoted URL or form body (not the SQL above: no quote after "=").
_FORM_PASS = re.compile(r"""((?<![0-9A-Za-z_])pass=)([^&\s'"\\][^&\s'"]*)""")
_NOT_ASCII_CREDENTIAL = re.compile(r"[^-_0-9a-zA-Z]")
#: Literal text every echo shape above contains.
_MARKERS = ("Invalid Username/Password", "Login incorrect", "pass")


def _non_latin_reduced(secret: str) -> str:
    """``[-_0-9\\p{L}]`` kept: VICIdial's filter under use_non_latin=1 (letters of every
    script; ASCII digits only)."""
    return "".join(c for c in secret if c in "-_" or "0" <= c <= "9" or c.isalpha())


def secret_forms(secret: str) -> set[str]:
    """Every form in which ``secret`` may come back (see the module docstring)."""
    if not secret:
        return set()
    derived: set[str] = set()
    for text in {secret, unicodedata.normalize("NFC", secret)}:
        for encoded in (quote(text, safe=""), quote(text), quote_plus(text)):
            derived.add(encoded)
            derived.add(re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), encoded))
        derived.add(_NOT_ASCII_CREDENTIAL.sub("", text))
        derived.add(_non_latin_reduced(text))
    forms = {f for f in derived if len(f) >= MIN_FORM_LENGTH}
    forms.add(secret)
    return forms


def _bounded(form: str) -> str:
    """``form`` as a regex; a short one matches only where it is not part of a longer
    token (a password ``1234`` must not eat a phone number's digits), a long one anywhere
    (glued to other text, it is still the password)."""
    if len(form) >= UNBOUNDED_LENGTH:
        return re.escape(form)
    head = r"(?<![^\W_])" if form[0].isalnum() else ""
    tail = r"(?![^\W_])" if form[-1].isalnum() else ""
    return head + re.escape(form) + tail


def _field(match: re.Match[str]) -> str:
    return match.group(1) + REDACTED if match.group(2) else match.group(0)


class SecretRedactor:
    """Removes the password of every echo shape, and every form of ``secrets``."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        forms: set[str] = set()
        for secret in secrets:
            if secret:
                forms |= secret_forms(secret)
        #: longest first, so that a form inside another is not matched before it
        self.forms: tuple[str, ...] = tuple(sorted(forms, key=lambda f: (-len(f), f)))
        self._pattern = re.compile("|".join(_bounded(f) for f in self.forms)) if forms else None
        #: Substrings one of which every text needing work contains (the echo lines'
        #: markers, every form): most texts (log values) need none, and plain substring
        #: tests tell it fastest.
        self.needles: tuple[str, ...] = (*_MARKERS, *self.forms)

    def structure(self, text: str) -> str:
        """The password fields of the echo shapes removed (no secret needed)."""
        if "Invalid Username/Password" in text:
            text = _AGENT_ECHO.sub(_field, text)
        if "Login incorrect" in text:
            text = _NONAGENT_ECHO.sub(_field, text)
        if "pass" in text:
            text = _SQL_PASS.sub(_field, text)
            text = _FORM_PASS.sub(_field, text)
        return text

    def holds_secret(self, text: str) -> bool:
        """Whether ``text`` may hold a form of a secret (plain substring tests: cheap)."""
        return any(form in text for form in self.forms)

    def secrets_out(self, text: str) -> str:
        """Every form of every secret removed (structure left alone)."""
        if self._pattern is None or not self.holds_secret(text):
            return text
        return self._pattern.sub(REDACTED, text)

    def __call__(self, text: str) -> str:
        """``text`` with no password left in it, by structure and by form.

        Apply it to the whole text before cutting it short: a cut can leave half a
        password behind, which neither the structure nor the forms recognise.
        """
        for needle in self.needles:
            if needle in text:
                return self.secrets_out(self.structure(text))
        return text


@functools.lru_cache(maxsize=32)
def _cached(secrets: tuple[str, ...]) -> SecretRedactor:
    return SecretRedactor(secrets)


def redactor_for(secrets: Iterable[str] = ()) -> SecretRedactor:
    """The redactor of these secrets (made once per set of secrets)."""
    return _cached(tuple(sorted({s for s in secrets if s})))


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every password removed (see :class:`SecretRedactor`)."""
    return redactor_for(secrets)(text)
