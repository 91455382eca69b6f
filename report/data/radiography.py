"""COVID-19 Radiography Database (Kaggle, Chowdhury et al. / Rahman et al.):
`COVID/ Normal/ Lung_Opacity/ Viral Pneumonia/`, each with `images/` and `masks/`.

Its lung masks (same file name under `masks/`) become the images' lung masks, which the
shortcut check then uses instead of estimating the lungs."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from report.data.labels import LabelResolver, unused_note
from report.data.listing import (
    FileSource,
    Listing,
    find_child,
    image_files,
    in_split,
    left_out_note,
)
from report.errors import UserError

CLASS_FOLDERS = ("COVID", "Normal", "Lung_Opacity", "Viral Pneumonia")
DEFAULT_LABEL_MAP = {
    "COVID": "COVID-19",
    "Normal": "NORMAL",
    "Viral Pneumonia": "OTHER_INFECTION",
    "Lung_Opacity": "OTHER_INFECTION",
}
NESTED = "COVID-19_Radiography_Dataset"  # the folder inside the Kaggle zip


def radiography_root(path: Path) -> Path | None:
    """`path` or the zip's inner folder, when it holds at least two of the class folders
    with an images/ subfolder (the releases with masks)."""
    for candidate in (path, path / NESTED):
        found = [find_child(candidate, name) for name in CLASS_FOLDERS]
        with_images = [f for f in found if f is not None and (f / "images").is_dir()]
        if len(with_images) >= 2:
            return candidate
    return None


class RadiographySource(FileSource):
    name = "radiography"

    def __init__(
        self,
        root: Path,
        class_names: tuple[str, ...],
        split: str,
        label_map: Mapping[str, str | None] | None = None,
    ):
        super().__init__()
        self.root = radiography_root(Path(root))
        if self.root is None:
            raise UserError(
                f"'{root}' is not the COVID-19 Radiography Database layout: expected "
                f"{', '.join(CLASS_FOLDERS)} folders, each with images/ and masks/"
            )
        resolver = LabelResolver(class_names, DEFAULT_LABEL_MAP, label_map)
        listing = Listing(self.name, resolver)
        folders = sorted(p for p in self.root.iterdir() if (p / "images").is_dir())
        # Every folder with images/ is a class; unknown names go through the label map.
        files = [(path, folder) for folder in folders for path in self._images(folder)]
        without_mask = 0
        for path, folder in in_split(files, split):
            mask = folder / "masks" / path.name
            without_mask += not mask.is_file()
            listing.add(f"{folder.name}/{path.stem}", str(path), folder.name,
                        mask=str(mask) if mask.is_file() else None)
        self.take(listing)
        self.notes += unused_note(resolver)
        if without_mask:
            self.notes.append(f"{without_mask} image(s) have no lung mask under masks/")
        self.description = self.describe(self.root, split)

    def _images(self, folder: Path) -> list[Path]:
        images, left_out = image_files(folder / "images")
        self.notes += left_out_note(left_out, f"{folder.name}/images/")
        return images
