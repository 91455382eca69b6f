"""Label maps: the YAML file, the lookup order, and what happens to labels with no class."""

import pytest

from report.data import load_label_map
from report.data.labels import LabelResolver
from report.errors import UserError

CLASSES = ("COVID-19", "NORMAL", "OTHER_INFECTION")


def test_yaml_file_with_nulls(tmp_path):
    path = tmp_path / "map.yaml"
    path.write_text("PNEUMONIA: OTHER_INFECTION\n'No Finding': normal\nEffusion: null\n1: NORMAL\n")
    assert load_label_map(path) == {
        "PNEUMONIA": "OTHER_INFECTION", "No Finding": "normal", "Effusion": None, "1": "NORMAL",
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [("- a\n- b\n", "must be a YAML mapping"), ("a: [1, 2]\n", "must be a class or null"),
     ("a: : :\n", "not valid YAML"), ("", "must be a YAML mapping")],
)
def test_bad_files_are_user_errors(tmp_path, text, message):
    path = tmp_path / "map.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=message):
        load_label_map(path)


def test_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="cannot read label map"):
        load_label_map(tmp_path / "nope.yaml")


def test_targets_must_be_model_classes():
    with pytest.raises(UserError, match="'CAT', which is not one of the model's classes"):
        LabelResolver(CLASSES, {}, {"Pneumonia": "CAT"})


def test_lookup_order_user_then_class_name_then_default():
    defaults = {"Pneumonia": "OTHER_INFECTION", "No Finding": "NORMAL", "Odd": "MISSING"}
    resolve = LabelResolver(CLASSES, defaults, {"pneumonia/fungal": None, "SARS": "COVID-19"})
    assert resolve("Pneumonia/Viral/COVID-19") == 0  # leaf is a class name
    assert resolve("Pneumonia/Bacterial/Strep") == 2  # ancestor, from the defaults
    assert resolve("Pneumonia/Fungal/Pneumocystis") is None  # the user's null wins
    assert resolve("Pneumonia/Viral/SARS") == 0  # the user's leaf entry
    assert resolve(" no finding ") == 1  # case and spaces do not matter
    assert resolve("Tuberculosis") is None
    assert resolve("Odd") is None  # a default pointing outside the model's classes
    assert resolve.unused_entries() == []


def test_unused_user_entries_are_reported():
    resolve = LabelResolver(CLASSES, {}, {"Pnuemonia": "OTHER_INFECTION", "NORMAL": "NORMAL"})
    resolve("NORMAL")
    assert resolve.unused_entries() == ["pnuemonia"]
