"""The tutorial's X_Train.npy / Y_Train.npy: same test images, same order, RGB out."""

import numpy as np
import pytest
from sklearn.model_selection import train_test_split

from report.data import open_source
from report.data.batches import iter_batches
from report.errors import UserError
from tests.data.builders import CLASSES, film

N = 40


@pytest.fixture
def arrays(tmp_path):
    """BGR images as cv2 stored them; one-hot labels in the tutorial's class order."""
    rgb = np.stack([film(i, 24) for i in range(N)])
    rgb[:, 0, 0] = [(255, 0, 0)] * N  # a red corner pixel: RGB->BGR mistakes show
    rgb[:, 1, 1, 0] = np.arange(N)  # and a per-image tag, so every row is distinct
    labels = np.eye(3, dtype=np.float32)[np.arange(N) % 3]
    np.save(tmp_path / "X_Train.npy", rgb[..., ::-1])
    np.save(tmp_path / "Y_Train.npy", labels)
    return tmp_path, rgb, labels


def explained_pixels(source, size=(24, 24)) -> np.ndarray:
    batches = list(iter_batches(source, source.records, size, 7, []))
    return np.concatenate([batch.pixels for batch in batches])


def test_test_split_is_the_tutorials_x_test_in_order_and_rgb(arrays):
    root, rgb, labels = arrays
    x_bgr = np.load(root / "X_Train.npy")
    _, x_test, _, y_test = train_test_split(x_bgr, labels, test_size=0.2, random_state=40)
    source = open_source(f"arrays:{root}", CLASSES, "test")
    np.testing.assert_array_equal(explained_pixels(source), x_test[..., ::-1])
    assert [r.label for r in source.records] == list(y_test.argmax(axis=1))
    assert explained_pixels(source)[0, 0, 0].tolist() == [255, 0, 0]


def test_train_split_and_all(arrays):
    root, rgb, labels = arrays
    x_train, _, _, _ = train_test_split(rgb, labels, test_size=0.2, random_state=40)
    train = open_source(f"arrays:{root}", CLASSES, "train")
    np.testing.assert_array_equal(explained_pixels(train), x_train)
    assert len(open_source(f"arrays:{root}", CLASSES, "all").records) == N


def test_rgb_channel_order_is_a_parameter(arrays):
    root, rgb, _ = arrays
    source = open_source(f"arrays:{root}", CLASSES, "all", channel_order="rgb")
    assert explained_pixels(source)[0, 0, 0].tolist() == [0, 0, 255]  # taken as stored
    with pytest.raises(UserError, match="channel order"):
        open_source(f"arrays:{root}", CLASSES, "all", channel_order="grb")


def test_x_is_memory_mapped_not_read(arrays):
    root, _, _ = arrays
    source = open_source(str(root), CLASSES, "all")  # auto-detected
    assert isinstance(source._x, np.memmap)
    assert source.name == "arrays"


def test_rows_that_are_not_one_hot_are_skipped(arrays):
    root, _, labels = arrays
    labels[[0, 1]] = [[0, 0, 0], [1, 1, 0]]
    np.save(root / "Y_Train.npy", labels)
    source = open_source(f"arrays:{root}", CLASSES, "all")
    assert len(source.records) == N - 2
    assert [(s.image_id, s.reason) for s in source.skipped] == [
        ("arrays-00000", "label row is not one-hot"),
        ("arrays-00001", "label row is not one-hot"),
    ]


def test_label_map_applies_to_array_classes(arrays):
    root, _, _ = arrays
    source = open_source(f"arrays:{root}", ("NORMAL", "SICK"), "all",
                         label_map={"COVID-19": "SICK", "OTHER_INFECTION": None})
    assert {r.source_label for r in source.records} == {"COVID-19", "NORMAL"}
    assert len(source.skipped) == N // 3
    assert source.skipped[0].reason == "label 'OTHER_INFECTION' maps to no model class"


def test_wrong_shapes_are_user_errors(arrays):
    root, _, labels = arrays
    np.save(root / "Y_Train.npy", labels[:-1])
    with pytest.raises(UserError, match="one-hot rows"):
        open_source(f"arrays:{root}", CLASSES, "all")
    np.save(root / "X_Train.npy", np.zeros((N - 1, 4, 4), np.float32))
    with pytest.raises(UserError, match="must be uint8 images"):
        open_source(f"arrays:{root}", CLASSES, "all")
