"""Kermany et al. 2018 pediatric chest X-rays (Kaggle "chest-xray-pneumonia"):
`chest_xray/{train,test,val}/{NORMAL,PNEUMONIA}/*.jpeg`.

The Kaggle zip also holds a second copy of the tree at `chest_xray/chest_xray/` and macOS
metadata (`__MACOSX/`, `.DS_Store`); an image that appears in two trees counts once.
"""

from __future__ import annotations

import re
from pathlib import Path

from report.data.listing import find_child
from report.data.source import RootedSource

CLASSES = ("NORMAL", "PNEUMONIA")
DEFAULT_LABEL_MAP = {"NORMAL": "NORMAL", "PNEUMONIA": "OTHER_INFECTION"}
# Kermany ships its own split; `val` has 16 images and is read only with --split all.
SPLIT_FOLDERS = {"train": ("train",), "test": ("test",), "all": ("train", "val", "test")}
# person{N}_bacteria_{M}.jpeg / person{N}_virus_{M}.jpeg: the pathogen is in the name.
PATHOGEN = re.compile(r"_(bacteria|virus)_", re.IGNORECASE)


def is_kermany_folder(path: Path) -> bool:
    return bool(kermany_trees(path))


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


class KermanySource(RootedSource):
    """Kermany's own split folders; an image in several copies of the tree is read once."""

    name = "kermany"
    title = "Kermany"
    expected = "chest_xray/{train,test,val}/{NORMAL,PNEUMONIA}/*.jpeg (see docs/DATA.md)"
    default_label_map = DEFAULT_LABEL_MAP
    matches = staticmethod(is_kermany_folder)

    @classmethod
    def find_root(cls, path: Path) -> Path:
        """The outermost copy of the tree; the copies inside it are found again from there."""
        return kermany_trees(super().find_root(path))[0]

    def list_records(self) -> None:
        trees = kermany_trees(self.root)
        first_copy: dict[str, Path] = {}
        for tree in trees:
            for split_name in SPLIT_FOLDERS[self.split]:
                self._list_split(tree, split_name, first_copy)
        if len(trees) > 1:
            self.notes.append(
                f"{len(trees)} copies of the Kermany tree found; each image is read from "
                f"{trees[0]} and its copies are counted as duplicates"
            )

    def _list_split(self, tree: Path, split: str, first_copy: dict[str, Path]) -> None:
        split_dir = find_child(tree, split)
        if split_dir is None:
            return
        for class_name in CLASSES:
            folder = find_child(split_dir, class_name)
            if folder is None:
                continue
            for path in self.images_in(folder, f"{split}/{folder.name}/"):
                self._add(path, f"{split}/{class_name}/{path.name}", first_copy)

    def _add(self, path: Path, key: str, first_copy: dict[str, Path]) -> None:
        relative = Path(key).with_suffix("").as_posix()
        first = first_copy.setdefault(key.lower(), path)
        if first != path:
            self.skip(relative, str(path), self.resolve(label_of(path, key)),
                      f"duplicate of {first}")
            return
        self.add(relative, str(path), label_of(path, key))


def label_of(path: Path, key: str) -> str:
    """NORMAL, or PNEUMONIA/bacteria and PNEUMONIA/virus (mappable separately)."""
    class_name = key.split("/")[1]
    pathogen = PATHOGEN.search(path.name)
    if class_name == "PNEUMONIA" and pathogen:
        return f"PNEUMONIA/{pathogen.group(1).lower()}"
    return class_name
