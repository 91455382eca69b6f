"""COVID-19 Radiography Database (Kaggle, Chowdhury et al. / Rahman et al.):
`COVID/ Normal/ Lung_Opacity/ Viral Pneumonia/`, each with `images/` and `masks/`.

Its lung masks (same file name under `masks/`) become the images' lung masks, which the
shortcut check then uses instead of estimating the lungs."""

from __future__ import annotations

from pathlib import Path

from report.data.listing import find_child, in_split
from report.data.source import RootedSource

CLASS_FOLDERS = ("COVID", "Normal", "Lung_Opacity", "Viral Pneumonia")
DEFAULT_LABEL_MAP = {
    "COVID": "COVID-19",
    "Normal": "NORMAL",
    "Viral Pneumonia": "OTHER_INFECTION",
    "Lung_Opacity": "OTHER_INFECTION",
}
NESTED = "COVID-19_Radiography_Dataset"  # the folder inside the Kaggle zip


def is_radiography_folder(path: Path) -> bool:
    return radiography_root(path) is not None


def radiography_root(path: Path) -> Path | None:
    """`path` or the zip's inner folder, when it holds at least two of the class folders
    with an images/ subfolder (the releases with masks)."""
    for candidate in (path, path / NESTED):
        found = [find_child(candidate, name) for name in CLASS_FOLDERS]
        with_images = [f for f in found if f is not None and (f / "images").is_dir()]
        if len(with_images) >= 2:
            return candidate
    return None


class RadiographySource(RootedSource):
    """Every folder with images/ is a class; its masks/ give the images' lung masks."""

    name = "radiography"
    title = "COVID-19 Radiography Database"
    expected = f"{', '.join(CLASS_FOLDERS)} folders, each with images/ and masks/"
    default_label_map = DEFAULT_LABEL_MAP
    matches = staticmethod(is_radiography_folder)

    @classmethod
    def find_root(cls, path: Path) -> Path:
        return radiography_root(super().find_root(path))  # maybe the zip's inner folder

    def list_records(self) -> None:
        folders = sorted(p for p in self.root.iterdir() if (p / "images").is_dir())
        # Every folder with images/ is a class; unknown names go through the label map.
        files = [
            (path, folder)
            for folder in folders
            for path in self.images_in(folder / "images", f"{folder.name}/images/")
        ]
        without_mask = 0
        for path, folder in in_split(files, self.split):
            mask = folder / "masks" / path.name
            without_mask += not mask.is_file()
            self.add(f"{folder.name}/{path.stem}", str(path), folder.name,
                     mask=str(mask) if mask.is_file() else None)
        if without_mask:
            self.notes.append(f"{without_mask} image(s) have no lung mask under masks/")
