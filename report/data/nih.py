"""NIH ChestX-ray14 (Wang et al. 2017): `Data_Entry_2017.csv` (Image Index, Finding Labels
joined by '|'), PNGs under `images*/` (the Kaggle copy nests them in images_001/images/ ...),
and the boxes of `BBox_List_2017.csv` for 984 of them, which become lesion masks."""

from __future__ import annotations

from pathlib import Path

from report.data.containment import DataFolder
from report.data.labels import unmapped_reason
from report.data.listing import image_files, in_split
from report.data.records import Box
from report.data.source import RootedSource
from report.data.tables import read_records, read_rows, read_text

ENTRIES = ("Data_Entry_2017.csv", "Data_Entry_2017_v2020.csv")
BOXES_CSV = "BBox_List_2017.csv"
SPLIT_LISTS = {"train": "train_val_list.txt", "test": "test_list.txt"}
DEFAULT_LABEL_MAP = {"No Finding": "NORMAL", "Pneumonia": "OTHER_INFECTION"}
# The box list spells one finding differently from the entries.
BOX_LABEL_ALIASES = {"Infiltrate": "Infiltration"}


def is_nih_folder(path: Path) -> bool:
    return entries_file(path) is not None


def entries_file(path: Path) -> Path | None:
    return next((path / name for name in ENTRIES if (path / name).is_file()), None)


class NihSource(RootedSource):
    """One record per entry whose findings reach exactly one model class. An entry with
    findings that map to two classes (say Pneumonia and a finding you mapped elsewhere) is
    skipped rather than given one of them."""

    name = "nih"
    title = "NIH"
    expected = f"{ENTRIES[0]} there"
    default_label_map = DEFAULT_LABEL_MAP
    matches = staticmethod(is_nih_folder)

    def list_records(self) -> None:
        files = self._index_images()
        boxes = read_boxes(self.root / BOXES_CSV, self.folder)
        seen: set[str] = set()
        entries = read_entries(entries_file(self.root), self.folder)
        for name, findings in self._split(entries):
            self._add(name, findings, files, boxes, seen)

    def _add(self, name, findings, files, boxes, seen) -> None:
        path = files.get(name, self.root / "images" / name)
        key = Path(name).stem
        labels = {self.resolve(f) for f in findings.split("|")} - {None}
        label = next(iter(labels)) if len(labels) == 1 else None
        if name in seen:
            self.skip(key, str(path), label, f"duplicate of {path}")
        elif name not in files:
            self.skip(key, str(path), label, "missing file")
        elif len(labels) > 1:
            names = ", ".join(sorted(self.class_names[i] for i in labels))
            self.skip(key, str(path), None,
                      f"labels '{findings}' map to several model classes ({names})")
        elif label is None:
            self.skip(key, str(path), None, unmapped_reason(findings))
        else:
            self.keep(key, str(path), label, findings, boxes=self._boxes(boxes.get(name), label))
        seen.add(name)

    def _boxes(self, boxes: list[tuple[str, Box]] | None, label: int):
        """The boxes of findings that map to the record's class; None when there are none
        (NIH boxed only some findings of some images: no box is not "no lesion")."""
        kept = tuple(box for finding, box in boxes or [] if self.resolve(finding) == label)
        return kept or None

    def _index_images(self) -> dict[str, Path]:
        """File name -> path over every images*/ folder; later copies of a name are noted."""
        files: dict[str, Path] = {}
        copies = 0
        for folder in sorted(p for p in self.root.glob("images*") if p.is_dir()):
            for path in self._pngs(folder):
                copies += path.name in files
                files.setdefault(path.name, path)
        if copies:
            self.notes.append(f"{copies} extra copies of image files ignored (same name)")
        return files

    def _pngs(self, folder: Path) -> list[Path]:
        """PNGs under `folder`; a folder a symlink takes out of the data folder is noted and
        not listed, and the entries whose images are there are then missing files."""
        found, _ = image_files(folder, lambda linked: self.refusal(linked) is None)
        for path in found:
            if path.is_dir():
                self.notes.append(f"{path.relative_to(self.root)}/ not read: "
                                  f"{self.refusal(path)}")
        return [path for path in found if path.suffix.lower() == ".png" and not path.is_dir()]

    def _split(self, entries: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """NIH's official patient-wise split when its lists are there, else ours."""
        listed = self.root / SPLIT_LISTS.get(self.split, "")
        if self.split != "all" and listed.is_file():
            names = set(read_text(listed, self.folder, "NIH split list").split())
            self.notes.append(f"split from NIH's {listed.name}")
            return [entry for entry in entries if entry[0] in names]
        return in_split(entries, self.split)


def read_entries(path: Path, folder: DataFolder) -> list[tuple[str, str]]:
    """(Image Index, Finding Labels) sorted by image name."""
    rows = read_records(path, folder, "NIH entries", ("Image Index", "Finding Labels"))
    return sorted((row["Image Index"], row["Finding Labels"]) for row in rows
                  if row["Image Index"])


def read_boxes(path: Path, folder: DataFolder) -> dict[str, list[tuple[str, Box]]]:
    """Image name -> (finding, box). Read by position: the header is literally
    `Image Index,Finding Label,Bbox [x,y,w,h],,,`, so its column names are useless."""
    boxes: dict[str, list[tuple[str, Box]]] = {}
    if not path.is_file():
        return boxes
    for row in read_rows(path, folder, "NIH box list")[1:]:
        try:
            box = tuple(float(value) for value in row[2:6])
        except ValueError:
            continue
        if len(box) == 4:
            finding = row[1].strip()
            finding = BOX_LABEL_ALIASES.get(finding, finding)
            boxes.setdefault(row[0].strip(), []).append((finding, box))
    return boxes
