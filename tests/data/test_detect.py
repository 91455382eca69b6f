"""`--data PATH` finds the layout when exactly one matches; `--data NAME:PATH` says it."""

import pytest

from report.data import detect_layouts, open_source
from report.errors import UserError
from tests.data.builders import (
    CLASSES,
    DETECTABLE_LAYOUTS,
    arrays_tree,
    cohen_tree,
    film,
    write_image,
)


@pytest.mark.parametrize("name", list(DETECTABLE_LAYOUTS))
def test_each_layout_is_detected_and_opened(tmp_path, name):
    root = DETECTABLE_LAYOUTS[name](tmp_path / name)
    assert detect_layouts(root) == [name]
    assert open_source(str(root), CLASSES, "all").name == name
    assert open_source(f"{name}:{root}", CLASSES, "all").name == name


def test_a_folder_per_class_is_the_fallback(tmp_path):
    write_image(tmp_path / "NORMAL" / "a.png", film(1))
    assert detect_layouts(tmp_path) == []
    assert open_source(str(tmp_path), CLASSES, "all").name == "folder"


def test_several_matching_layouts_must_be_named(tmp_path):
    arrays_tree(tmp_path)
    cohen_tree(tmp_path, [("No Finding", "PA", "X-ray", "a.png")])
    with pytest.raises(UserError, match=r"several data layouts \(arrays, cohen\).*--data arrays:"):
        open_source(str(tmp_path), CLASSES, "test")
    assert open_source(f"cohen:{tmp_path}", CLASSES, "all").name == "cohen"


def test_the_x_file_itself_is_accepted(tmp_path):
    arrays_tree(tmp_path)
    assert open_source(str(tmp_path / "X_Train.npy"), CLASSES, "all").name == "arrays"


def test_a_named_layout_on_a_missing_folder(tmp_path):
    with pytest.raises(UserError, match="is not a folder"):
        open_source(f"nih:{tmp_path / 'nope'}", CLASSES, "test")


def test_a_named_layout_that_does_not_match(tmp_path):
    with pytest.raises(UserError, match="not the RSNA layout"):
        open_source(f"rsna:{tmp_path}", CLASSES, "test")
