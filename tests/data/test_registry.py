"""One registry, one base class: every source is reachable by name, detected where it can be,
and keeps the same contract, so callers never ask a source what it lacks."""

from pathlib import Path

import numpy as np
import pytest

from report.data import (
    SOURCE_NAMES,
    SOURCES,
    SYNTHETIC_NAMES,
    ImageSource,
    MemorySource,
    detect_layouts,
    open_source,
    take_inventory,
)
from report.data.batches import iter_batches
from report.data.records import LoadedImage, Record, Skipped
from report.errors import UserError
from tests.data.builders import (
    CLASSES,
    DETECTABLE_LAYOUTS,
    cohen_tree,
    film,
    kermany_tree,
    write_image,
)


def folder_tree(root: Path) -> Path:
    write_image(root / "NORMAL" / "a.png", film(1))
    return root


def tutorial_folders(root: Path) -> str:
    cohen = cohen_tree(root / "cohen", [("COVID-19", "PA", "X-ray", "c.png")])
    kermany = kermany_tree(root / "kermany", {"train": 1})
    return f"{cohen},{kermany},1"


# How to reach every registered source by `--data NAME:LOCATION`: a tmp folder -> LOCATION.
LOCATIONS = {
    **{name: lambda root, build=build: str(build(root)) for name, build in
       DETECTABLE_LAYOUTS.items()},
    "folder": lambda root: str(folder_tree(root)),
    "tutorial": tutorial_folders,
    "synthetic": lambda root: "10",
    "synthetic-confounded": lambda root: "10",
}


def test_every_registered_source_has_a_way_here_to_reach_it():
    assert set(LOCATIONS) == set(SOURCES)  # a new source needs a line above
    assert SOURCE_NAMES == (
        "folder", "arrays", "kermany", "cohen", "radiography", "rsna", "nih", "tutorial",
        "synthetic", "synthetic-confounded",
    )
    assert SYNTHETIC_NAMES == ("synthetic", "synthetic-confounded")


def test_every_named_source_class_is_registered_once():
    def subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)

    named = [cls for cls in subclasses(ImageSource)
             if cls.name and cls is not MemorySource and cls.__module__.startswith("report.")]
    assert sorted(cls.name for cls in named) == sorted(SOURCES)  # none missing, none twice


@pytest.mark.parametrize("source", [*SOURCES.values(), MemorySource], ids=lambda s: s.__name__)
def test_every_source_class_derives_from_the_one_base(source):
    assert issubclass(source, ImageSource)
    assert source.name and isinstance(source.keeps_duplicates, bool)


@pytest.mark.parametrize("name", list(SOURCES))
def test_each_source_opens_by_name_and_keeps_the_contract(tmp_path, name):
    source = open_source(f"{name}:{LOCATIONS[name](tmp_path)}", CLASSES, "all")
    assert type(source) is SOURCES[name] and source.name == name
    assert source.records and all(isinstance(r, Record) for r in source.records)
    assert all(isinstance(s, Skipped) for s in source.skipped)
    assert all(isinstance(note, str) for note in source.notes)
    assert source.description and "\n" not in source.description
    image = source.load(source.records[0], (20, 16))
    assert isinstance(image, LoadedImage)
    assert image.pixels.shape == (20, 16, 3) and image.pixels.dtype == np.uint8


def test_detection_is_exactly_the_sources_with_matches(tmp_path):
    detectable = {name for name, source in SOURCES.items() if source.matches is not None}
    assert detectable == set(DETECTABLE_LAYOUTS)  # each detected in test_detect.py
    for name in set(SOURCES) - detectable:
        assert SOURCES[name].matches is None
    assert detect_layouts(folder_tree(tmp_path)) == []


@pytest.mark.parametrize("name", sorted(set(DETECTABLE_LAYOUTS) - {"arrays"}))
def test_a_named_layout_on_the_wrong_folder_says_what_it_expected(tmp_path, name):
    folder_tree(tmp_path)
    with pytest.raises(UserError, match=r"is not the .* layout: expected"):
        open_source(f"{name}:{tmp_path}", CLASSES, "all")


def test_synthetic_alone_is_a_spec_but_other_bare_names_are_paths(tmp_path, monkeypatch):
    assert open_source("synthetic", CLASSES, "all").name == "synthetic"
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="data folder 'tutorial' does not exist"):
        open_source("tutorial", CLASSES, "all")


def test_a_path_object_is_a_folder_like_the_same_string(tmp_path):
    kermany_tree(tmp_path, {"test": 2})
    by_path = open_source(tmp_path, CLASSES, "all")
    assert by_path.name == "kermany"
    assert by_path.records == open_source(str(tmp_path), CLASSES, "all").records


def test_a_path_object_is_never_read_as_a_spec(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="data folder 'synthetic' does not exist"):
        open_source(Path("synthetic"), CLASSES, "all")


@pytest.mark.parametrize(
    ("spec", "message"),
    [(42, "data: got a int; pass a --data spec"),
     (np.zeros((2, 4, 4), np.uint8), r"data: got a ndarray; .* tuple \(images, labels\)"),
     ((np.zeros((2, 4, 4), np.uint8),), r"tuple of length 1; pass \(images, labels\)")],
)
def test_other_kinds_of_data_are_user_errors(spec, message):
    with pytest.raises(UserError, match=message):
        open_source(spec, CLASSES, "all")


def test_an_unknown_split_is_refused_before_anything_is_read():
    with pytest.raises(UserError, match="unknown split 'val'; choose one of train, test, all"):
        open_source((np.zeros((1, 4, 4), np.uint8), None), CLASSES, "val")


# ------------------------------------------------------------------- the base class contract


class Pair(ImageSource):
    """The least a new source writes: a name, a listing and a way to read one record."""

    name = "pair"

    def list_records(self) -> None:
        self.add("a", "x", "NORMAL")
        self.add("a", "y", "NORMAL")  # the same key: a unique id is made
        self.add("c", "z", "cats")

    def load(self, record: Record, image_size: tuple[int, int]) -> LoadedImage:
        return LoadedImage(np.zeros((*image_size, 3), np.uint8), digest="same bytes")


def test_the_base_collects_records_skips_ids_and_a_description():
    source = Pair(CLASSES, "all")
    assert [(r.image_id, r.label, r.dataset) for r in source.records] == [
        ("a", 1, "pair"), ("a-2", 1, "pair")
    ]
    assert [(s.image_id, s.reason) for s in source.skipped] == [
        ("c", "label 'cats' maps to no model class")
    ]
    assert source.description == "pair (all images): 2 images"
    assert source.notes == [] and source.keeps_duplicates is False


def test_the_base_notes_label_map_entries_that_matched_nothing():
    source = Pair(CLASSES, "all", {"kittens": None, "cats": "NORMAL"})
    assert [r.source for r in source.records] == ["x", "y", "z"]
    assert source.notes == ["label map entries that matched no label: kittens"]


def test_a_new_source_works_with_batches_and_the_inventory_as_it_is():
    source = Pair(CLASSES, "all")
    unreadable = []
    batches = list(iter_batches(source, source.records, (4, 4), 8, unreadable))
    explained = [record for batch in batches for record in batch.records]
    assert [r.source for r in explained] == ["x"]
    assert [s.reason for s in unreadable] == ["duplicate of x"]  # keeps_duplicates is False
    inventory = take_inventory(source, CLASSES, explained, unreadable)
    assert (inventory.found, inventory.used, inventory.skipped) == (3, 1, 2)
    assert {row.source for row in inventory.rows} == {"pair"}
