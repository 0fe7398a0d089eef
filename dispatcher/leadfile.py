"""Reading lead files for bulk enqueue: CSV with a header row, or JSON lines.

Rows stream one at a time with their line numbers, so a file of a million leads
is validated and enqueued in constant memory (two passes over the file).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["FileRow", "detect_format", "read_rows"]

_BOOL_COLUMNS = ("dnc_check", "campaign_dnc_check")
_TRUE = {"true", "yes", "y", "1"}
_FALSE = {"false", "no", "n", "0"}


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
        header = [h.strip() for h in header]
        if len(set(header)) != len(header):
            yield FileRow(1, None, "the header row names a column twice")
            return
        for cells in reader:
            line = reader.line_num
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
    """The file's rows, with line numbers (1-based; a CSV header is line 1)."""
    if fmt == "jsonl":
        yield from _jsonl_rows(path)
    else:
        yield from _csv_rows(path)
