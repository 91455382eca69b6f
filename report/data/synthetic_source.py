"""The built-in synthetic chest films as a data source (`--data synthetic[:COUNT]`)."""

from __future__ import annotations

import hashlib

from report.data import synthetic
from report.data.images import resize, resize_mask
from report.data.records import LoadedImage, Record
from report.data.split import split_indices
from report.errors import UserError

DEFAULT_COUNT = 600
SEED = 0


class SyntheticSource:
    def __init__(self, class_names: tuple[str, ...], split: str, count: int = DEFAULT_COUNT,
                 confounded: bool = False):
        self.notes: list[str] = []
        self.skipped: list = []  # generated images are never unusable
        self.confounded = confounded
        self.name = "synthetic-confounded" if confounded else "synthetic"
        self.label_map = _label_map(class_names)
        indices = sorted(split_indices(count, split))
        self.records = [
            Record(
                image_id=f"synthetic-{i:05d}",
                source=f"synthetic:{i}",
                label=self.label_map[synthetic.label_of(i)],
            )
            for i in indices
        ]
        where = "all images" if split == "all" else f"{split} split"
        name = "synthetic-confounded" if confounded else "synthetic"
        self.description = (
            f"{name} ({count} images, seed {SEED}), {where}: {len(self.records)} images"
        )

    def load(self, record: Record, image_size: tuple[int, int]) -> LoadedImage:
        index = int(record.source.split(":")[1])
        case = synthetic.generate(index, seed=SEED, size=max(image_size),
                                  confounded=self.confounded)
        return LoadedImage(
            pixels=resize(case.image, image_size),
            digest=hashlib.sha256(case.image.tobytes()).hexdigest(),
            lesion_mask=resize_mask(case.lesion_mask, image_size),
            lung_mask=resize_mask(case.lung_mask, image_size),
        )


def _label_map(class_names: tuple[str, ...]) -> dict[int, int]:
    """Generator class index -> model class index, by case-insensitive name."""
    model_index = {name.lower(): i for i, name in enumerate(class_names)}
    missing = [n for n in synthetic.CLASS_NAMES if n.lower() not in model_index]
    if missing:
        raise UserError(
            f"the model's classes ({', '.join(class_names)}) do not include "
            f"{', '.join(missing)}, which the synthetic data needs; use --data DIR with your own "
            "images"
        )
    return {i: model_index[name.lower()] for i, name in enumerate(synthetic.CLASS_NAMES)}


def parse_count(spec: str) -> int:
    _, _, count = spec.partition(":")
    if not count:
        return DEFAULT_COUNT
    if not count.isdigit() or int(count) < 5:
        raise UserError(f"--data '{spec}': use synthetic or synthetic:COUNT with COUNT >= 5")
    return int(count)
