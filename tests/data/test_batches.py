"""Streaming records into batches: bad files and duplicates are skipped, never fatal."""

import numpy as np

from report.data import open_source
from report.data.batches import iter_batches
from tests.data.builders import CLASSES, film, write_image


def test_same_bytes_are_read_once_and_the_copy_names_the_first(tmp_path):
    first = write_image(tmp_path / "NORMAL" / "a.png", film(1))
    (tmp_path / "COVID-19").mkdir()
    (tmp_path / "COVID-19" / "b.png").write_bytes(first.read_bytes())
    source = open_source(str(tmp_path), CLASSES, "all")
    skipped = []
    batches = list(iter_batches(source, source.records, (16, 16), 8, skipped))
    assert [r.source for b in batches for r in b.records] == [str(tmp_path / "COVID-19" / "b.png")]
    assert [(s.source, s.reason) for s in skipped] == [
        (str(first), f"duplicate of {tmp_path / 'COVID-19' / 'b.png'}")
    ]


def test_the_tutorial_arrays_keep_duplicate_rows(tmp_path):
    np.save(tmp_path / "X_Train.npy", np.zeros((10, 8, 8, 3), np.uint8))
    np.save(tmp_path / "Y_Train.npy", np.eye(3)[np.arange(10) % 3])
    source = open_source(str(tmp_path), CLASSES, "all")
    skipped = []
    explained = sum(len(b.records) for b in iter_batches(source, source.records, (8, 8), 3,
                                                         skipped))
    assert explained == 10 and not skipped


def test_skips_carry_the_data_set_name(tmp_path):
    (tmp_path / "NORMAL").mkdir()
    (tmp_path / "NORMAL" / "bad.png").write_bytes(b"nope")
    source = open_source(str(tmp_path), CLASSES, "all")
    skipped = []
    list(iter_batches(source, source.records, (8, 8), 2, skipped))
    assert skipped[0].dataset == "folder"
