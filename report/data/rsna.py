"""RSNA Pneumonia Detection Challenge (Kaggle): `stage_2_train_labels.csv` (patientId, x, y,
width, height, Target; one row per box, several per patient) and the DICOM films under
`stage_2_train_images/<patientId>.dcm`. The boxes become the lesion masks."""

from __future__ import annotations

from pathlib import Path

from report.data.containment import DataFolder
from report.data.listing import in_split
from report.data.records import Box
from report.data.source import RootedSource
from report.data.tables import read_records

LABELS_CSV = "stage_2_train_labels.csv"
CLASS_INFO_CSV = "stage_2_detailed_class_info.csv"
IMAGES = "stage_2_train_images"
# The detailed class file splits Target 0 into Normal and "No Lung Opacity / Not Normal"
# (abnormal films without pneumonia-like opacity): those belong to no class of the model.
DEFAULT_LABEL_MAP = {
    "Lung Opacity": "OTHER_INFECTION",
    "Normal": "NORMAL",
    "No Lung Opacity / Not Normal": None,
    "No Lung Opacity": "NORMAL",  # Target 0 when the detailed class file is absent
}
BOX_COLUMNS = ("x", "y", "width", "height")


def is_rsna_folder(path: Path) -> bool:
    return (path / LABELS_CSV).is_file()


class RsnaSource(RootedSource):
    """One record per patient, with that patient's boxes (none for Target 0)."""

    name = "rsna"
    title = "RSNA"
    expected = f"{LABELS_CSV} there"
    default_label_map = DEFAULT_LABEL_MAP
    matches = staticmethod(is_rsna_folder)

    def list_records(self) -> None:
        patients, bad = read_labels(self.root / LABELS_CSV, self.folder)
        classes = self._class_info()
        # One image per patient: the split is over patients sorted by id.
        for patient in in_split(sorted(patients), self.split):
            boxes = tuple(patients[patient])
            label = classes.get(patient) or ("Lung Opacity" if boxes else "No Lung Opacity")
            path = self.root / IMAGES / f"{patient}.dcm"
            if patient in bad:
                self.skip(patient, str(path), self.resolve(label), bad[patient])
            elif self.folder.refusal(path) or not path.is_file():
                self.skip(patient, str(path), self.resolve(label), "missing file")
            else:
                # () says "no lesion here", which Target 0 does say.
                self.add(patient, str(path), label, boxes=boxes)

    def _class_info(self) -> dict[str, str]:
        path = self.root / CLASS_INFO_CSV
        if not path.is_file():
            self.notes.append(
                f"no {CLASS_INFO_CSV}: every Target 0 film counts as NORMAL, including "
                "abnormal films without opacity"
            )
            return {}
        rows = read_records(path, self.folder, "RSNA class file", ("patientId", "class"))
        return {row["patientId"]: row["class"] for row in rows}


def read_labels(path: Path, folder: DataFolder
                ) -> tuple[dict[str, list[Box]], dict[str, str]]:
    """Boxes per patient ([] for Target 0), and the patients whose rows cannot be parsed."""
    patients: dict[str, list[Box]] = {}
    bad: dict[str, str] = {}
    for number, row in enumerate(read_records(path, folder, "RSNA labels"), start=2):
        patient = row.get("patientId", "")
        if not patient:
            continue
        boxes = patients.setdefault(patient, [])
        try:
            if int(float(row.get("Target") or 0)) == 1:
                boxes.append(tuple(float(row.get(c, "")) for c in BOX_COLUMNS))
        except (TypeError, ValueError, OverflowError):
            bad.setdefault(patient, f"unreadable box values on line {number} of {path.name}")
    return patients, bad
