"""Cohen et al. COVID-19 image data collection (github.com/ieee8023/covid-chestxray-dataset):
`metadata.csv` plus the files it names under `images/` (CT volumes under `volumes/`)."""

from __future__ import annotations

from pathlib import Path

from report.data.containment import DataFolder
from report.data.listing import in_split
from report.data.source import RootedSource
from report.data.tables import read_header, read_records
from report.i18n import _

METADATA = "metadata.csv"
REQUIRED_COLUMNS = ("finding", "filename")
# Findings are hierarchical (Pneumonia/Viral/COVID-19); the label map looks up the leaf
# before the ancestors, so COVID-19 wins over Pneumonia. See labels.py.
DEFAULT_LABEL_MAP = {"COVID-19": "COVID-19", "No Finding": "NORMAL", "Pneumonia": "OTHER_INFECTION"}
# Placeholders for "not yet known": never a label, whatever a label map says.
DROPPED_FINDINGS = ("todo", "unknown")
VIEWS = ("PA", "AP")  # upper case: compared with frontal_view()
MODALITIES = ("X-ray",)


def is_cohen_folder(path: Path) -> bool:
    metadata = path / METADATA
    if not metadata.is_file():
        return False
    if DataFolder(path).refusal(metadata):
        return True  # not read to detect; the listing says why it is not read at all
    return all(column in read_header(metadata) for column in REQUIRED_COLUMNS)


class CohenSource(RootedSource):
    """One record per metadata row that is a frontal X-ray with a usable finding.

    The split is taken over all rows sorted by file, before any filtering, so a different
    label map or view filter never moves an image from train to test."""

    name = "cohen"
    title = "Cohen"
    expected = (
        f"{METADATA} with columns {', '.join(REQUIRED_COLUMNS)} next to images/ "
        "(see docs/DATA.md)"
    )
    default_label_map = DEFAULT_LABEL_MAP
    matches = staticmethod(is_cohen_folder)

    def list_records(self) -> None:
        listed: set[Path] = set()
        for row in in_split(read_rows(self.root / METADATA, self.folder), self.split):
            self._add(row, listed)

    def describe(self) -> str:
        return super().describe(_("%(views)s views, %(modalities)s") % {
            "views": "/".join(VIEWS), "modalities": ", ".join(MODALITIES)})

    def _add(self, row: dict[str, str], listed: set[Path]) -> None:
        path = self.root / (row.get("folder") or "images") / row["filename"]
        key = Path(row["filename"]).stem or "row"
        finding = row["finding"]
        dropped = finding.lower() in DROPPED_FINDINGS
        label = None if dropped else self.resolve(finding)
        reason = self._reason(row, path, listed)
        if reason:
            self.skip(key, str(path), label, reason)
        else:
            self.add(key, str(path), finding)

    def _reason(self, row: dict[str, str], path: Path, listed: set[Path]) -> str:
        """Why a row is not used, or "" when it is; the first reason that applies."""
        finding, modality, view = row["finding"], row.get("modality", ""), row.get("view", "")
        if finding.lower() in DROPPED_FINDINGS or not finding:
            return f"label '{finding}' dropped"
        if modality.lower() not in {m.lower() for m in MODALITIES}:
            return f"modality {modality or 'missing'}"
        if frontal_view(view) not in VIEWS:
            return f"view {view or 'missing'} not {'/'.join(VIEWS)}"
        if not row["filename"]:
            return "row names no file"
        if path in listed:
            return f"duplicate of {path}"  # the same file named by an earlier row
        listed.add(path)
        refused = self.folder.refusal(path)  # before probing a path out of the folder
        if refused:
            return refused
        if not path.is_file():
            return "missing file"
        return ""


def frontal_view(view: str) -> str:
    """AP Supine, AP semi erect and AP erect are all AP projections."""
    view = view.strip().upper()
    return "AP" if view.split(" ")[0] == "AP" else view


def read_rows(path: Path, folder: DataFolder) -> list[dict[str, str]]:
    """Rows with stripped, lower-case keys and stripped values (the file has values with
    trailing spaces), sorted by file so the order does not depend on how the CSV was last
    edited."""
    rows = read_records(path, folder, "Cohen metadata", REQUIRED_COLUMNS, lower=True)
    return sorted(rows, key=lambda row: (row.get("folder", ""), row["filename"]))
