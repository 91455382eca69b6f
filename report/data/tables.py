"""Reading a data set's index files (metadata CSVs, split lists) so that a careless or hostile
one is a one-line UserError naming the file, never a traceback: not UTF-8, too large, out of
the data folder, a missing column, rows longer than the header, a malformed quote."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

from report.data.containment import DataFolder, printable
from report.errors import UserError

# Enough for any real header line; a "header" longer than this is not one.
HEADER_BYTES = 64 * 1024


def read_text(path: Path, folder: DataFolder, what: str) -> str:
    """The whole index file as text, after the containment and size checks."""
    folder.index_file(path, what)
    try:
        return _decode(path.read_bytes(), path, what)
    except OSError as error:
        raise UserError(f"cannot read {what} '{printable(str(path))}': {error.strerror}") from error


def read_rows(path: Path, folder: DataFolder, what: str) -> list[list[str]]:
    """Every CSV row as a list of fields (the header too)."""
    text = read_text(path, folder, what)
    try:
        return list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as error:
        raise UserError(f"{what} '{printable(str(path))}' is not a readable CSV file: "
                        f"{error}") from error


def read_records(
    path: Path, folder: DataFolder, what: str, required: Sequence[str] = (),
    lower: bool = False,
) -> list[dict[str, str]]:
    """Rows as {column: value}, keys and values stripped (lower-cased keys with `lower`);
    fields past the header are dropped, missing ones are "". A UserError names any
    `required` column (compared after stripping and `lower`) the header lacks."""
    rows = read_rows(path, folder, what)
    header = [_column(name, lower) for name in (rows[0] if rows else [])]
    missing = [column for column in required if column not in header]
    if missing:
        found = ", ".join(name for name in header if name) or "none"
        raise UserError(f"{what} '{printable(str(path))}' has no column "
                        f"{', '.join(repr(m) for m in missing)} (its columns: {found})")
    return [
        {name: (row[i].strip() if i < len(row) else "") for i, name in enumerate(header)}
        for row in rows[1:] if any(field.strip() for field in row)
    ]


def read_header(path: Path, lower: bool = True) -> list[str]:
    """The first line's column names, reading at most HEADER_BYTES: for detecting a layout
    without reading a whole (maybe huge) file."""
    try:
        with path.open("rb") as handle:
            start = handle.read(HEADER_BYTES)
    except OSError:
        return []
    first_line = _decode(start, path, "index file", partial=True).splitlines()[:1]
    try:
        return [_column(name, lower) for name in next(csv.reader(first_line), [])]
    except csv.Error:
        return []


def _column(name: str, lower: bool) -> str:
    return name.strip().lower() if lower else name.strip()


def _decode(data: bytes, path: Path, what: str, partial: bool = False) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        if partial and error.start >= len(data) - 3:  # a character cut at the read's end
            return data[: error.start].decode("utf-8-sig")
        raise UserError(
            f"{what} '{printable(str(path))}' is not UTF-8 text (byte {error.start}); save "
            "it as UTF-8"
        ) from error
