"""The tutorial's data recipe as one source: COVID-19 films from Cohen et al., NORMAL and
PNEUMONIA films from Kermany's train folder, the same number of each.

The tutorial took "the first 100" files of an unsorted directory listing, which differs from
machine to machine. Here each group is sorted and then sampled with a fixed seed, so the same
folders always give the same images."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import numpy as np

from report.data.cohen import CohenSource
from report.data.ids import unique_id
from report.data.kermany import KermanySource
from report.data.listing import FileSource, in_split
from report.data.records import Record

DEFAULT_PER_CLASS = 100
SEED = 0


class TutorialSource(FileSource):
    name = "tutorial"

    def __init__(
        self,
        cohen_dir: Path,
        kermany_dir: Path,
        class_names: tuple[str, ...],
        split: str,
        label_map: Mapping[str, str | None] | None = None,
        per_class: int = DEFAULT_PER_CLASS,
        seed: int = SEED,
    ):
        super().__init__()
        cohen = CohenSource(cohen_dir, class_names, "all", label_map)
        kermany = KermanySource(kermany_dir, class_names, "train", label_map)
        groups = [
            ("COVID-19", "Cohen", _with_label(cohen.records, "covid-19", leaf=True)),
            ("NORMAL", "Kermany train", _with_label(kermany.records, "normal")),
            ("PNEUMONIA", "Kermany train", _with_label(kermany.records, "pneumonia")),
        ]
        sampled: list[Record] = []
        for number, (label, origin, records) in enumerate(groups):
            chosen = _sample(records, per_class, np.random.default_rng([seed, number]))
            sampled += chosen
            self.notes.append(
                f"tutorial recipe: {len(chosen)} of {len(records)} {label} images from "
                f"{origin}, sorted by path and sampled with seed {seed}"
            )
        # The tutorial split the concatenated classes with train_test_split; keep its order.
        self.records = _unique_ids(in_split(sampled, split, keep_order=True))
        where = "all images" if split == "all" else f"{split} split"
        self.description = (
            f"tutorial recipe (Cohen {cohen_dir}, Kermany {kermany_dir}, {per_class} per "
            f"class, {where}): {len(self.records)} images"
        )


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
