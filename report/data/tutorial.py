"""The tutorial's data recipe as one source: COVID-19 films from Cohen et al., NORMAL and
PNEUMONIA films from Kermany's train folder, the same number of each.

The tutorial took "the first 100" files of an unsorted directory listing, which differs from
machine to machine. Here each group is sorted and then sampled with a fixed seed, so the same
folders always give the same images."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from report.data.cohen import CohenSource
from report.data.ids import unique_id
from report.data.kermany import KermanySource
from report.data.labels import LabelMap, unused_entries_note
from report.data.listing import in_split
from report.data.records import Record
from report.data.source import ImageSource, Request, images
from report.errors import UserError
from report.i18n import _

DEFAULT_PER_CLASS = 100
SEED = 0


class TutorialSource(ImageSource):
    """Records are the sampled Cohen and Kermany files, each still naming its data set. What
    the two listings skipped or noted is not repeated: only the sample counts."""

    name = "tutorial"

    def __init__(
        self, cohen_dir: Path, kermany_dir: Path, class_names: tuple[str, ...], split: str,
        label_map: LabelMap | None = None, per_class: int = DEFAULT_PER_CLASS, seed: int = SEED,
        follow_symlinks: bool = False,
    ):
        self.cohen_dir, self.kermany_dir = Path(cohen_dir), Path(kermany_dir)
        self.follow_symlinks = follow_symlinks
        self.per_class, self.seed = per_class, seed
        self.label_map = label_map
        # The label map is applied by the Cohen and Kermany listings, not here.
        super().__init__(class_names, split)

    @classmethod
    def from_spec(cls, location: str, request: Request) -> TutorialSource:
        """`tutorial:COHEN_DIR,KERMANY_DIR[,COUNT]`."""
        cohen, kermany, count = _tutorial_folders(location)
        return cls(cohen, kermany, request.class_names, request.split, request.label_map,
                   count, follow_symlinks=request.follow_symlinks)

    def list_records(self) -> None:
        cohen = CohenSource(self.cohen_dir, self.class_names, "all", self.label_map,
                            self.follow_symlinks)
        kermany = KermanySource(self.kermany_dir, self.class_names, "train", self.label_map,
                                self.follow_symlinks)
        # Only the folders are kept (they travel with the source to Spark tasks).
        self._folders = {source.name: source.folder for source in (cohen, kermany)}
        groups = [
            ("COVID-19", "Cohen", _with_label(cohen.records, "covid-19", leaf=True)),
            ("NORMAL", "Kermany train", _with_label(kermany.records, "normal")),
            ("PNEUMONIA", "Kermany train", _with_label(kermany.records, "pneumonia")),
        ]
        sampled: list[Record] = []
        for number, (label, origin, records) in enumerate(groups):
            chosen = _sample(records, self.per_class, np.random.default_rng([self.seed, number]))
            sampled += chosen
            self.notes.append(
                f"tutorial recipe: {len(chosen)} of {len(records)} {label} images from "
                f"{origin}, sorted by path and sampled with seed {self.seed}"
            )
        # The tutorial split the concatenated classes with train_test_split; keep its order.
        self.records = _unique_ids(in_split(sampled, self.split, keep_order=True))
        self.notes += _unused_in_both(cohen, kermany)

    def refusal(self, path: str) -> str | None:
        """Inside the Cohen or the Kermany folder, by the rules each was listed with."""
        refusals = [folder.refusal(path) for folder in self._folders.values()]
        return None if None in refusals else refusals[0]

    def describe(self) -> str:
        return _("tutorial recipe (Cohen %(cohen)s, Kermany %(kermany)s, %(per_class)s per "
                 "class, %(where)s): %(found)s") % {
            "cohen": self.cohen_dir, "kermany": self.kermany_dir, "per_class": self.per_class,
            "where": self.where(), "found": images(len(self.records))}


def _unused_in_both(cohen: CohenSource, kermany: KermanySource) -> list[str]:
    """The user's label-map entries neither listing used (the tutorial's own resolver sees
    no label map: its parts apply it)."""
    unused = set(cohen.resolve.unused_entries()) & set(kermany.resolve.unused_entries())
    return unused_entries_note(sorted(unused))


def _tutorial_folders(location: str) -> tuple[Path, Path, int]:
    parts = [part.strip() for part in location.split(",")]
    count = DEFAULT_PER_CLASS
    if len(parts) == 3 and parts[2].isdigit() and int(parts[2]) > 0:
        count = int(parts.pop())
    if len(parts) != 2 or not all(parts):
        raise UserError(
            f"--data tutorial:{location}: use tutorial:COHEN_DIR,KERMANY_DIR or "
            "tutorial:COHEN_DIR,KERMANY_DIR,COUNT (images per class, default 100)"
        )
    cohen, kermany = (Path(part).expanduser() for part in parts)
    for path in (cohen, kermany):
        if not path.is_dir():
            raise UserError(f"--data tutorial:{location}: '{path}' is not a folder")
    return cohen, kermany, count


def _with_label(records: list[Record], label: str, leaf: bool = False) -> list[Record]:
    """Records whose source label is `label`: the leaf of Cohen's hierarchical findings,
    the class folder of Kermany's (PNEUMONIA/virus counts as PNEUMONIA)."""
    def part(record: Record) -> str:
        parts = (record.source_label or "").split("/")
        return (parts[-1] if leaf else parts[0]).strip().lower()

    return sorted((r for r in records if part(r) == label), key=lambda r: r.source)


def _sample(records: list[Record], count: int, rng: np.random.Generator) -> list[Record]:
    if len(records) <= count:
        return records
    return [records[i] for i in sorted(rng.choice(len(records), count, replace=False))]


def _unique_ids(records: list[Record]) -> list[Record]:
    """Cohen and Kermany ids come from different listings; make them unique together."""
    seen: set[str] = set()
    return [replace(r, image_id=unique_id(r.image_id, seen)) for r in records]
