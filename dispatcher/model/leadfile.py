"""Reading lead files for bulk enqueue: CSV with a header row, or JSON lines.

Rows stream one at a time with their line numbers, so a file of a million leads
is validated and enqueued in constant memory (two passes over the file).

A row holds the keys of ``enqueue_lead``. JSON lines give them as they are (a list
job's ``callback`` and ``custom_fields`` as objects). A CSV's cells are text, so its
columns spell the objects out: ``callback_datetime``, ``callback_type``,
``callback_user``, ``callback_status``, ``callback_comments`` make the row's
``callback``, and each ``custom.<name>`` column a custom field of ``custom_fields``;
the switches (``dnc_check``, ``add_to_hopper``, ``list_exists_check``, ...) read
true/false, yes/no, y/n, 1/0.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "CALLBACK_COLUMNS",
    "CUSTOM_PREFIX",
    "FileRow",
    "LeadFileError",
    "detect_format",
    "read_rows",
]

_BOOL_COLUMNS = (
    "dnc_check",
    "campaign_dnc_check",
    "add_to_hopper",
    "lookup_state",
    "usacan_prefix_check",
    "usacan_areacode_check",
    "list_exists_check",
)
#: CSV columns of a list job's callback (the JSON object's keys after "callback_").
CALLBACK_COLUMNS = (
    "callback_datetime",
    "callback_type",
    "callback_user",
    "callback_status",
    "callback_comments",
)
#: A CSV column named ``custom.<name>`` is the custom field ``<name>``.
CUSTOM_PREFIX = "custom."
_TRUE = {"true", "yes", "y", "1"}
_FALSE = {"false", "no", "n", "0"}


class LeadFileError(ValueError):
    """The file as a whole cannot be read (not UTF-8, broken CSV): no row can be trusted."""


@dataclass(frozen=True)
class FileRow:
    line: int
    data: dict[str, Any] | None
    #: why the row could not be read at all (bad JSON, wrong number of cells)
    problem: str | None = None


def detect_format(path: Path, explicit: str | None = None) -> str:
    if explicit:
        return explicit
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    return "csv"


def _csv_rows(path: Path) -> Iterator[FileRow]:
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        try:
            header = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise LeadFileError(f"{path}: line 1: not readable as CSV ({exc})") from None
        header = [h.strip() for h in header]
        if len(set(header)) != len(header):
            yield FileRow(1, None, "the header row names a column twice")
            return
        while True:
            # A quoted cell may span lines: a row's line is the one it starts on.
            line = reader.line_num + 1
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                raise LeadFileError(f"{path}: line {line}: not readable as CSV ({exc})") from None
            if not any(c.strip() for c in cells):
                continue
            if len(cells) != len(header):
                yield FileRow(line, None, f"{len(cells)} cells, the header has {len(header)}")
                continue
            row: dict[str, Any] = {}
            for name, cell in zip(header, cells, strict=True):
                cell = cell.strip()
                if cell == "":
                    continue
                if name in _BOOL_COLUMNS:
                    low = cell.lower()
                    row[name] = True if low in _TRUE else False if low in _FALSE else cell
                elif name in CALLBACK_COLUMNS:
                    row.setdefault("callback", {})[name.removeprefix("callback_")] = cell
                elif name.startswith(CUSTOM_PREFIX):
                    row.setdefault("custom_fields", {})[name[len(CUSTOM_PREFIX) :]] = cell
                else:
                    row[name] = cell
            yield FileRow(line, row)


def _jsonl_rows(path: Path) -> Iterator[FileRow]:
    with path.open(encoding="utf-8") as fh:
        for line_no, text in enumerate(fh, start=1):
            text = text.strip()
            if not text:
                continue
            try:
                data = json.loads(text)
            except json.JSONDecodeError as exc:
                yield FileRow(line_no, None, f"not JSON ({exc.msg})")
                continue
            if not isinstance(data, dict):
                yield FileRow(line_no, None, "not a JSON object")
                continue
            yield FileRow(line_no, data)


def read_rows(path: Path, *, fmt: str) -> Iterator[FileRow]:
    """The file's rows, with line numbers (1-based; a CSV header is line 1).

    Raises LeadFileError if the file is not UTF-8 text.
    """
    rows = _jsonl_rows(path) if fmt == "jsonl" else _csv_rows(path)
    try:
        yield from rows
    except UnicodeDecodeError:
        raise LeadFileError(
            f"{path}: not UTF-8 text (a spreadsheet may have saved it as Latin-1 or "
            "Windows-1252); save it as UTF-8"
        ) from None
