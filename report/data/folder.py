"""A folder per class: `DIR/<CLASS>/*.png|jpg|jpeg|dcm`, or the same under `DIR/test/`."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from report.data.ids import safe_id, unique_id
from report.data.labels import LabelResolver, unmapped_reason
from report.data.listing import FileSource, Listing, image_files, in_split, is_junk, left_out_note
from report.errors import UserError

__all__ = ["FolderSource", "safe_id", "unique_id"]  # the ids are imported from here elsewhere


class FolderSource(FileSource):
    """Images sorted by path so the same folder always gives the same records and split.

    A class folder's name is its label: it matches a model class of the same name, or goes
    through the label map; folders that reach no class are listed and counted as skipped.
    """

    name = "folder"

    def __init__(
        self,
        root: Path,
        class_names: tuple[str, ...],
        split: str,
        label_map: Mapping[str, str | None] | None = None,
    ):
        super().__init__()
        self.root = Path(root)
        if not self.root.is_dir():
            raise UserError(
                f"data folder '{root}' does not exist; pass --data synthetic or a folder with "
                "one subfolder per class"
            )
        base, split_applied = self._split_folder(split)
        resolver = LabelResolver(class_names, {}, label_map)
        matched, unmatched = match_class_folders(base, resolver)
        listing = Listing(self.name, resolver)
        self._list(listing, matched, split if split_applied else "all")
        self._skip_unmatched(listing, unmatched, split if split_applied else "all")
        self.take(listing)
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

    def _list(self, listing: Listing, folders: list[Path], split: str) -> None:
        # Split over the matched classes' files only, in class order: the split a model
        # was trained on must not move when an unrelated folder appears next to them.
        files = [(path, folder) for folder in folders for path in self._images(folder)]
        for path, folder in in_split(files, split):
            key = path.relative_to(folder).with_suffix("").as_posix()
            listing.add(key, str(path), folder.name)

    def _skip_unmatched(self, listing: Listing, folders: list[Path], split: str) -> None:
        for folder in folders:
            for path in in_split(self._images(folder), split):
                key = path.relative_to(folder).with_suffix("").as_posix()
                listing.skip(key, str(path), None, unmapped_reason(folder.name))

    def _images(self, folder: Path) -> list[Path]:
        images, left_out = image_files(folder)
        self.notes += left_out_note(left_out, f"{folder.name}/")
        return images


def match_class_folders(base: Path, resolver: LabelResolver) -> tuple[list[Path], list[Path]]:
    """Class folders in model class order, and the folders that map to no class."""
    folders = [p for p in sorted(base.iterdir()) if p.is_dir() and not is_junk(p)]
    labels = {folder: resolver(folder.name) for folder in folders}
    matched = sorted((f for f in folders if labels[f] is not None), key=lambda f: labels[f])
    if not matched:
        found = ", ".join(p.name for p in folders) or "none"
        raise UserError(
            f"no class folder in '{base}' matches the model's classes "
            f"({', '.join(resolver.class_names)}); found: {found}. Name one subfolder per "
            "class, or pass a label map"
        )
    return matched, [f for f in folders if labels[f] is None]
