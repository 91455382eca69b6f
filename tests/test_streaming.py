"""The pipelined streaming pass: the same artifacts whatever the number of workers, the same
maps and predictions as a plain serial pass, bounded queues, one decode per image."""

from __future__ import annotations

import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

import report
from report.cam.engine import make_engine
from report.data.batches import ordered_map
from report.data.memory import MemorySource
from report.streaming import preprocess
from tests.conftest import synthetic_films, tiny_classifier

CLASSES = ["COVID-19", "NORMAL", "OTHER_INFECTION"]
SIZE = 48


@pytest.fixture(scope="module")
def model() -> keras.Model:
    return tiny_classifier(SIZE, "streamed", convs=2, seed=1)


@pytest.fixture(scope="module")
def films():
    return synthetic_films(23, SIZE)  # 23: a ragged last batch


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("normalize", ["image", "global"])
def test_one_and_four_workers_write_the_same_bytes(model, films, tmp_path, normalize):
    written = {}
    for workers in (1, 4):
        audit = report.audit(model, films, class_names=CLASSES, quality="off",
                             normalize=normalize, batch_size=5, workers=workers,
                             output_dir=tmp_path / str(workers))
        written[workers] = files_of(audit.artifacts_dir)
        grids = [[item.overlay for item in grid.items] for grid in audit.context.grids]
        written[workers]["grids"] = repr(grids).encode()
    assert len([name for name in written[1] if name.startswith("overlays/")]) == 23
    assert written[1].keys() == written[4].keys()
    different = [name for name in written[1] if written[1][name] != written[4][name]]
    assert different == []


def test_maps_and_predictions_equal_a_plain_serial_pass(model, films):
    images, _ = films
    audit = report.audit(model, films, class_names=CLASSES, quality="off", batch_size=4,
                         workers=3, output_dir=None)
    engine = make_engine("gradcam", model, "auto", "logit", (SIZE, SIZE, 3))
    from report.model import ModelMetadata

    metadata = ModelMetadata(tuple(CLASSES), (SIZE, SIZE))
    reference = engine.explain(preprocess(images, metadata))
    table = audit.predictions
    for row, image_id in enumerate(table["image_id"]):
        np.testing.assert_allclose(audit.maps[image_id], reference.raw_maps[row], atol=1e-6)
    predicted = [CLASSES[c] for c in reference.probabilities.argmax(axis=1)]
    assert list(table["predicted_label"]) == predicted
    probabilities = table[[f"prob_{c}" for c in CLASSES]].to_numpy()
    np.testing.assert_allclose(probabilities, reference.probabilities, atol=1e-6)


def test_jpeg_overlays_have_their_own_suffix_and_show_the_same_picture(model, films, tmp_path):
    pictures = {}
    for overlay_format in ("png", "jpeg"):
        audit = report.audit(model, films, class_names=CLASSES, quality="off",
                             overlay_format=overlay_format, output_dir=tmp_path / overlay_format)
        overlays = sorted((audit.artifacts_dir / "overlays").rglob("*.*"))
        assert {p.suffix for p in overlays} == {".png" if overlay_format == "png" else ".jpg"}
        pictures[overlay_format] = np.asarray(Image.open(overlays[0]).convert("RGB"), float)
        assert {item.media_type for grid in audit.context.grids for item in grid.items} == {
            "image/png" if overlay_format == "png" else "image/jpeg"}
    assert pictures["png"].shape == pictures["jpeg"].shape
    assert np.abs(pictures["png"] - pictures["jpeg"]).mean() < 4.0  # JPEG q90: close, lossy
    html = io.StringIO()
    html.write(audit.to_html(tmp_path / "r.html").read_text())
    assert "data:image/jpeg;base64," in html.getvalue()


def test_global_normalisation_decodes_each_image_once(model, films, monkeypatch):
    loads = []
    original = MemorySource.load

    def counted(self, record, image_size):
        loads.append(record.image_id)
        return original(self, record, image_size)

    monkeypatch.setattr(MemorySource, "load", counted)
    report.audit(model, films, class_names=CLASSES, quality="off", normalize="global",
                 output_dir=None)
    assert len(loads) == len(set(loads)) == 23


def test_ordered_map_keeps_order_and_never_runs_ahead_of_its_window():
    in_flight, most = 0, 0
    lock = threading.Lock()

    def slow_square(n: int) -> int:
        nonlocal in_flight, most
        with lock:
            in_flight += 1
            most = max(most, in_flight)
        time.sleep(0.002 * (n % 3))  # finish out of order
        with lock:
            in_flight -= 1
        return n * n

    consumed = 0

    def items():
        nonlocal consumed
        for n in range(60):
            consumed += 1
            yield n

    with ThreadPoolExecutor(8) as pool:
        results = []
        for value in ordered_map(slow_square, items(), pool, window=5):
            results.append(value)
            assert consumed - len(results) <= 5  # submitted but not yet handed out
    assert results == [n * n for n in range(60)]
    assert most <= 5
