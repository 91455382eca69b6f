"""The one rule for what a file-based source may read: files inside the data folder the user
named, of a sane size, with names that can be written back out.

A path is refused when
- it leaves the folder by its own spelling (`../`, an absolute path): index files such as
  a metadata CSV name their images, and a data set downloaded from anywhere must not make
  the report read (and show) other files; this holds even with --follow-symlinks;
- it is inside by spelling but a symlink (to a file, or any folder on the way) takes it out,
  unless the user passed --follow-symlinks;
- its name under the data folder is not valid UTF-8: such a name cannot be written to a CSV,
  JSON, an MLflow param or the report, so the file is skipped rather than half-handled.

Sizes are checked with stat before any read (see `check_file`), so a symlink to a multi-GB
file or a device is refused, never read whole.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from report.errors import UserError

# No chest film needs more: a large uncompressed CXR DICOM is ~60 MB, and index files (the
# NIH entries, 8 MB) are far smaller. Larger files are skipped (images) or refused (index
# files) before they are read. Change it here.
MAX_FILE_BYTES = 256 * 2**20
FOLLOW_HINT = "pass --follow-symlinks to read it"
OUTSIDE = "outside the data folder"
SYMLINK_OUT = f"symlink out of the data folder ({FOLLOW_HINT})"
NOT_UTF8 = "file name is not valid UTF-8 (rename it to read it)"


@dataclass(frozen=True)
class DataFolder:
    """The folder the user named, and whether symlinks may lead out of it."""

    root: Path
    follow_symlinks: bool = False

    @cached_property
    def real(self) -> str:
        return os.path.realpath(self.root)

    def refusal(self, path: str | os.PathLike) -> str | None:
        """Why `path` (as the source will open it) may not be read, or None when it may."""
        path = os.fspath(path)
        if "\0" in path:
            return f"{OUTSIDE}: the path has a NUL byte"
        # Paths are built from the root as the user spelled it (relative or not), so they are
        # made absolute from the working directory, as `open` would, never joined to the root.
        spelled = os.path.normpath(os.path.abspath(path))
        if not is_inside(spelled, os.path.abspath(self.root)):
            return f"{OUTSIDE}: {printable(path)}"
        if not self.follow_symlinks and not is_inside(os.path.realpath(path), self.real):
            return SYMLINK_OUT
        if not is_utf8(os.path.relpath(spelled, os.path.abspath(self.root))):
            return NOT_UTF8
        return None

    def index_file(self, path: Path, what: str) -> Path:
        """An index file of the data set (a CSV, a split list), checked like an image but
        refused with a UserError: without it there is nothing to skip item by item."""
        reason = self.refusal(path)
        if reason is None:
            reason = file_refusal(path)
        if reason is not None:
            raise UserError(f"{what} '{printable(str(path))}' not read: {reason}")
        return path


def reason_group(reason: str) -> str:
    """A refusal without the path it names, to count refusals of one kind together."""
    return reason.split(": ", 1)[0]


def is_inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def file_refusal(path: str | os.PathLike) -> str | None:
    """Why the file at `path` is not read before reading a byte, or None: it must be a
    regular file (not a FIFO or a device, which could block or never end) of at most
    MAX_FILE_BYTES."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return "missing file"
    except OSError as error:
        return f"cannot read file: {error.strerror}"
    if not stat.S_ISREG(info.st_mode):
        return "not a regular file"
    if info.st_size > MAX_FILE_BYTES:
        return (f"file over the {_size(MAX_FILE_BYTES)} limit ({_size(info.st_size)}; raise "
                "report.data.containment.MAX_FILE_BYTES to read it)")
    return None


def _size(count: int) -> str:
    return f"{count / 2**20:.0f} MiB" if count >= 2**20 else f"{count} bytes"


def is_utf8(text: str) -> bool:
    """False for names the OS gave as surrogate escapes (bytes that are not UTF-8)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def printable(text: str) -> str:
    """`text` as valid UTF-8 for CSVs, JSON, params and HTML: undecodable bytes become U+FFFD."""
    return text if is_utf8(text) else text.encode("utf-8", "surrogatepass").decode(
        "utf-8", "replace")
