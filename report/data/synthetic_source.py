"""The built-in synthetic chest films as a data source (`--data synthetic[:COUNT]`)."""

from __future__ import annotations

import hashlib

from report.data import synthetic
from report.data.pixels import resize, resize_mask
from report.data.records import LoadedImage, Record
from report.data.source import ImageSource, Request, images
from report.data.split import split_indices
from report.errors import UserError
from report.i18n import _

DEFAULT_COUNT = 600
SEED = 0


class SyntheticSource(ImageSource):
    """Films generated on demand; never unreadable, so nothing is ever skipped. The label
    map does not apply: generated classes match the model's by name."""

    name = "synthetic"
    location_optional = True  # `--data synthetic` alone
    keeps_duplicates = True  # generated films differ by construction: nothing to look for
    confounded = False

    def __init__(self, class_names: tuple[str, ...], split: str, count: int = DEFAULT_COUNT):
        self.count = count
        self.model_class = _model_classes(class_names)
        super().__init__(class_names, split)

    @classmethod
    def from_spec(cls, location: str, request: Request) -> SyntheticSource:
        return cls(request.class_names, request.split, parse_count(cls.name, location))

    def list_records(self) -> None:
        for i in sorted(split_indices(self.count, self.split)):
            label = self.model_class[synthetic.label_of(i)]
            self.keep(f"synthetic-{i:05d}", f"synthetic:{i}", label)

    def describe(self) -> str:
        return _("%(name)s (%(generated)s, seed %(seed)s), %(where)s: %(found)s") % {
            "name": self.name, "generated": images(self.count), "seed": SEED,
            "where": self.where(), "found": images(len(self.records))}

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


class ConfoundedSyntheticSource(SyntheticSource):
    """The same films with a hospital-style tag burned into most COVID-19 films (and their
    opacities fainter): a shortcut a model learns, for the shortcut check to find."""

    name = "synthetic-confounded"
    confounded = True


def _model_classes(class_names: tuple[str, ...]) -> dict[int, int]:
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


def parse_count(name: str, count: str) -> int:
    """COUNT of `--data NAME:COUNT` ("" when the spec is the bare NAME)."""
    if not count:
        return DEFAULT_COUNT
    if not count.isdigit() or int(count) < 5:
        raise UserError(
            f"--data '{name}:{count}': use synthetic or synthetic:COUNT with COUNT >= 5"
        )
    return int(count)
