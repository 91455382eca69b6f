"""Cohen et al.: metadata.csv rows filtered to frontal X-rays with a usable finding."""

from collections import Counter

import pytest

from report.data import open_source
from report.data.cohen import frontal_view
from report.data.inventory import take_inventory
from tests.data.builders import CLASSES, cohen_tree

COVID, NORMAL, OTHER = range(3)
ROWS = [
    ("Pneumonia/Viral/COVID-19", "PA", "X-ray", "covid-pa.png"),
    ("Pneumonia/Viral/COVID-19 ", "AP Supine", "X-ray", "covid-supine.jpg"),  # trailing space
    ("COVID-19", "AP semi erect", "X-ray", "covid-old-style.jpeg"),
    ("Pneumonia/Viral/COVID-19", "AP erect", "X-ray", "covid-erect.png"),
    ("Pneumonia/Viral/COVID-19", "L", "X-ray", "covid-lateral.png"),
    ("Pneumonia/Viral/COVID-19", "Axial", "CT", "covid-ct.png"),
    ("Pneumonia/Viral/COVID-19", "PA", "X-ray", "missing-file.png"),
    ("Pneumonia/Bacterial/Streptococcus", "PA", "X-ray", "strep.png"),
    ("Pneumonia/Viral/SARS", "AP", "X-ray", "sars.png"),
    ("No Finding", "PA", "X-ray", "clear.png"),
    ("Tuberculosis", "PA", "X-ray", "tb.png"),
    ("todo", "PA", "X-ray", "todo.png"),
    ("Unknown", "AP", "X-ray", "unknown.png"),
    ("No Finding", "PA", "X-ray", "clear.png"),  # the same file named twice
]


@pytest.fixture
def cohen(tmp_path):
    return cohen_tree(tmp_path, ROWS)


def reasons(source) -> dict[str, str]:
    return {s.source.rsplit("/", 1)[1]: s.reason for s in source.skipped}


def test_default_filters_and_labels(cohen):
    source = open_source(str(cohen), CLASSES, "all")  # auto-detected
    assert source.name == "cohen"
    used = {r.source.rsplit("/", 1)[1]: r.label for r in source.records}
    assert used == {
        "covid-pa.png": COVID, "covid-supine.jpg": COVID, "covid-old-style.jpeg": COVID,
        "covid-erect.png": COVID, "strep.png": OTHER, "sars.png": OTHER, "clear.png": NORMAL,
    }
    assert reasons(source) == {
        "covid-lateral.png": "view L not PA/AP",
        "covid-ct.png": "modality CT",
        "missing-file.png": "missing file",
        "tb.png": "label 'Tuberculosis' maps to no model class",
        "todo.png": "label 'todo' dropped",
        "unknown.png": "label 'Unknown' dropped",
        "clear.png": f"duplicate of {cohen / 'images' / 'clear.png'}",
    }


def test_skips_keep_their_class_where_the_label_is_known(cohen):
    source = open_source(f"cohen:{cohen}", CLASSES, "all")
    inventory = take_inventory(source, CLASSES, source.records, [])
    rows = {r.class_name: (r.found, r.used, r.skipped) for r in inventory.rows}
    assert rows == {
        "COVID-19": (7, 4, 3), "NORMAL": (2, 1, 1), "OTHER_INFECTION": (2, 2, 0),
        "no model class": (3, 0, 3),
    }
    assert inventory.found == len(ROWS)


def test_a_label_map_can_separate_viral_from_bacterial(cohen, tmp_path):
    classes = ("COVID-19", "NORMAL", "VIRAL", "BACTERIAL")
    mapping = {"Pneumonia/Viral": "VIRAL", "Pneumonia/Bacterial": "BACTERIAL", "todo": "NORMAL"}
    source = open_source(f"cohen:{cohen}", classes, "all", label_map=mapping)
    by_file = {r.source.rsplit("/", 1)[1]: classes[r.label] for r in source.records}
    # The user's map is consulted before the model's class names, at every level, so
    # Pneumonia/Viral/COVID-19 follows the user's Pneumonia/Viral entry.
    assert by_file["covid-pa.png"] == "VIRAL"
    assert by_file["sars.png"] == "VIRAL" and by_file["strep.png"] == "BACTERIAL"
    # "todo" is a placeholder, not a label: a map cannot revive it.
    assert reasons(source)["todo.png"] == "label 'todo' dropped"


def test_split_is_over_all_rows_so_filters_do_not_move_images(cohen):
    test = open_source(f"cohen:{cohen}", CLASSES, "test")
    train = open_source(f"cohen:{cohen}", CLASSES, "train")
    found = [r.source for s in (test, train) for r in [*s.records, *s.skipped]]
    assert len(found) == len(ROWS) and Counter(found)[str(cohen / "images" / "clear.png")] == 2
    remapped = open_source(f"cohen:{cohen}", CLASSES, "test", label_map={"Pneumonia": None})
    assert {r.source for r in [*remapped.records, *remapped.skipped]} == \
        {r.source for r in [*test.records, *test.skipped]}


@pytest.mark.parametrize(
    ("view", "expected"),
    [("PA", "PA"), ("AP", "AP"), ("AP Supine", "AP"), ("AP semi erect", "AP"),
     ("AP erect", "AP"), (" L ", "L"), ("APL", "APL")],
)
def test_frontal_views(view, expected):
    assert frontal_view(view) == expected
