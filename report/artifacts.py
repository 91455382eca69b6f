"""Run artifacts written as they are made, so memory does not grow with the number of images.

Layout (docs/ARCHITECTURE.md): overlays/<TRUE_CLASS>/<image_id>.png, cams/cams.npz (or shards
cams/part-NNNNN.npz with the same keys), predictions.csv.
"""

from __future__ import annotations

import csv
import hashlib
import io
import posixpath
import re
import unicodedata
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import numpy as np

LAYER_KEY = "_layer"
IMAGE_SIZE_KEY = "_image_size"
UNLABELLED = "unlabelled"
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)

# OWASP CSV injection: a cell starting with one of these is run as a formula by spreadsheet
# programs; such a cell is written with a leading single quote, which they show as text.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "\n")
ESCAPE = "'"

# Safe artifact names: a class name as a folder name and in an MLflow image-chart key.
MAX_ARTIFACT_NAME = 64
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_WINDOWS_DEVICES = frozenset(
    ["CON", "PRN", "AUX", "NUL"] + [f"{port}{n}" for port in ("COM", "LPT") for n in range(10)])
HASH_LENGTH = 8

# MLflow metric keys (mlflow/utils/validation.py): at most 250 characters of letters, digits,
# _ - . space and /, that a path normalisation leaves as they are. Keys made here use no '/'
# (MLflow's file store turns it into a folder, where `a` and `a/b` cannot both live) and no ':'
# (refused on Windows), and only ASCII.
MAX_METRIC_KEY = 250
_VALID_KEY = re.compile(r"[A-Za-z0-9_. -]+")


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
        self._folders = artifact_names(class_names)
        self._probabilities = range(4, 4 + len(class_names))  # numeric cells: not escaped
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
        overlay_dir = self.folder / "overlays" / self._folder(label)
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
        """The one place rows are written, to the file or kept for `write_predictions`: every
        text cell is escaped here, the probabilities (numbers) are left as they are."""
        self._csv.writerow([cell if i in self._probabilities else escape_cell(cell)
                            for i, cell in enumerate(row)])
        if self._csv_file is None:  # keep_rows: the line, exactly as the file would hold it
            kept.append((image_id, self._line.getvalue()))
            self._line.seek(0)
            self._line.truncate()

    def _name(self, label: int | None) -> str:
        return UNLABELLED if label is None else self.class_names[label]

    def _folder(self, label: int | None) -> str:
        return UNLABELLED if label is None else self._folders[self.class_names[label]]

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


# --- cells and names made safe --------------------------------------------------------------


def escape_cell(text: str) -> str:
    """A predictions.csv text cell a spreadsheet will not run: OWASP's leading quote before a
    formula character. A cell that already starts with quotes before one gets one more, so
    `unescape_cell` gives back exactly what was written."""
    return ESCAPE + text if text.lstrip(ESCAPE).startswith(FORMULA_STARTS) else text


def unescape_cell(text: str) -> str:
    """The cell as it was before `escape_cell` (for readers of predictions.csv)."""
    escaped = text.startswith(ESCAPE) and text[1:].lstrip(ESCAPE).startswith(FORMULA_STARTS)
    return text[1:] if escaped else text


def unescape_predictions(table):
    """A pandas DataFrame read from predictions.csv (as strings), its text cells as they were
    before escaping; probabilities are numbers and never escaped."""
    for column in table.columns:
        if not column.startswith("prob_"):
            table[column] = table[column].map(unescape_cell)
    return table


def artifact_name(name: str) -> str:
    """`name` as a folder name and an MLflow image-chart key: itself when it already is one
    (ASCII letters, digits, . _ -; starting with a letter or digit; not a Windows device
    name; at most MAX_ARTIFACT_NAME characters), else a readable ASCII form with a short
    hash of the whole name, so that 'A/B' and 'A_B' stay apart."""
    if _is_safe_name(name) and name.casefold() != UNLABELLED:
        return name
    # No dots: "aux.txt" is a device on Windows whatever follows it.
    readable = re.sub(r"[^A-Za-z0-9_-]+", "_", _ascii(name)).strip("_-")
    readable = readable[:MAX_ARTIFACT_NAME - HASH_LENGTH - 1].rstrip("_-") or "class"
    return f"{readable}-{_digest(name)}"


def artifact_names(class_names: Iterable[str]) -> dict[str, str]:
    """Class name -> its artifact name (`artifact_name`), unique even where file systems fold
    case, and never the folder of unlabelled images."""
    names: dict[str, str] = {}
    taken = {UNLABELLED}
    for position, class_name in enumerate(class_names):
        candidate = artifact_name(class_name)
        if candidate.casefold() in taken:  # only a name made to collide gets here
            candidate = f"{candidate[:MAX_ARTIFACT_NAME - 6]}-{position}"
        taken.add(candidate.casefold())
        names[class_name] = candidate
    return names


def metric_keys(names: Iterable[str]) -> dict[str, str]:
    """Each metric name -> a valid, unique MLflow metric key. A valid key is kept; another
    becomes ASCII with the other characters as '_' (accents dropped), cut to fit, and gets a
    short hash of the name where it would meet another key."""
    names = list(dict.fromkeys(names))
    keys = {name: name for name in names if _is_valid_key(name)}
    taken = {key.casefold() for key in keys.values()}
    for name in names:
        if name in keys:
            continue
        key = _key_characters(name)
        if len(key) > MAX_METRIC_KEY or key.casefold() in taken:
            key = f"{key[:MAX_METRIC_KEY - HASH_LENGTH - 1]}_{_digest(name)}"
        while key.casefold() in taken:  # a name made to collide with a hashed one
            key = f"{key[:MAX_METRIC_KEY - 2]}_x"
        taken.add(key.casefold())
        keys[name] = key
    return {name: keys[name] for name in names}


def _is_safe_name(name: str) -> bool:
    return (len(name) <= MAX_ARTIFACT_NAME and _SAFE_NAME.fullmatch(name) is not None
            and not name.endswith(".") and name.split(".")[0].upper() not in _WINDOWS_DEVICES)


def _is_valid_key(name) -> bool:
    return (isinstance(name, str) and len(name) <= MAX_METRIC_KEY
            and _VALID_KEY.fullmatch(name) is not None and not name.startswith(".")
            and posixpath.normpath(name) == name)


def _key_characters(name: str) -> str:
    key = re.sub(r"[^A-Za-z0-9_. -]", "_", _ascii(str(name)))
    return "_" + key if not key or key.startswith(".") else key


def _ascii(text: str) -> str:
    """Accents dropped (é -> e), other non-ASCII characters left for the caller to replace."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def _digest(name: str) -> str:
    return hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:HASH_LENGTH]


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
