from pathlib import Path

import cv2
import numpy as np
import pytest

from report.data import open_source
from report.data.batches import iter_batches
from report.errors import UserError

CLASSES = ("COVID-19", "NORMAL", "OTHER_INFECTION")


def write_png(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def gray(value: int, size: int = 20) -> np.ndarray:
    return np.full((size, size, 3), value, np.uint8)


@pytest.fixture
def class_tree(tmp_path) -> Path:
    for i in range(5):
        write_png(tmp_path / "covid-19" / f"c{i}.png", gray(10 + i))
        write_png(tmp_path / "Normal" / f"n{i}.jpg", gray(100 + i))
    (tmp_path / "Normal" / ".DS_Store").write_bytes(b"junk")
    (tmp_path / "Normal" / "notes.txt").write_text("not an image")
    return tmp_path


def test_class_folders_match_case_insensitively(class_tree):
    source = open_source(str(class_tree), CLASSES, "all")
    labels = sorted(record.label for record in source.records)
    assert labels == [0] * 5 + [1] * 5
    assert source.notes == [
        "2 file(s) in Normal/ are hidden or not .png/.jpg/.jpeg/.dcm and were not read"
    ]


def test_split_is_applied_to_the_sorted_listing(class_tree):
    test = open_source(str(class_tree), CLASSES, "test").records
    train = open_source(str(class_tree), CLASSES, "train").records
    assert len(test) == 2 and len(train) == 8
    assert not {r.image_id for r in test} & {r.image_id for r in train}


def test_a_test_subfolder_is_used_when_present(tmp_path):
    write_png(tmp_path / "train" / "NORMAL" / "a.png", gray(1))
    write_png(tmp_path / "test" / "NORMAL" / "b.png", gray(2))
    write_png(tmp_path / "test" / "COVID-19" / "c.png", gray(3))
    records = open_source(str(tmp_path), CLASSES, "test").records
    assert sorted(Path(r.source).name for r in records) == ["b.png", "c.png"]


def test_missing_folder_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        open_source(str(tmp_path / "nope"), CLASSES, "test")


def test_folder_without_matching_class_folders_names_what_it_found(tmp_path):
    (tmp_path / "cats").mkdir()
    with pytest.raises(UserError, match=r"no class folder .* found: cats"):
        open_source(str(tmp_path), CLASSES, "test")


def test_colour_order_is_rgb(tmp_path):
    red = np.zeros((8, 8, 3), np.uint8)
    red[..., 0] = 255
    write_png(tmp_path / "NORMAL" / "red.png", red)
    source = open_source(str(tmp_path), CLASSES, "all")
    pixels = source.load(source.records[0], (8, 8)).pixels
    assert pixels[0, 0].tolist() == [255, 0, 0]


def test_undecodable_images_are_skipped_with_a_reason(class_tree):
    (class_tree / "Normal" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (class_tree / "Normal" / "empty.jpg").write_bytes(b"")
    source = open_source(str(class_tree), CLASSES, "all")
    skipped = []
    batches = list(iter_batches(source, source.records, (16, 16), 4, skipped))
    explained = sum(len(batch.records) for batch in batches)
    assert explained == 10
    assert {Path(s.source).name: s.reason for s in skipped} == {
        "broken.png": "not a decodable PNG/JPEG image",
        "empty.jpg": "empty file",
    }
    assert explained + len(skipped) == len(source.records)
    assert all(batch.pixels.shape[1:] == (16, 16, 3) for batch in batches)


def test_image_ids_are_unique_and_file_safe(tmp_path):
    write_png(tmp_path / "NORMAL" / "a b.png", gray(1))
    write_png(tmp_path / "NORMAL" / "a b.jpg", gray(2))
    write_png(tmp_path / "NORMAL" / "sub" / "..x y.png", gray(3))
    write_png(tmp_path / "NORMAL" / "sub" / "x y.png", gray(3))
    ids = [r.image_id for r in open_source(str(tmp_path), CLASSES, "all").records]
    assert len(set(ids)) == 3  # the hidden file is not read (and is noted, see above)
    assert all("/" not in i and ".." not in i and " " not in i for i in ids)


def test_a_label_map_renames_folders_and_unmatched_folders_are_counted(tmp_path):
    write_png(tmp_path / "Pneumonia" / "p.png", gray(1))
    write_png(tmp_path / "NORMAL" / "n.png", gray(2))
    write_png(tmp_path / "cats" / "c.png", gray(3))
    source = open_source(str(tmp_path), CLASSES, "all", label_map={"pneumonia": "OTHER_INFECTION"})
    assert sorted((r.source_label, r.label) for r in source.records) == [
        ("NORMAL", 1), ("Pneumonia", 2)
    ]
    assert [(Path(s.source).name, s.reason) for s in source.skipped] == [
        ("c.png", "label 'cats' maps to no model class")
    ]
