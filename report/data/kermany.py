"""Kermany et al. 2018 pediatric chest X-rays (Kaggle "chest-xray-pneumonia"):
`chest_xray/{train,test,val}/{NORMAL,PNEUMONIA}/*.jpeg`.

The Kaggle zip also holds a second copy of the tree at `chest_xray/chest_xray/` and macOS
metadata (`__MACOSX/`, `.DS_Store`); an image that appears in two trees counts once.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from report.data.labels import LabelResolver, unused_note
from report.data.listing import FileSource, Listing, find_child, image_files, left_out_note
from report.errors import UserError

CLASSES = ("NORMAL", "PNEUMONIA")
DEFAULT_LABEL_MAP = {"NORMAL": "NORMAL", "PNEUMONIA": "OTHER_INFECTION"}
# Kermany ships its own split; `val` has 16 images and is read only with --split all.
SPLIT_FOLDERS = {"train": ("train",), "test": ("test",), "all": ("train", "val", "test")}
# person{N}_bacteria_{M}.jpeg / person{N}_virus_{M}.jpeg: the pathogen is in the name.
PATHOGEN = re.compile(r"_(bacteria|virus)_", re.IGNORECASE)


def kermany_trees(path: Path) -> list[Path]:
    """Every copy of the tree under `path`, outermost first: `path` itself, `chest_xray/`
    and the zip's nested `chest_xray/chest_xray/`."""
    candidates = [path, path / "chest_xray", path / "chest_xray" / "chest_xray"]
    return [c for c in candidates if _is_tree(c)]


def _is_tree(path: Path) -> bool:
    """Some split folder holding exactly the NORMAL and PNEUMONIA class folders."""
    for split in ("train", "test", "val"):
        folder = find_child(path, split)
        if folder is not None and folder.is_dir():
            names = {p.name.upper() for p in folder.iterdir() if p.is_dir()}
            if names == set(CLASSES):
                return True
    return False


class KermanySource(FileSource):
    name = "kermany"

    def __init__(
        self,
        root: Path,
        class_names: tuple[str, ...],
        split: str,
        label_map: Mapping[str, str | None] | None = None,
    ):
        super().__init__()
        self.root = Path(root)
        trees = kermany_trees(self.root)
        if not trees:
            raise UserError(
                f"'{root}' is not the Kermany layout: expected chest_xray/{{train,test,val}}/"
                "{NORMAL,PNEUMONIA}/*.jpeg (see docs/DATA.md)"
            )
        resolver = LabelResolver(class_names, DEFAULT_LABEL_MAP, label_map)
        listing = Listing(self.name, resolver)
        first_copy: dict[str, Path] = {}
        for tree in trees:
            for split_name in SPLIT_FOLDERS[split]:
                self._list_split(tree, split_name, listing, first_copy)
        self.take(listing)
        self.notes += unused_note(resolver)
        if len(trees) > 1:
            self.notes.append(
                f"{len(trees)} copies of the Kermany tree found; each image is read from "
                f"{trees[0]} and its copies are counted as duplicates"
            )
        self.description = self.describe(trees[0] if trees else self.root, split)

    def _list_split(self, tree: Path, split: str, listing: Listing, first_copy: dict) -> None:
        split_dir = find_child(tree, split)
        if split_dir is None:
            return
        for class_name in CLASSES:
            folder = find_child(split_dir, class_name)
            if folder is None:
                continue
            images, left_out = image_files(folder)
            self.notes += left_out_note(left_out, f"{split}/{folder.name}/")
            for path in images:
                self._add(path, f"{split}/{class_name}/{path.name}", listing, first_copy)

    @staticmethod
    def _add(path: Path, key: str, listing: Listing, first_copy: dict[str, Path]) -> None:
        relative = Path(key).with_suffix("").as_posix()
        first = first_copy.setdefault(key.lower(), path)
        if first != path:
            listing.skip(relative, str(path), listing.resolve(label_of(path, key)),
                         f"duplicate of {first}")
            return
        listing.add(relative, str(path), label_of(path, key))


def label_of(path: Path, key: str) -> str:
    """NORMAL, or PNEUMONIA/bacteria and PNEUMONIA/virus (mappable separately)."""
    class_name = key.split("/")[1]
    pathogen = PATHOGEN.search(path.name)
    if class_name == "PNEUMONIA" and pathogen:
        return f"PNEUMONIA/{pathogen.group(1).lower()}"
    return class_name
