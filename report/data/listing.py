"""Shared pieces of the file-based sources: finding image files, taking a split of them."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from report.data.images import IMAGE_SUFFIXES
from report.data.split import split_indices

# Written by macOS into zips and folders; never images, whatever their names say.
JUNK_FOLDERS = ("__MACOSX",)


def is_junk(path: Path) -> bool:
    """Hidden files (.DS_Store, macOS "._x.png" forks) and anything under __MACOSX/."""
    return path.name.startswith(".") or any(part in JUNK_FOLDERS for part in path.parts)


def image_files(
    folder: Path, may_enter: Callable[[Path], bool] = lambda folder: True
) -> tuple[list[Path], int]:
    """Image files under `folder`, sorted so every run lists them in the same order, and
    the number of other files (hidden, macOS metadata, not an image suffix) left out.

    Symlinked folders are entered when `may_enter(folder)` says so, each real folder once
    (a link to an ancestor cannot loop); a folder it refuses, `folder` itself included, is
    listed as one entry, unopened, for the source to skip with the reason."""
    if not may_enter(folder):
        return [folder], 0
    files, refused = _walk(folder, may_enter)
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES and not is_junk(p)]
    return sorted(images + refused), len(files) - len(images)


def _walk(top: Path, may_enter: Callable[[Path], bool]) -> tuple[list[Path], list[Path]]:
    files: list[Path] = []
    refused: list[Path] = []
    seen = {os.path.realpath(top)}
    pending = [top]
    while pending:
        try:
            entries = sorted(os.scandir(pending.pop()), key=lambda entry: entry.name)
        except OSError:
            continue  # unreadable folders hold nothing we could read either
        for entry in entries:
            path = Path(entry.path)
            if entry.is_dir():  # follows symlinks
                if entry.is_symlink() and not may_enter(path):
                    refused.append(path)
                elif os.path.realpath(path) not in seen:
                    seen.add(os.path.realpath(path))
                    pending.append(path)
            elif entry.is_file():
                files.append(path)
    return files, refused


def left_out_note(count: int, where: str) -> list[str]:
    if not count:
        return []
    suffixes = "/".join(IMAGE_SUFFIXES)
    return [f"{count} file(s) in {where} are hidden or not {suffixes} and were not read"]


def in_split(items: Sequence, split: str, keep_order: bool = False) -> list:
    """The items of `split` (see split.py); sorted back into listing order unless the
    caller needs the order train_test_split returns."""
    indices = split_indices(len(items), split)
    return [items[i] for i in (indices if keep_order else sorted(indices))]


def find_child(folder: Path, name: str) -> Path | None:
    """A child of `folder` named `name`, ignoring case (data sets differ in spelling)."""
    exact = folder / name
    if exact.exists():
        return exact
    if not folder.is_dir():
        return None
    matches = [p for p in sorted(folder.iterdir()) if p.name.lower() == name.lower()]
    return matches[0] if matches else None
