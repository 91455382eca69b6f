"""Sources with ground truth: Radiography lung masks, RSNA and NIH lesion boxes."""

from collections import Counter

import numpy as np
import pytest

from report.data import open_source
from report.data.batches import iter_batches
from report.data.images import boxes_mask
from report.data.inventory import take_inventory
from report.data.synthetic import generate
from tests.data.builders import CLASSES, nih_tree, radiography_tree, rsna_tree

COVID, NORMAL, OTHER = range(3)


def loaded(source, size):
    skipped = []
    images = [img for b in iter_batches(source, source.records, size, 4, skipped)
              for img in b.images]
    return images, skipped


# ------------------------------------------------------------------------------ radiography


def test_radiography_labels_and_lung_masks(tmp_path):
    root = radiography_tree(tmp_path / "COVID-19_Radiography_Dataset")
    source = open_source(str(tmp_path), CLASSES, "all")  # finds the zip's inner folder
    assert source.name == "radiography"
    assert Counter(r.label for r in source.records) == {COVID: 2, NORMAL: 2, OTHER: 4}
    images, _ = loaded(source, (48, 48))
    for record, image in zip(source.records, images, strict=True):
        assert image.lung_mask.shape == (48, 48) and image.lung_mask.dtype == bool
        index = int(record.image_id.rsplit("-", 1)[1]) - 1
        folder = ["COVID", "Normal", "Lung_Opacity", "Viral_Pneumonia"].index(
            record.image_id.split("__")[0])
        # The 32x32 mask, resized with nearest neighbour: same as resizing it directly.
        expected = generate(folder * 2 + index, size=32).lung_mask
        nearest = expected[np.arange(48) * 32 // 48][:, np.arange(48) * 32 // 48]
        assert (image.lung_mask == nearest).mean() > 0.97
    assert root.is_dir()


def test_radiography_image_without_mask_is_still_used(tmp_path):
    radiography_tree(tmp_path)
    (tmp_path / "Normal" / "masks" / "Normal-1.png").unlink()
    (tmp_path / "COVID" / "masks" / "COVID-1.png").write_bytes(b"broken")
    source = open_source(f"radiography:{tmp_path}", CLASSES, "all")
    assert "1 image(s) have no lung mask under masks/" in source.notes
    images, skipped = loaded(source, (32, 32))
    assert not skipped and len(images) == 8
    assert sum(image.lung_mask is None for image in images) == 2
    assert any(note.startswith("lung mask") and "COVID-1.png" in note for note in source.notes)


# ------------------------------------------------------------------------------------- RSNA

RSNA_PATIENTS = {
    "p-opacity": [(256.0, 512.0, 128.0, 256.0), (600.0, 100.0, 64.0, 64.0)],
    "p-normal": [],
    "p-abnormal": [],
    "missing-p": [(0.0, 0.0, 10.0, 10.0)],
}


def test_rsna_boxes_become_lesion_masks_at_the_model_size(tmp_path):
    classes = {"p-opacity": "Lung Opacity", "p-normal": "Normal",
               "p-abnormal": "No Lung Opacity / Not Normal", "missing-p": "Lung Opacity"}
    # The builder writes 128 px films: the boxes, given here for 1024 px, are shrunk to fit,
    # which leaves the expected 64 px masks the same.
    patients = {p: [tuple(v / 8 for v in box) for box in boxes]
                for p, boxes in RSNA_PATIENTS.items()}
    rsna_tree(tmp_path, patients, classes)
    source = open_source(str(tmp_path), CLASSES, "all")
    assert source.name == "rsna"
    assert {r.image_id: r.label for r in source.records} == {"p-opacity": OTHER, "p-normal": NORMAL}
    assert {s.image_id: s.reason for s in source.skipped} == {
        "p-abnormal": "label 'No Lung Opacity / Not Normal' maps to no model class",
        "missing-p": "missing file",
    }
    images, _ = loaded(source, (64, 64))
    by_id = dict(zip((r.image_id for r in source.records), images, strict=True))
    expected = boxes_mask(((256, 512, 128, 256), (600, 100, 64, 64)), (1024, 1024), (64, 64))
    np.testing.assert_array_equal(by_id["p-opacity"].lesion_mask, expected)
    assert by_id["p-opacity"].lesion_mask[32:48, 16:24].all()
    assert by_id["p-opacity"].lesion_mask.sum() == 16 * 8 + 4 * 4
    # Target 0 says "no lesion": an empty mask, not an unknown one.
    assert by_id["p-normal"].lesion_mask is not None and not by_id["p-normal"].lesion_mask.any()


def test_rsna_without_detailed_classes_uses_target(tmp_path):
    rsna_tree(tmp_path, {"a": [(1.0, 2.0, 3.0, 4.0)], "b": []}, None)
    source = open_source(f"rsna:{tmp_path}", CLASSES, "all")
    assert {r.image_id: r.label for r in source.records} == {"a": OTHER, "b": NORMAL}
    assert any("every Target 0 film counts as NORMAL" in note for note in source.notes)


# -------------------------------------------------------------------------------------- NIH

NIH_ENTRIES = {
    "00000001_000.png": "Pneumonia|Infiltration",
    "00000002_000.png": "No Finding",
    "00000003_000.png": "Infiltration",
    "00000004_000.png": "Pneumonia",
    "00000005_000.png": "Effusion|Mass",
    "missing_000.png": "Pneumonia",
}
NIH_BOXES = [
    ("00000001_000.png", "Pneumonia", 32.0, 64.0, 16.0, 32.0),
    ("00000001_000.png", "Infiltrate", 0.0, 0.0, 64.0, 64.0),
    ("00000003_000.png", "Infiltrate", 8.0, 8.0, 8.0, 8.0),
]


@pytest.fixture
def nih(tmp_path):
    return nih_tree(tmp_path, NIH_ENTRIES, NIH_BOXES)


def test_nih_labels_and_skips(nih):
    source = open_source(str(nih), CLASSES, "all")
    assert source.name == "nih"
    assert {r.image_id: r.label for r in source.records} == {
        "00000001_000": OTHER, "00000002_000": NORMAL, "00000004_000": OTHER,
    }
    assert {s.image_id: s.reason for s in source.skipped} == {
        "00000003_000": "label 'Infiltration' maps to no model class",
        "00000005_000": "label 'Effusion|Mass' maps to no model class",
        "missing_000": "missing file",
    }


def test_nih_boxes_of_the_records_class_become_the_lesion_mask(nih):
    source = open_source(f"nih:{nih}", CLASSES, "all")
    images, _ = loaded(source, (32, 32))
    by_id = dict(zip((r.image_id for r in source.records), images, strict=True))
    # 128 px films at 32 px: the Pneumonia box (32, 64, 16, 32) becomes (8, 16, 4, 8); the
    # Infiltrate box is another finding's and is left out.
    expected = np.zeros((32, 32), bool)
    expected[16:24, 8:12] = True
    np.testing.assert_array_equal(by_id["00000001_000"].lesion_mask, expected)
    # No boxes listed is "unknown", not "no lesion".
    assert by_id["00000004_000"].lesion_mask is None


def test_nih_infiltrate_boxes_follow_a_map_of_infiltration(nih):
    # No class is called Infiltrate: the box label must be translated to match the entries.
    classes = ("NORMAL", "INFILTRATES", "PNEUMONIA")
    source = open_source(f"nih:{nih}", classes, "all", label_map={"Infiltration": "INFILTRATES"})
    record = next(r for r in source.records if r.image_id == "00000003_000")
    assert record.label == 1 and record.boxes == ((8.0, 8.0, 8.0, 8.0),)
    several = {s.image_id: s.reason for s in source.skipped}["00000001_000"]
    assert several == ("labels 'Pneumonia|Infiltration' map to several model classes "
                       "(INFILTRATES, PNEUMONIA)")


def test_nih_official_split_lists_are_used(nih):
    (nih / "test_list.txt").write_text("00000002_000.png\n00000004_000.png\n")
    (nih / "train_val_list.txt").write_text("00000001_000.png\n")
    test = open_source(f"nih:{nih}", CLASSES, "test")
    assert [r.image_id for r in test.records] == ["00000002_000", "00000004_000"]
    assert "split from NIH's test_list.txt" in test.notes
    inventory = take_inventory(test, CLASSES, test.records, [])
    assert inventory.found == inventory.used == 2
