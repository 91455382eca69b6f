"""Fuzz-style hostile inputs: data folders, index files, names and sizes generated from seeds,
each checked for the two things that must always hold.

1. A clean outcome: the data source opens and every file is either used or skipped with a
   reason (found = used + skipped), or the whole run stops with one UserError line. Never an
   exception of another type.
2. Nothing outside the data folder is read. A Python audit hook (PEP 578) records every file
   opened while a case runs; a file under the case's `outside/` folder in that list fails it,
   whatever code path opened it.

The cases are drawn by seeded generators from a catalogue of hazards, so each run covers
the same mixes and a failure names its seed. The model-side hazards (class names and
metadata) have their own checks in test_hostile_models.py; here they are drawn at random.
"""

from __future__ import annotations

import csv
import os
import random
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from report.data import open_source
from report.data.records import UnreadableImage
from report.errors import UserError
from tests.data.builders import CLASSES, film, write_dicom, write_image

SEEDS = range(12)
SPARSE_BYTES = 3 * 2**30  # a "multi-GB" file that costs no disk: a hole, never written


# --- the outside-read guard ----------------------------------------------------------------

_WATCHED: list[tuple[str, list[str]]] = []


def _record_opens(event: str, args: tuple) -> None:
    if event != "open" or not _WATCHED or isinstance(args[0], int):
        return
    path = os.path.realpath(os.fsdecode(args[0]))
    for root, opened in _WATCHED:
        if path == root or path.startswith(root + os.sep):
            opened.append(path)


sys.addaudithook(_record_opens)  # cannot be removed; it costs nothing while nothing is watched


@contextmanager
def reads_under(folder: Path) -> Iterator[list[str]]:
    """The files under `folder` that the block opens, by any code path."""
    opened: list[str] = []
    entry = (os.path.realpath(folder), opened)
    _WATCHED.append(entry)
    try:
        yield opened
    finally:
        _WATCHED.remove(entry)


def test_the_guard_sees_reads_through_any_library(tmp_path):
    """The check below can fail: a PIL read and a numpy read through a symlink are seen."""
    outside = tmp_path / "outside"
    image = write_image(outside / "secret.png", film(0))
    np.save(outside / "secret.npy", np.zeros(3))
    (tmp_path / "link.png").symlink_to(image)
    with reads_under(outside) as opened:
        Image.open(tmp_path / "link.png").load()
        np.load(outside / "secret.npy")
    assert len(opened) == 2


# --- the catalogue of hazards --------------------------------------------------------------


class Case:
    """One generated data folder beside an `outside/` folder it must never read from.

    `expected_entries` counts the image entries a listing must account for: every file and
    symlink with an image suffix that the hazards put inside the data folder.
    """

    def __init__(self, root: Path, rng: random.Random):
        self.root, self.rng = root, rng
        self.data = root / "data"
        self.outside = root / "outside"
        self.secret = write_image(self.outside / "secret.png", film(99))
        self.secret_dir = self.outside / "secret_dir"
        write_image(self.secret_dir / "inner.png", film(98))
        self.huge = self.outside / "huge.png"
        with self.huge.open("wb") as handle:
            handle.truncate(SPARSE_BYTES)
        self.expected_entries = 0
        self.applied: list[str] = []

    def file(self, class_name: str, name: str) -> Path:
        folder = self.data / class_name
        folder.mkdir(parents=True, exist_ok=True)
        self.expected_entries += 1
        return folder / name

    def name(self, suffix: str = ".png") -> str:
        return f"film-{self.rng.randrange(10**6)}{suffix}"


def good_film(case: Case, class_name: str) -> None:
    write_image(case.file(class_name, case.name()), film(case.rng.randrange(50)))


def symlink_to_outside_file(case: Case, class_name: str) -> None:
    case.file(class_name, case.name()).symlink_to(case.secret)


def symlink_to_huge_file(case: Case, class_name: str) -> None:
    case.file(class_name, case.name()).symlink_to(case.huge)


def symlink_to_outside_folder(case: Case, class_name: str) -> None:
    folder = case.data / class_name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"linked-{case.rng.randrange(10**6)}").symlink_to(case.secret_dir)
    case.expected_entries += 1  # inner.png, seen through the link


def symlink_inside(case: Case, class_name: str) -> None:
    """A symlink that stays inside the folder is an ordinary file."""
    target = write_image(case.file(class_name, case.name()), film(case.rng.randrange(50)))
    case.file(class_name, case.name()).symlink_to(target)


def empty_file(case: Case, class_name: str) -> None:
    case.file(class_name, case.name()).touch()


def truncated_png(case: Case, class_name: str) -> None:
    path = write_image(case.file(class_name, case.name()), film(case.rng.randrange(50)))
    path.write_bytes(path.read_bytes()[: case.rng.randrange(20, 200)])


def text_as_png(case: Case, class_name: str) -> None:
    case.file(class_name, case.name()).write_text("=cmd|' /C calc'!A0\n")


def non_utf8_name(case: Case, class_name: str) -> None:
    name = b"film-\xff\xfe-" + str(case.rng.randrange(10**6)).encode() + b".png"
    path = os.fsdecode(os.fsencode(case.file(class_name, "x").parent) + b"/" + name)
    write_image(Path(path), film(case.rng.randrange(50)))


def very_long_name(case: Case, class_name: str) -> None:
    stem = "x" * case.rng.randrange(200, 250)
    write_image(case.file(class_name, f"{stem}.png"), film(case.rng.randrange(50)))


def odd_characters_name(case: Case, class_name: str) -> None:
    """Spreadsheet formulas, Markdown, HTML, a newline and a tab in one file name."""
    stem = case.rng.choice(["=HYPERLINK(\"x\")", "+1+2", "-2", "@SUM(A1)", "<b>x</b>",
                            "a\nb", "tab\there", "# title", "[x](y)"])
    write_image(case.file(class_name, f"{stem}-{case.rng.randrange(999)}.png"),
                film(case.rng.randrange(50)))


def sixteen_bit_png(case: Case, class_name: str) -> None:
    values = (film(case.rng.randrange(50))[..., 0].astype(np.uint16) * 257)
    Image.fromarray(values).save(case.file(class_name, case.name()))


def multiframe_dicom(case: Case, class_name: str) -> None:
    path = write_dicom(case.file(class_name, case.name(".dcm")),
                       np.zeros((32, 32), np.uint16))
    import pydicom

    dataset = pydicom.dcmread(path)
    frames = case.rng.choice([3, 100_000])  # the second is a header that lies
    dataset.NumberOfFrames = frames
    dataset.PixelData = np.zeros((min(frames, 3), 32, 32), np.uint16).tobytes()
    dataset.save_as(path)


FOLDER_HAZARDS: list[Callable[[Case, str], None]] = [
    good_film, symlink_to_outside_file, symlink_to_huge_file, symlink_to_outside_folder,
    symlink_inside, empty_file, truncated_png, text_as_png, non_utf8_name, very_long_name,
    odd_characters_name, sixteen_bit_png, multiframe_dicom,
]


def folder_case(root: Path, seed: int) -> Case:
    """A folder per class with a random mix of hazards, and at least one good film."""
    case = Case(root, random.Random(seed))
    for class_name in CLASSES:
        good_film(case, class_name)
        for hazard in case.rng.choices(FOLDER_HAZARDS, k=case.rng.randrange(3, 9)):
            hazard(case, class_name)
            case.applied.append(hazard.__name__)
    return case


# --- index files naming paths out of the folder ----------------------------------------------

ESCAPES = ("../outside/secret.png", "../../outside/secret.png", "{secret}", "./../outside/x.png",
           "images/../../outside/secret.png", "sub/../../../outside/secret.png")


def escape(case: Case) -> str:
    return case.rng.choice(ESCAPES).format(secret=case.secret)


def cohen_case(root: Path, seed: int) -> Case:
    case = Case(root, random.Random(seed))
    rows = []
    for index in range(case.rng.randrange(4, 10)):
        if case.rng.random() < 0.5:
            rows.append({"filename": escape(case), "finding": "Pneumonia/Viral/COVID-19"})
        else:
            name = f"cohen-{index}.png"
            write_image(case.data / "images" / name, film(index))
            rows.append({"filename": name, "finding": "No Finding"})
    if case.rng.random() < 0.5:
        rows.append({"filename": "secret.png", "finding": "COVID-19", "folder": "../outside"})
    case.data.mkdir(parents=True, exist_ok=True)
    with (case.data / "metadata.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, ["filename", "finding", "modality", "view", "folder"])
        writer.writeheader()
        for row in rows:
            writer.writerow({"modality": "X-ray", "view": "PA", "folder": "images", **row})
    case.expected_entries = len(rows)
    return case


def rsna_case(root: Path, seed: int) -> Case:
    case = Case(root, random.Random(seed))
    images = case.data / "stage_2_train_images"
    patients = []
    for index in range(case.rng.randrange(3, 8)):
        patient = f"patient-{index}"
        write_dicom(images / f"{patient}.dcm", film(index)[..., 0].astype(np.uint16) * 16)
        patients.append(patient)
    write_dicom(case.outside / "secret.dcm", film(97)[..., 0].astype(np.uint16))
    patients += ["../../outside/secret", str(case.outside / "secret")][: case.rng.randrange(1, 3)]
    with (case.data / "stage_2_train_labels.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["patientId", "x", "y", "width", "height", "Target"])
        for patient in patients:
            writer.writerow([patient, "", "", "", "", 0])
    case.expected_entries = len(patients)
    return case


LAYOUTS = {"folder": folder_case, "cohen": cohen_case, "rsna": rsna_case}


# --- the checks --------------------------------------------------------------------------------


def open_case(case: Case, layout: str, follow_symlinks: bool = False):
    return open_source(f"{layout}:{case.data}", CLASSES, "all",
                       follow_symlinks=follow_symlinks)


def load_every_record(source) -> tuple[int, int]:
    """(decoded, unreadable): each record either decodes or says why not."""
    decoded = unreadable = 0
    for record in source.records:
        try:
            source.load(record, (32, 32))
            decoded += 1
        except UnreadableImage as error:
            assert str(error), f"{record.source}: an unreadable image needs a reason"
            unreadable += 1
    return decoded, unreadable


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("seed", SEEDS)
def test_a_hostile_data_folder_is_read_cleanly_and_only_inside(tmp_path, layout, seed):
    case = LAYOUTS[layout](tmp_path, seed)
    with reads_under(case.outside) as opened:
        try:
            source = open_case(case, layout)
        except UserError as error:
            assert "\n" not in str(error)
            source = None
        if source is not None:
            decoded, unreadable = load_every_record(source)
    assert opened == [], f"seed {seed} ({case.applied}) read outside the data folder"
    if source is None:
        return
    assert len(source.records) + len(source.skipped) == case.expected_entries, (
        f"seed {seed}: {case.applied}: every file is used or skipped with a reason")
    assert all(skip.reason for skip in source.skipped)
    assert decoded + unreadable == len(source.records)
    data = os.path.realpath(case.data)
    for record in source.records:
        assert os.path.realpath(record.source).startswith(data + os.sep), record.source
        record.source.encode("utf-8")  # written to CSVs, params and the report as it is


def test_follow_symlinks_reads_what_the_links_point_at_but_never_an_escaping_index_path(
        tmp_path):
    case = folder_case(tmp_path / "folder", 0)
    for hazard in (symlink_to_outside_file, symlink_to_outside_folder, symlink_to_huge_file):
        hazard(case, CLASSES[0])
    refused = open_case(case, "folder")
    with reads_under(case.outside) as opened:
        followed = open_case(case, "folder", follow_symlinks=True)
        load_every_record(followed)
    assert len(followed.records) > len(refused.records)
    assert any("symlink" in skip.reason for skip in refused.skipped)
    # Followed, the links are read; the multi-GB file still is not, not even its first byte.
    assert opened and os.path.realpath(case.huge) not in opened
    assert any("limit" in skip.reason for skip in followed.skipped)
    cohen = cohen_case(tmp_path / "cohen", 1)
    with reads_under(cohen.outside) as opened:
        source = open_case(cohen, "cohen", follow_symlinks=True)
        load_every_record(source)
    assert opened == []


# --- names and metadata drawn at random ----------------------------------------------------

GOOD_PIECES = ("COVID-19", "normal", "a/b", "a b", "=", "+", "-", "@", "ü", "名", "..", "<b>",
               "CON", "unlabelled", "x" * 40, "'", ":", "*")
BAD_PIECES = ("\n", "\t", "\x00", "\u202e", "x" * 120, "", " ")


def random_names(rng: random.Random) -> list:
    """Mostly valid but awkward names; now and then a bad piece, a duplicate or a non-name."""
    def name() -> str:
        pieces = GOOD_PIECES + BAD_PIECES if rng.random() < 0.3 else GOOD_PIECES
        return "".join(rng.choices(pieces, k=rng.randrange(1, 4)))

    names = [name() for _ in range(3)]  # tiny_classifier has three outputs
    if rng.random() < 0.15:
        names[rng.randrange(3)] = rng.choice([names[0].upper(), 3, None, ["a"]])
    return names


def maybe(rng: random.Random, good, bad: list):
    """`good` three times in four, else one of `bad` (which may be the field left out)."""
    return good if rng.random() < 0.75 else rng.choice(bad)


def random_preprocessing(rng: random.Random):
    if rng.random() < 0.1:
        return rng.choice(["rgb", [16, 16], 3, None])
    fields = {
        "image_size": maybe(rng, [16, 16], [[0, 0], [-3, 16], [1.5, 16], ["16", "16"],
                                            [True, 16], [10**6, 16], [16, 16, 16], "16x16",
                                            [32, 32], [float("nan"), 16], None]),
        "color": maybe(rng, rng.choice(["rgb", "RGB"]), ["grayscale", "cmyk", 3, None]),
        "scale": maybe(rng, 1 / 255, [0, -1, "x", float("inf"), True, None, 1]),
    }
    return {key: value for key, value in fields.items() if value is not None}


@pytest.fixture(scope="module")
def tiny():
    from tests.conftest import tiny_classifier

    return tiny_classifier(16, "tiny_fuzz")


@pytest.mark.parametrize("seed", range(40))
def test_random_metadata_is_accepted_whole_or_refused_in_one_line(tiny, seed):
    """Whatever a registered model's metadata holds: a usable ModelMetadata whose class names
    give distinct, safe artifact names and metric keys, or one UserError line."""
    from report.artifacts import artifact_names, metric_keys
    from report.model import ModelMetadata

    rng = random.Random(seed)
    metadata = {"class_names": random_names(rng), "preprocessing": random_preprocessing(rng)}
    try:
        read = ModelMetadata.from_mlflow(metadata, tiny)
    except UserError as error:
        assert "\n" not in str(error) and len(str(error)) < 600, repr(str(error))
        return
    names = artifact_names(read.class_names).values()
    assert len({name.lower() for name in names}) == len(read.class_names)
    assert all(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", name) for name in names)
    keys = metric_keys(f"precision.{name}" for name in read.class_names).values()
    assert len(set(keys)) == len(read.class_names)
    assert all(re.fullmatch(r"[\w.\- ]{1,250}", key, re.ASCII) for key in keys)


# --- one run over a folder mixing every hazard -------------------------------------------------

# Class folders and model classes with names a spreadsheet, a file system or MLflow would trip
# on; every one is a valid class name.
ODD_CLASSES = ("=SUM(A1)", "Pneumonía viral", "-minus")


def mixed_case(root: Path) -> Case:
    """Every folder hazard in every class, plus hostile class folder names."""
    case = Case(root, random.Random(1))
    for class_name in ODD_CLASSES:
        good_film(case, class_name)
        for hazard in FOLDER_HAZARDS:
            hazard(case, class_name)
    return case


def test_a_run_over_a_folder_mixing_every_hazard_finishes_and_accounts_for_every_file(
        tmp_path, tiny, tracking_store):
    import report

    case = mixed_case(tmp_path)
    with reads_under(case.outside) as opened:
        audit = report.audit(tiny, str(case.data), class_names=list(ODD_CLASSES), split="all",
                             quality="fast", output_dir=tmp_path / "out")
        html, pdf = audit.to_html(tmp_path / "report.html"), audit.to_pdf(tmp_path / "r.pdf")
        run_id = audit.log_to_mlflow()
    assert opened == []
    assert html.is_file() and pdf.is_file() and run_id
    found, used, skipped = (audit.metrics[f"data.{k}"] for k in ("found", "used", "skipped"))
    assert found == case.expected_entries == used + skipped
    assert used >= 2 * len(ODD_CLASSES) and skipped >= 5 * len(ODD_CLASSES)
    with (audit.artifacts_dir / "predictions.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    # Every explained image has its row; files refused while reading say why in theirs.
    explained = [row for row in rows if not row["flags"].startswith("unreadable")]
    assert len(explained) == used and len(rows) > used
    for row in rows:
        for column in ("image_id", "source", "true_label", "predicted_label", "flags"):
            assert not row[column].startswith(("=", "+", "-", "@")), (column, row[column])
    assert set(audit.predictions["true_label"]) <= set(ODD_CLASSES)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_data_folder_named_by_a_relative_path_is_contained_alike(tmp_path, monkeypatch,
                                                                     layout):
    """`--data data` from the folder above it: paths built from a relative root are checked
    as `open` would resolve them, with and without --follow-symlinks."""
    case = LAYOUTS[layout](tmp_path, 5)
    monkeypatch.chdir(tmp_path)
    for follow in (False, True):
        with reads_under(case.outside) as opened:
            source = open_source(f"{layout}:data", CLASSES, "all", follow_symlinks=follow)
            load_every_record(source)
        if follow:  # links may be followed; a path spelled out of the folder never is
            opened = [path for path in opened if "secret_dir" not in path
                      and not path.endswith(("secret.png", "huge.png"))] if layout == "folder" \
                else opened
        assert opened == [], (follow, opened)


def test_an_index_path_out_of_a_relative_data_folder_is_refused_even_when_following_links(
        tmp_path, monkeypatch):
    from report.data.containment import DataFolder

    (tmp_path / "d" / "x").mkdir(parents=True)
    write_image(tmp_path / "secret.png", film(1))
    monkeypatch.chdir(tmp_path)
    for follow in (False, True):
        folder = DataFolder(Path("d"), follow_symlinks=follow)
        for escape_path in ("d/../secret.png", "d/x/../../secret.png", "d/../d2/x.png"):
            assert folder.refusal(escape_path).startswith("outside the data folder"), (
                follow, escape_path)
        assert folder.refusal("d/x/film.png") in (None, "missing file")
