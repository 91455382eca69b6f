"""Arrays in memory, `report.audit(model, (images, labels), ...)`: every shape and label form,
RGB at the model's size, and a one-line UserError for every mistake."""

import hashlib
import re

import numpy as np
import pytest

from report.data import MemorySource, open_source, take_inventory
from report.data.batches import iter_batches
from report.errors import UserError
from tests.data.builders import CLASSES, film

N = 6
COVID, NORMAL, OTHER = range(3)


def gray_images(n: int = N, size: int = 16) -> np.ndarray:
    """(N, H, W) uint8, each image a different level so rows can be told apart."""
    return np.stack([np.full((size, size), 10 * (i + 1), np.uint8) for i in range(n)])


def opened(images, labels=None, split="all", label_map=None) -> MemorySource:
    return open_source((images, labels), CLASSES, split, label_map)


def pixels(source, index=0, size=(8, 8)) -> np.ndarray:
    return source.load(source.records[index], size).pixels


def user_error(images, labels=None, label_map=None) -> str:
    with pytest.raises(UserError) as error:
        opened(images, labels, label_map=label_map)
    message = str(error.value)
    assert "\n" not in message
    return message


# ------------------------------------------------------------------------------------ images


@pytest.mark.parametrize("shape", [(N, 16, 16), (N, 16, 16, 1)])
def test_greyscale_becomes_rgb_at_the_model_size(shape):
    source = opened(gray_images().reshape(shape))
    loaded = pixels(source, 2, (8, 12))
    assert loaded.shape == (8, 12, 3) and loaded.dtype == np.uint8
    assert (loaded == 30).all()


def test_colour_arrays_are_taken_as_rgb():
    images = np.stack([film(i, 24) for i in range(3)])
    images[:, 0, 0] = (255, 0, 0)
    source = opened(images)
    np.testing.assert_array_equal(pixels(source, 1, (24, 24)), images[1])
    assert pixels(source, 0, (24, 24))[0, 0].tolist() == [255, 0, 0]


def test_a_list_of_images_of_different_sizes_and_kinds():
    images = [np.full((10, 20), 50, np.uint8), np.full((40, 30, 3), 60, np.uint8),
              np.full((7, 7, 1), 70, np.uint8)]
    source = opened(images, [0, 1, 2])
    assert [pixels(source, i, (16, 16)).shape for i in range(3)] == [(16, 16, 3)] * 3
    assert [int(pixels(source, i).mean()) for i in range(3)] == [50, 60, 70]


def test_floats_and_wide_integers_in_0_to_255_are_raw_pixels():
    levels = gray_images()
    as_float = opened(levels.astype(np.float32))
    as_int64 = opened(levels.astype(np.int64))
    for source in (as_float, as_int64):
        np.testing.assert_array_equal(pixels(source, 3), pixels(opened(levels), 3))


def test_sixteen_bit_data_is_scaled_like_sixteen_bit_files():
    sixteen = gray_images().astype(np.uint16) * 257  # 8-bit levels on the 16-bit scale
    np.testing.assert_array_equal(pixels(opened(sixteen), 4), pixels(opened(gray_images()), 4))


def test_ids_sources_and_digests_name_the_rows():
    images = gray_images()
    source = opened(images)
    assert [r.image_id for r in source.records[:2]] == ["image-00000", "image-00001"]
    assert [r.source for r in source.records[:2]] == ["memory[0]", "memory[1]"]
    assert {r.dataset for r in source.records} == {"memory"}
    digest = source.load(source.records[4], (8, 8)).digest
    assert digest == hashlib.sha256(images[4].tobytes()).hexdigest()


def test_pixels_are_read_when_loaded_not_copied_up_front():
    images = gray_images()
    source = opened(images)
    images[1] = 200  # the caller's array, changed after opening
    assert (pixels(source, 1) == 200).all()


# ------------------------------------------------------------------------------------ labels


def test_without_labels_every_record_is_unlabelled():
    source = opened(gray_images(), None)
    assert len(source.records) == N and {r.label for r in source.records} == {None}
    assert not source.skipped


@pytest.mark.parametrize(
    "labels",
    [[0, 1, 2, 0, 1, 2], np.array([0, 1, 2, 0, 1, 2], np.uint8),
     np.array([0.0, 1.0, 2.0, 0.0, 1.0, 2.0]), np.eye(3)[[0, 1, 2, 0, 1, 2]],
     ["covid-19", "NORMAL", "Other_Infection", "COVID-19", "normal", "OTHER_INFECTION"]],
    ids=["ints", "uint8", "whole-floats", "one-hot", "names"],
)
def test_every_label_form_gives_the_same_classes(labels):
    source = opened(gray_images(), labels)
    assert [r.label for r in source.records] == [COVID, NORMAL, OTHER] * 2


def test_indices_keep_the_class_name_as_the_source_label():
    source = opened(gray_images(), [2, 0, 1, 1, 1, 1])
    assert [r.source_label for r in source.records[:2]] == ["OTHER_INFECTION", "COVID-19"]


def test_names_go_through_the_label_map_and_unmapped_names_are_skipped():
    labels = ["pneumonia", "NORMAL", "effusion", "pneumonia", "effusion", "COVID-19"]
    source = opened(gray_images(), labels,
                    label_map={"pneumonia": "OTHER_INFECTION", "effusion": None})
    assert [(r.image_id, r.label) for r in source.records] == [
        ("image-00000", OTHER), ("image-00001", NORMAL), ("image-00003", OTHER),
        ("image-00005", COVID),
    ]
    assert [(s.image_id, s.reason) for s in source.skipped] == [
        ("image-00002", "label 'effusion' maps to no model class"),
        ("image-00004", "label 'effusion' maps to no model class"),
    ]
    inventory = take_inventory(source, CLASSES, source.records, [])
    assert (inventory.found, inventory.used, inventory.skipped) == (N, 4, 2)


# ------------------------------------------------------------------------------------- split


@pytest.mark.parametrize("split", ["train", "test"])
def test_the_split_is_not_applied_and_a_note_says_so(split):
    source = opened(gray_images(), [0] * N, split=split)
    assert len(source.records) == N
    assert source.records == opened(gray_images(), [0] * N, split="all").records
    assert any(f"all {N} images used" in note and f"split ({split})" in note
               for note in source.notes)
    assert "no split" in source.description


def test_repeated_rows_are_all_explained():
    images = np.stack([film(1, 16)] * 4)
    source = opened(images, [1] * 4)
    skipped = []
    batches = list(iter_batches(source, source.records, (16, 16), 3, skipped))
    assert sum(len(b.records) for b in batches) == 4 and not skipped


# ------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    ("images", "expected"),
    [(gray_images().astype(np.float32) / 255, r'already scaled to 0\.\.1; pass raw 0-255 '
      r'pixels, e\.g\. \(images \* 255\)\.astype\("uint8"\)'),
     (np.full((2, 4, 4), np.nan), "images.0. has NaN or infinite values"),
     (np.full((2, 4, 4), np.inf), "images.0. has NaN or infinite values"),
     (gray_images().astype(np.float64) * 30, "outside 0..255"),
     (np.zeros((2, 4, 4, 4), np.uint8), r"images has shape \(2, 4, 4, 4\); pass an array"),
     (np.zeros((4, 4), np.uint8), r"images has shape \(4, 4\)"),
     ([np.zeros((4, 4), np.uint8), np.zeros((4, 4, 2), np.uint8)],
      r"images.1. has shape \(4, 4, 2\); each image must be \(H, W\)"),
     ([], "images is empty"),
     (np.zeros((2, 4, 4), bool), "images.0. holds bool values; pass numbers"),
     (np.array([["a", "b"], ["c", "d"]] * 2).reshape(2, 2, 2), "holds <U1 values")],
    ids=["scaled", "nan", "inf", "over-255", "four-channels", "one-image", "list-shape",
         "empty", "bool", "strings"],
)
def test_image_mistakes_are_one_line_user_errors(images, expected):
    message = user_error(images, None)
    assert re.search(expected, message), message


@pytest.mark.parametrize(
    ("labels", "expected"),
    [([0, 1], "labels has 2 entries for 6 images; pass one label per image"),
     (1, "labels has a single value for 6 images"),
     ([0, 1, 2, 3, 0, 1], r"labels\[3\] is 3, not a class index 0..2; pass indices"),
     ([0, -1, 0, 0, 0, 0], r"labels\[1\] is -1, not a class index"),
     (["NORMAL"] * 5 + ["cat"], r"labels\[5\] is 'cat', which is not one of class_names "
      r"\(COVID-19, NORMAL, OTHER_INFECTION\); use those names, or pass a label_map"),
     (np.eye(2)[[0, 1, 0, 1, 0, 1]], "labels has 2 one-hot columns for 3 classes"),
     (np.eye(3)[[0, 1, 2, 0, 1, 2]] * 2, r"labels\[0\] is not a one-hot row"),
     ([0, "NORMAL", 1, 1, 1, 1], "labels mixes class names and other values"),
     ([0.5] * N, "labels holds float64 values of shape"),
     ([True] * N, "labels holds bool values")],
    ids=["length", "scalar", "index-high", "index-negative", "unknown-name", "one-hot-width",
         "not-one-hot", "mixed", "fractions", "bools"],
)
def test_label_mistakes_are_one_line_user_errors_naming_labels(labels, expected):
    message = user_error(gray_images(), labels)
    assert message.startswith("labels")
    assert re.search(expected, message), message


def test_an_unknown_name_is_an_error_even_with_a_label_map():
    message = user_error(gray_images(), ["NORMAL"] * 5 + ["cat"], label_map={"dog": None})
    assert "'cat'" in message


def test_an_all_black_float_image_is_not_mistaken_for_scaled_pixels():
    images = gray_images().astype(np.float32)
    images[0] = 0.0
    assert (pixels(opened(images), 0) == 0).all()
