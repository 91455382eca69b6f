"""Kermany et al.: chest_xray/{train,test,val}/{NORMAL,PNEUMONIA}, with the Kaggle zip's junk."""

import shutil
from collections import Counter
from pathlib import Path

import pytest

from report.data import open_source
from report.data.inventory import take_inventory
from report.errors import UserError
from tests.data.builders import CLASSES, kermany_tree

NORMAL, OTHER = CLASSES.index("NORMAL"), CLASSES.index("OTHER_INFECTION")


@pytest.fixture
def kaggle_zip(tmp_path) -> Path:
    """As the Kaggle zip unpacks: a nested copy of the tree, and macOS metadata."""
    kermany_tree(tmp_path)
    shutil.copytree(tmp_path / "chest_xray", tmp_path / "nested")
    (tmp_path / "nested").rename(tmp_path / "chest_xray" / "chest_xray")
    for folder in (tmp_path / "chest_xray" / "train" / "NORMAL", tmp_path / "__MACOSX"):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
        (folder / "._IM-0000-0001.jpeg").write_bytes(b"\0\5\26\7 resource fork")
    return tmp_path


def test_labels_and_counts_per_split(kaggle_zip):
    for split, per_class in (("train", 4), ("test", 2), ("all", 7)):
        source = open_source(f"kermany:{kaggle_zip}", CLASSES, split)
        assert Counter(r.label for r in source.records) == {NORMAL: per_class, OTHER: per_class}


def test_the_nested_copy_is_never_counted_twice(kaggle_zip):
    source = open_source(str(kaggle_zip), CLASSES, "test")  # auto-detected
    assert source.name == "kermany"
    assert all("chest_xray/chest_xray" not in r.source for r in source.records)
    assert len(source.skipped) == 4
    for skip in source.skipped:
        original = skip.source.replace("chest_xray/chest_xray", "chest_xray")
        assert skip.reason == f"duplicate of {original}"
    assert any("2 copies of the Kermany tree" in note for note in source.notes)


def test_macos_metadata_is_left_out_and_noted(kaggle_zip):
    source = open_source(str(kaggle_zip / "chest_xray"), CLASSES, "train")
    assert all("__MACOSX" not in r.source and "/._" not in r.source for r in source.records)
    assert "2 file(s) in train/NORMAL/ are hidden or not .png/.jpg/.jpeg/.dcm and were not read" \
        in source.notes


def test_pathogen_is_in_the_source_label_and_mappable(kaggle_zip):
    source = open_source(f"kermany:{kaggle_zip}", ("NORMAL", "BACTERIAL", "VIRAL"), "train",
                         label_map={"PNEUMONIA/bacteria": "BACTERIAL", "virus": "VIRAL"})
    labels = {Path(r.source).name: r.label for r in source.records}
    assert labels["person0_bacteria_1.jpeg"] == 1 and labels["person1_virus_2.jpeg"] == 2
    assert {r.source_label for r in source.records} == {
        "NORMAL", "PNEUMONIA/bacteria", "PNEUMONIA/virus"
    }


def test_pneumonia_goes_to_a_model_class_of_that_name_first(kaggle_zip):
    source = open_source(f"kermany:{kaggle_zip}", ("NORMAL", "PNEUMONIA"), "test")
    assert Counter(r.label for r in source.records) == {0: 2, 1: 2}


def test_without_a_matching_class_pneumonia_is_skipped_and_counted(kaggle_zip):
    source = open_source(f"kermany:{kaggle_zip}", ("NORMAL", "COVID-19"), "test")
    inventory = take_inventory(source, ("NORMAL", "COVID-19"), source.records, [])
    rows = {(r.class_name, r.found, r.used, r.skipped) for r in inventory.rows}
    assert rows == {("NORMAL", 4, 2, 2), ("no model class", 4, 0, 4)}


def test_not_a_kermany_folder(tmp_path):
    with pytest.raises(UserError, match="not the Kermany layout"):
        open_source(f"kermany:{tmp_path}", CLASSES, "test")
