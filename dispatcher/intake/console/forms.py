"""What a request brings the console: its form fields, its cookies, its path.

The gate (:mod:`.gate`) parses every form once and hands it to the handler as a
:data:`Form`, the fields in the order sent (an ``id`` may come many times).
"""

from __future__ import annotations

from http.cookies import SimpleCookie

from starlette.types import Scope

__all__ = ["FORM_TYPE", "MAX_IDS", "BadInput", "Form", "cookies_of", "every", "first", "route_path"]

Form = list[tuple[str, str]]
#: The only body a state-changing request may have: the page's own form.
FORM_TYPE = "application/x-www-form-urlencoded"
#: Most letter ids one form may name.
MAX_IDS = 1000


class BadInput(Exception):
    """A filter or form field that cannot be used: (field, why)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def first(form: Form, name: str, default: str = "") -> str:
    """The first value of field ``name``."""
    return next((v for k, v in form if k == name), default)


def every(form: Form, name: str) -> list[str]:
    """Every value of field ``name``, in the order sent."""
    return [v for k, v in form if k == name]


def route_path(scope: Scope) -> str:
    """The path inside the console (``/dead-letters``), without its mount point."""
    path = str(scope.get("path", ""))
    root = str(scope.get("root_path", ""))
    return path[len(root) :] if root and path.startswith(root) else path


def cookies_of(scope: Scope) -> dict[str, str]:
    jar: SimpleCookie = SimpleCookie()
    for key, value in scope.get("headers", []):
        if key == b"cookie":
            try:
                jar.load(value.decode("latin-1"))
            except Exception:  # a malformed cookie header: ignore it, as browsers do
                continue
    return {k: m.value for k, m in jar.items()}
