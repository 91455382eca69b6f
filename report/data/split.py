"""The tutorial's train/test split, kept so users of its arrays get the same test images."""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import train_test_split

TEST_SIZE = 0.2
RANDOM_STATE = 40
SPLITS = ("train", "test", "all")


def split_indices(n_items: int, split: str) -> np.ndarray:
    """Indices of `split` among n items, as `train_test_split(X, Y, test_size=0.2,
    random_state=40)` (not stratified) would order them."""
    indices = np.arange(n_items)
    if split == "all":
        return indices
    train, test = train_test_split(indices, test_size=TEST_SIZE, random_state=RANDOM_STATE)
    return {"train": train, "test": test}[split]
