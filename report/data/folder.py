"""A folder per class: `DIR/<CLASS>/*.png|jpg|jpeg`, or the same under `DIR/test/`."""

from __future__ import annotations

import re
from pathlib import Path

from report.data.images import IMAGE_SUFFIXES, read_image_file
from report.data.records import LoadedImage, Record
from report.data.split import split_indices
from report.errors import UserError


class FolderSource:
    """Images sorted by path so the same folder always gives the same records and split."""

    def __init__(self, root: Path, class_names: tuple[str, ...], split: str):
        self.root = Path(root)
        if not self.root.is_dir():
            raise UserError(
                f"data folder '{root}' does not exist; pass --data synthetic or a folder with "
                "one subfolder per class"
            )
        self.notes: list[str] = []
        base, split_applied = self._split_folder(split)
        classes = match_class_folders(base, class_names)
        files = [
            (path, label, folder)
            for label, folder in classes
            for path in _image_files(folder, self)
        ]
        if split_applied:
            files = [files[i] for i in sorted(split_indices(len(files), split))]
        self.records = _records(files)
        where = "all files" if split == "all" else f"{split} split"
        self.description = f"folder {self.root} ({where}, {len(self.records)} images)"

    def _split_folder(self, split: str) -> tuple[Path, bool]:
        """A `test/` subfolder is the test split as the data set ships it; else split here."""
        test_dir = self.root / "test"
        if not test_dir.is_dir():
            return self.root, split != "all"
        if split == "all":
            self.notes.append("split=all with a test/ subfolder: only test/ is read")
            return test_dir, False
        chosen = self.root / split
        if not chosen.is_dir():
            raise UserError(f"data folder '{self.root}' has no {split}/ subfolder")
        return chosen, False

    def load(self, record: Record, image_size: tuple[int, int]) -> LoadedImage:
        return read_image_file(Path(record.source), image_size)


def match_class_folders(base: Path, class_names: tuple[str, ...]) -> list[tuple[int, Path]]:
    """Class folders matched to the model's class names, case-insensitively, in class order."""
    folders = {p.name.lower(): p for p in sorted(base.iterdir()) if p.is_dir()}
    matched = [
        (label, folders[name.lower()])
        for label, name in enumerate(class_names)
        if name.lower() in folders
    ]
    if not matched:
        found = ", ".join(p.name for p in folders.values()) or "none"
        raise UserError(
            f"no class folder in '{base}' matches the model's classes ({', '.join(class_names)}); "
            f"found: {found}. Name one subfolder per class"
        )
    return matched


def _image_files(folder: Path, source: FolderSource) -> list[Path]:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    # Hidden files (.DS_Store, macOS "._x.png" forks) are never images, whatever their suffix.
    images = [
        p for p in files if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    ]
    if len(images) < len(files):
        source.notes.append(
            f"{len(files) - len(images)} file(s) in {folder.name}/ are hidden or not "
            ".png/.jpg/.jpeg and were not read"
        )
    return images


def _records(files: list[tuple[Path, int, Path]]) -> list[Record]:
    """Ids are paths inside the class folder (the class is already in the artifact path)."""
    seen: set[str] = set()
    records = []
    for path, label, class_folder in files:
        relative = path.relative_to(class_folder).with_suffix("").as_posix()
        image_id = unique_id(safe_id(relative), seen)
        records.append(Record(image_id=image_id, source=str(path), label=label))
    return records


def safe_id(text: str) -> str:
    """An id usable as a file name and an npz key: no path separators, no dot-dot."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", text.replace("/", "__")).strip("._")
    return cleaned or "image"


def unique_id(image_id: str, seen: set[str]) -> str:
    candidate, n = image_id, 1
    while candidate.lower() in seen:
        n += 1
        candidate = f"{image_id}-{n}"
    seen.add(candidate.lower())
    return candidate
