import numpy as np
import pytest

from report.data import open_source
from report.data.synthetic import CLASS_NAMES
from report.errors import UserError


def test_labels_follow_the_model_class_order():
    reordered = ("NORMAL", "other_infection", "COVID-19")
    source = open_source("synthetic:30", reordered, "all")
    original = open_source("synthetic:30", CLASS_NAMES, "all")
    for a, b in zip(source.records, original.records, strict=True):
        assert reordered[a.label].lower() == CLASS_NAMES[b.label].lower()


def test_loaded_images_have_masks_at_the_requested_size():
    source = open_source("synthetic:15", CLASS_NAMES, "test")
    image = source.load(source.records[0], (64, 64))
    assert image.pixels.shape == (64, 64, 3) and image.pixels.dtype == np.uint8
    assert image.lung_mask.shape == (64, 64) and image.lung_mask.any()


def test_missing_classes_are_a_user_error():
    with pytest.raises(UserError, match="synthetic"):
        open_source("synthetic", ("cat", "dog"), "test")


def test_bad_count_is_a_user_error():
    with pytest.raises(UserError, match="synthetic:COUNT"):
        open_source("synthetic:lots", CLASS_NAMES, "test")
