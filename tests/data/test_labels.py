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


@pytest.mark.parametrize(
    "content", [b"PNEUMONIA: OTHER_INFECTION\n\xc4ngel: NORMAL\n", b"\xff\xfeP\x00:\x00",
                "Lungenentzündung: NORMAL\n".encode("latin-1")])
def test_a_label_map_that_is_not_utf8_is_a_one_line_user_error(tmp_path, content):
    path = tmp_path / "map.yaml"
    path.write_bytes(content)
    with pytest.raises(UserError, match="is not UTF-8 text") as error:
        load_label_map(path)
    assert "\n" not in str(error.value)


def test_a_label_map_that_is_not_a_file_or_too_large_is_refused_unread(tmp_path,
                                                                      monkeypatch):
    from report.data import containment

    with pytest.raises(UserError, match="not a regular file"):
        load_label_map("/dev/null")  # a device: /dev/zero would never end
    path = tmp_path / "map.yaml"
    path.write_text("PNEUMONIA: OTHER_INFECTION\n")
    monkeypatch.setattr(containment, "MAX_FILE_BYTES", 10)
    with pytest.raises(UserError, match="file over the 10 bytes limit"):
        load_label_map(path)


@pytest.mark.parametrize(
    "user", [{"Pneumonia": "NORMAL", "pneumonia": "COVID-19"},
             {"A / B": "NORMAL", "a/b": None}, {" x": None, "X ": "NORMAL"}])
def test_entries_that_collide_after_normalising_are_a_user_error(user):
    with pytest.raises(UserError, match="same label"):
        LabelResolver(CLASSES, {}, user)


def test_entries_that_collide_but_agree_are_fine():
    resolve = LabelResolver(CLASSES, {}, {"Pneumonia": "NORMAL", "PNEUMONIA ": "normal"})
    assert resolve("pneumonia") == 1


def test_unused_entries_reach_the_notes_of_every_file_source(tmp_path):
    """The note is on the source the report shows, for a folder, a detected layout and
    the tutorial recipe, whose listings apply the label map for it."""
    from report.data import open_source
    from tests.data.builders import cohen_tree, film, kermany_tree, write_image

    write_image(tmp_path / "folder" / "NORMAL" / "a.png", film(1))
    cohen_tree(tmp_path / "cohen", [("Pneumonia/Viral/COVID-19", "PA", "X-ray", "c.png")])
    kermany_tree(tmp_path / "kermany", {"train": 1})
    label_map = {"Typo": "NORMAL", "pneumonia": "OTHER_INFECTION"}
    specs = [str(tmp_path / "folder"), f"cohen:{tmp_path / 'cohen'}",
             f"kermany:{tmp_path / 'kermany'}",
             f"tutorial:{tmp_path / 'cohen'},{tmp_path / 'kermany'}"]
    for spec in specs:
        notes = open_source(spec, CLASSES, "all", label_map).notes
        assert any("matched no label" in n and "typo" in n for n in notes), spec


@pytest.mark.parametrize("spec", ["synthetic:10", "synthetic-confounded:10"])
def test_a_label_map_given_with_synthetic_data_is_noted(spec):
    from report.data import open_source

    notes = open_source(spec, CLASSES, "all", {"PNEUMONIA": "OTHER_INFECTION"}).notes
    assert any("label map not used" in note for note in notes)
    assert not any("label map" in n for n in open_source(spec, CLASSES, "all").notes)
