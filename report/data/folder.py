"""A folder per class: `DIR/<CLASS>/*.png|jpg|jpeg|dcm`, or the same under `DIR/test/`."""

from __future__ import annotations

from pathlib import Path

from report.data.containment import printable
from report.data.ids import safe_id, unique_id
from report.data.labels import LabelResolver, unmapped_reason
from report.data.listing import in_split, is_junk
from report.data.source import RootedSource
from report.errors import UserError

__all__ = ["FolderSource", "safe_id", "unique_id"]  # the ids are imported from here elsewhere


class FolderSource(RootedSource):
    """Images sorted by path so the same folder always gives the same records and split.

    A class folder's name is its label: it matches a model class of the same name, or goes
    through the label map; folders that reach no class are listed and counted as skipped.
    It is what a plain `--data DIR` is read as when no known layout matches, so it has no
    `matches` of its own.
    """

    name = "folder"

    @classmethod
    def named_folder(cls, location: str) -> Path:
        return Path(location).expanduser()  # find_root says what is wrong with it

    @classmethod
    def find_root(cls, path: Path) -> Path:
        if not path.is_dir():
            raise UserError(
                f"data folder '{path}' does not exist; pass --data synthetic or a folder with "
                "one subfolder per class"
            )
        return path

    def list_records(self) -> None:
        base, split_applied = self._split_folder()
        split = self.split if split_applied else "all"
        matched, unmatched = match_class_folders(base, self.resolve)
        self._list(matched, split)
        self._skip_unmatched(unmatched, split)

    def _split_folder(self) -> tuple[Path, bool]:
        """A `test/` subfolder is the test split as the data set ships it; else split here."""
        test_dir = self.root / "test"
        if not test_dir.is_dir():
            return self.root, self.split != "all"
        if self.split == "all":
            self.notes.append("split=all with a test/ subfolder: only test/ is read")
            return test_dir, False
        chosen = self.root / self.split
        if not chosen.is_dir():
            raise UserError(f"data folder '{self.root}' has no {self.split}/ subfolder")
        return chosen, False

    def _list(self, folders: list[Path], split: str) -> None:
        # Split over the matched classes' files only, in class order: the split a model
        # was trained on must not move when an unrelated folder appears next to them.
        files = [(path, folder) for folder in folders for path in self._images(folder)]
        for path, folder in in_split(files, split):
            self.add(_key(path, folder), str(path), folder.name)

    def _skip_unmatched(self, folders: list[Path], split: str) -> None:
        for folder in folders:
            for path in in_split(self._images(folder), split):
                self.skip(_key(path, folder), str(path), None, unmapped_reason(folder.name))

    def _images(self, folder: Path) -> list[Path]:
        return self.images_in(folder, f"{folder.name}/")


def _key(path: Path, folder: Path) -> str:
    relative = path.relative_to(folder)
    if not relative.name:  # the class folder itself, refused as a whole (see images_in)
        return folder.name
    return relative.with_suffix("").as_posix()


def match_class_folders(base: Path, resolver: LabelResolver) -> tuple[list[Path], list[Path]]:
    """Class folders in model class order, and the folders that map to no class."""
    folders = [p for p in sorted(base.iterdir()) if p.is_dir() and not is_junk(p)]
    labels = {folder: resolver(folder.name) for folder in folders}
    matched = sorted((f for f in folders if labels[f] is not None), key=lambda f: labels[f])
    if not matched:
        found = printable(", ".join(p.name for p in folders)) or "none"
        raise UserError(
            f"no class folder in '{base}' matches the model's classes "
            f"({', '.join(resolver.class_names)}); found: {found}. Name one subfolder per "
            "class, or pass a label map"
        )
    return matched, [f for f in folders if labels[f] is None]
