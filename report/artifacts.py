"""Run artifacts written as they are made, so memory does not grow with the number of images.

Layout (docs/ARCHITECTURE.md): overlays/<TRUE_CLASS>/<image_id>.png, cams/cams.npz (or shards
cams/part-NNNNN.npz with the same keys), predictions.csv.
"""

from __future__ import annotations

import csv
import io
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import numpy as np

from report.data.folder import safe_id

LAYER_KEY = "_layer"
IMAGE_SIZE_KEY = "_image_size"
UNLABELLED = "unlabelled"
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


class ArtifactWriter:
    """Streams overlays, raw maps and prediction rows into a staging folder."""

    def __init__(self, folder: Path, class_names: tuple[str, ...], layer: str, image_size,
                 overlay_suffix: str = ".png", cams_file: str = "cams.npz",
                 keep_rows: bool = False):
        """`cams_file`: the map archive's name under cams/ (a shard `part-NNNNN.npz` when a
        Spark task writes one part). `keep_rows`: prediction rows are kept as CSV lines in
        `rows` and `skipped_rows` (image id, line) instead of written to predictions.csv,
        for a caller that orders the rows of several parts (`write_predictions`)."""
        self.folder = Path(folder)
        self.class_names = class_names
        self.overlay_suffix = overlay_suffix
        (self.folder / "cams").mkdir(parents=True, exist_ok=True)
        # np.savez needs every array at once; writing .npy members into the zip one by one
        # keeps memory flat and still loads with np.load.
        self._cams = zipfile.ZipFile(self.folder / "cams" / cams_file, "w", zipfile.ZIP_DEFLATED)
        self._add_array(LAYER_KEY, np.array(layer))
        self._add_array(IMAGE_SIZE_KEY, np.array(image_size, dtype=np.int32))
        self.rows: list[tuple[str, str]] = []
        self.skipped_rows: list[tuple[str, str]] = []
        if keep_rows:
            self._csv_file = None
            self._line = io.StringIO()
            self._csv = csv.writer(self._line)
        else:
            # Closed in close(): the writer outlives this call by design.
            self._csv_file = open(  # noqa: SIM115
                self.folder / "predictions.csv", "w", newline="", encoding="utf-8"
            )
            self._csv = csv.writer(self._csv_file)
            self._csv.writerow(predictions_header(class_names))

    def add_overlay(self, image_id: str, label: int | None, encoded: bytes) -> None:
        overlay_dir = self.folder / "overlays" / safe_id(self._name(label))
        overlay_dir.mkdir(parents=True, exist_ok=True)
        (overlay_dir / f"{image_id}{self.overlay_suffix}").write_bytes(encoded)

    def add_map(self, key: str, raw_map: np.ndarray) -> None:
        self._add_array(key, raw_map.astype(np.float32))

    def add_prediction(self, image_id, source, label, probabilities, predicted, raw_map,
                       flags: list[str] = ()):
        true_name = self._name(label)
        self.add_map(image_id, raw_map)
        correct = "" if label is None else str(label == predicted).lower()
        flags = "; ".join((["misclassified"] if correct == "false" else []) + list(flags))
        self._write_row(self.rows, image_id, [image_id, source, true_name,
                                               self.class_names[predicted]]
                        + [f"{p:.6f}" for p in probabilities] + [correct, flags])

    def add_skipped(self, image_id, source, label, reason: str) -> None:
        self._write_row(self.skipped_rows, image_id, [image_id, source, self._name(label), ""]
                        + [""] * len(self.class_names) + ["", f"unreadable: {reason}"])

    def close(self) -> None:
        self._cams.close()
        if self._csv_file is not None:
            self._csv_file.close()

    def __enter__(self) -> ArtifactWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _write_row(self, kept: list[tuple[str, str]], image_id: str, row: list[str]) -> None:
        self._csv.writerow(row)
        if self._csv_file is None:  # keep_rows: the line, exactly as the file would hold it
            kept.append((image_id, self._line.getvalue()))
            self._line.seek(0)
            self._line.truncate()

    def _name(self, label: int | None) -> str:
        return UNLABELLED if label is None else self.class_names[label]

    def _add_array(self, key: str, array: np.ndarray) -> None:
        buffer = io.BytesIO()
        np.lib.format.write_array(buffer, array, allow_pickle=False)
        # A fixed timestamp: the same maps give the same bytes, whenever they were written.
        member = zipfile.ZipInfo(f"{key}.npy", date_time=ZIP_EPOCH)
        member.compress_type = zipfile.ZIP_DEFLATED
        self._cams.writestr(member, buffer.getvalue())


def predictions_header(class_names) -> list[str]:
    return (["image_id", "source", "true_label", "predicted_label"]
            + [f"prob_{name}" for name in class_names] + ["correct", "flags"])


def write_predictions(path: Path, class_names, lines: Iterable[str]) -> Path:
    """predictions.csv from CSV lines kept by writers with `keep_rows` (explained images in
    record order, then skipped ones), as one writer would have written it."""
    with open(path, "w", newline="", encoding="utf-8") as file:
        csv.writer(file).writerow(predictions_header(class_names))
        file.writelines(lines)
    return path


class CamMaps(Mapping):
    """Read-only mapping image id -> raw map (float32, feature-map resolution) over
    `cams/cams.npz` or its shards `cams/part-NNNNN.npz`; a map is read when asked for."""

    def __init__(self, folder: Path):
        files = sorted(Path(folder).glob("part-*.npz")) or [Path(folder) / "cams.npz"]
        if not files[0].is_file():
            raise FileNotFoundError(f"no cams.npz or part-NNNNN.npz in {folder}")
        self._archives = [np.load(path, allow_pickle=False) for path in files]
        self._where = {key: archive for archive in self._archives for key in archive.files
                       if not key.startswith("_")}
        self.layer = str(self._archives[0][LAYER_KEY])

    def __getitem__(self, image_id: str) -> np.ndarray:
        return self._where[image_id][image_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)

    def close(self) -> None:
        for archive in self._archives:
            archive.close()

    def __enter__(self) -> CamMaps:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
