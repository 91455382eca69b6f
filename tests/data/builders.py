"""Tiny data-set trees in each source's exact layout, drawn from the synthetic films."""

from __future__ import annotations

import csv
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from report.data import synthetic

CLASSES = ("COVID-19", "NORMAL", "OTHER_INFECTION")
SIZE = 64


@cache
def film(index: int, size: int = SIZE) -> np.ndarray:
    """A distinct uint8 RGB film per index (read-only: it is shared between tests)."""
    pixels = synthetic.generate(index, size=size).image
    pixels.flags.writeable = False
    return pixels


def write_image(path: Path, pixels: np.ndarray, **save_options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(pixels)).save(path, **save_options)
    return path


def write_dicom(
    path: Path,
    values: np.ndarray,
    bits_stored: int = 12,
    photometric: str = "MONOCHROME2",
    window: tuple[float, float] | None = None,
    transfer_syntax=ExplicitVRLittleEndian,
) -> Path:
    """A minimal DX image: 16 bits allocated, `bits_stored` used, unsigned."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = values.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits_stored, bits_stored - 1
    ds.PixelRepresentation = 0
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = values.astype(np.uint16).tobytes()
    if transfer_syntax != ExplicitVRLittleEndian:
        ds.compress(transfer_syntax, values.astype(np.uint16))
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def dicom_of(index: int, size: int = SIZE) -> np.ndarray:
    """A synthetic film as 12-bit values, for DICOM sources."""
    return film(index, size)[:, :, 0].astype(np.uint16) * 16


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


# ---------------------------------------------------------------------------------- layouts


def kermany_tree(root: Path, per_class: dict[str, int] | None = None) -> Path:
    """`root/chest_xray/{train,test,val}/{NORMAL,PNEUMONIA}` with Kermany's file names."""
    counts = per_class or {"train": 4, "test": 2, "val": 1}
    index = 0
    for split, count in counts.items():
        for n in range(count):
            normal = root / "chest_xray" / split / "NORMAL" / f"IM-{n:04d}-0001.jpeg"
            write_image(normal, film(index), quality=95)
            kind = "bacteria" if n % 2 == 0 else "virus"
            sick = root / "chest_xray" / split / "PNEUMONIA" / f"person{n}_{kind}_{n + 1}.jpeg"
            write_image(sick, film(index + 1), quality=95)
            index += 2
    return root


COHEN_HEADER = ["patientid", "offset", "sex", "finding", "view", "modality", "folder", "filename"]


def cohen_tree(root: Path, rows: list[tuple[str, str, str, str]]) -> Path:
    """metadata.csv and images/ for rows of (finding, view, modality, filename); a filename
    starting with "missing" gets no file."""
    table = []
    for n, (finding, view, modality, filename) in enumerate(rows):
        folder = "images" if modality == "X-ray" else "volumes"
        table.append([n, "", "M", finding, view, modality, folder, filename])
        if not filename.startswith("missing"):
            write_image(root / folder / filename, film(n))
    write_csv(root / "metadata.csv", COHEN_HEADER, table)
    return root


def radiography_tree(root: Path, per_class: int = 2, mask_size: int = 32) -> Path:
    """`COVID/ Normal/ Lung_Opacity/ Viral Pneumonia/`, each with images/ and masks/ (masks
    at a different size than the images, as in the real data set: 256 vs 299)."""
    index = 0
    for folder in ("COVID", "Normal", "Lung_Opacity", "Viral Pneumonia"):
        for n in range(per_class):
            name = f"{folder}-{n + 1}.png"
            write_image(root / folder / "images" / name, film(index))
            mask = synthetic.generate(index, size=mask_size).lung_mask
            write_image(root / folder / "masks" / name, (mask * 255).astype(np.uint8))
            index += 1
    (root / "COVID.metadata.xlsx").write_bytes(b"PK not read")
    return root


RSNA_HEADER = ["patientId", "x", "y", "width", "height", "Target"]


def rsna_tree(root: Path, patients: dict[str, list[tuple]], classes: dict[str, str] | None):
    """stage_2_train_labels.csv (one row per box, an empty box for Target 0), the optional
    detailed class file, and a 12-bit DICOM per patient."""
    rows = []
    for n, (patient, boxes) in enumerate(patients.items()):
        rows += [[patient, *box, 1] for box in boxes] or [[patient, "", "", "", "", 0]]
        if not patient.startswith("missing"):
            write_dicom(root / "stage_2_train_images" / f"{patient}.dcm", dicom_of(n, 128),
                        window=(2048, 4096))
    write_csv(root / "stage_2_train_labels.csv", RSNA_HEADER, rows)
    if classes is not None:
        write_csv(root / "stage_2_detailed_class_info.csv", ["patientId", "class"],
                  list(classes.items()))
    return root


NIH_HEADER = ["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age",
              "Patient Gender", "View Position", "OriginalImage[Width", "Height]",
              "OriginalImagePixelSpacing[x", "y]", ""]


def nih_tree(root: Path, entries: dict[str, str], boxes: list[tuple]) -> Path:
    """Data_Entry_2017.csv, PNGs split over images_001/images and images_002/images as in the
    Kaggle copy, and BBox_List_2017.csv with its literal header."""
    rows = []
    for n, (name, labels) in enumerate(entries.items()):
        rows.append([name, labels, 0, n, 50, "M", "PA", 128, 128, 0.14, 0.14, ""])
        if not name.startswith("missing"):
            folder = root / f"images_00{1 + n % 2}" / "images"
            write_image(folder / name, film(n, 128))
    write_csv(root / "Data_Entry_2017.csv", NIH_HEADER, rows)
    lines = ["Image Index,Finding Label,Bbox [x,y,w,h],,,"]
    lines += [",".join(str(v) for v in (*box, "", "", "")) for box in boxes]
    (root / "BBox_List_2017.csv").write_text("\n".join(lines) + "\n")
    return root


def arrays_tree(root: Path) -> Path:
    """The tutorial's X_Train.npy / Y_Train.npy: five blank rows, one-hot labels."""
    root.mkdir(parents=True, exist_ok=True)
    np.save(root / "X_Train.npy", np.zeros((5, 8, 8, 3), np.uint8))
    np.save(root / "Y_Train.npy", np.eye(3)[[0, 1, 2, 0, 1]])
    return root


# One smallest tree per layout that `--data PATH` can detect, by source name.
DETECTABLE_LAYOUTS = {
    "arrays": arrays_tree,
    "kermany": lambda root: kermany_tree(root, {"test": 1}),
    "cohen": lambda root: cohen_tree(root, [("No Finding", "PA", "X-ray", "a.png")]),
    "radiography": lambda root: radiography_tree(root, per_class=1),
    "rsna": lambda root: rsna_tree(root, {"p": []}, None),
    "nih": lambda root: nih_tree(root, {"00000001_000.png": "No Finding"}, []),
}
