import numpy as np
import pytest
from sklearn.model_selection import train_test_split

from report.data.split import split_indices


@pytest.mark.parametrize("n_items", [10, 75 * 5, 377])
def test_split_matches_the_tutorials_call(n_items):
    rng = np.random.default_rng(n_items)
    x = rng.integers(0, 255, size=(n_items, 4, 4, 3), dtype=np.uint8)
    y = np.eye(3)[rng.integers(0, 3, n_items)]
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, random_state=40)
    np.testing.assert_array_equal(x[split_indices(n_items, "test")], x_test)
    np.testing.assert_array_equal(x[split_indices(n_items, "train")], x_train)
    np.testing.assert_array_equal(y[split_indices(n_items, "test")], y_test)


def test_splits_partition_the_items():
    train, test = split_indices(50, "train"), split_indices(50, "test")
    assert len(test) == 10
    assert sorted(np.concatenate([train, test])) == list(range(50))
    assert list(split_indices(50, "all")) == list(range(50))
