"""Hostile and careless data folders, for every file-based source: each gives a clean outcome
(records, or skips with a reason, found = used + skipped), and nothing outside the data
folder is ever opened. An audit hook records every file Python opens while a test reads."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from report.data import containment, open_source
from report.data.batches import iter_batches
from report.data.ids import safe_id
from report.data.inventory import take_inventory
from report.errors import UserError
from tests.data.builders import (
    CLASSES,
    cohen_tree,
    dicom_of,
    film,
    kermany_tree,
    nih_tree,
    radiography_tree,
    rsna_tree,
    write_dicom,
    write_image,
)

OPENED: list[str] | None = None  # files opened while `watching_opens` is on


def _audit(event: str, args: tuple) -> None:
    if OPENED is not None and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        OPENED.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)  # audit hooks cannot be removed; this one only records when asked


def read_everything(spec, follow_symlinks: bool = False, outside: Path | None = None):
    """Open `spec`, read every record (decode and digest), and check that no file under
    `outside` was opened. Returns the source and what iter_batches skipped."""
    global OPENED
    OPENED = []
    try:
        options = {"follow_symlinks": True} if follow_symlinks else {}
        source = open_source(spec, CLASSES, "all", **options)
        unreadable: list = []
        for _ in iter_batches(source, source.records, (16, 16), 4, unreadable):
            pass
        if not source.keeps_duplicates:
            for record in source.records:
                # Only which files it opens matters here, not whether it can.
                with contextlib.suppress(Exception):
                    source.digest(record)
        opened = list(OPENED)
    finally:
        OPENED = None
    unread = {item.source for item in unreadable}
    explained = [record for record in source.records if record.source not in unread]
    inventory = take_inventory(source, CLASSES, explained, unreadable)
    assert inventory.found == len(source.records) + len(source.skipped)
    if outside is not None and not follow_symlinks:
        real_outside = os.path.realpath(outside)
        leaked = [p for p in opened if os.path.realpath(p).startswith(real_outside + os.sep)]
        assert not leaked, f"opened outside the data folder: {leaked}"
    return source, unreadable


def reasons(source, unreadable=()) -> list[str]:
    return [item.reason for item in [*source.skipped, *unreadable]]


@pytest.fixture
def outside(tmp_path) -> Path:
    """A folder next to the data folder, with a sentinel image and DICOM the tests must never
    read, and a subfolder of images to link a whole directory to."""
    folder = tmp_path / "outside"
    write_image(folder / "secret.png", film(30))
    write_image(folder / "secret.jpeg", film(31), quality=90)
    write_dicom(folder / "secret.dcm", dicom_of(32))
    for n in range(2):
        write_image(folder / "dir" / f"s{n}.png", film(33 + n))
        write_image(folder / "dir" / "images" / f"s{n}.png", film(33 + n))
    return folder


def link(path: Path, target: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(target)
    return path


# ------------------------------------------------------------ hostile trees, one per layout
# Each builds a small valid tree with hostile entries, and returns (spec, symlinks): the
# number of entries refused as symlinks out, which only --follow-symlinks reads (a linked
# folder is one entry, its files are not listed).


def hostile_folder(root: Path, outside: Path):
    write_image(root / "NORMAL" / "ok.png", film(1))
    link(root / "NORMAL" / "leak.png", outside / "secret.png")
    link(root / "NORMAL" / "sub", outside / "dir")  # a subfolder link: one entry, unlisted
    link(root / "COVID-19", outside / "dir")  # a whole class folder: one entry too
    write_image(root / "OTHER_INFECTION" / "inner.png", film(2))
    link(root / "OTHER_INFECTION" / "same.png", root / "NORMAL" / "ok.png")  # stays inside
    return str(root), 3


def hostile_kermany(root: Path, outside: Path):
    kermany_tree(root, {"test": 1})
    link(root / "chest_xray" / "test" / "NORMAL" / "leak.jpeg", outside / "secret.jpeg")
    return f"kermany:{root}", 1


def hostile_cohen(root: Path, outside: Path):
    cohen_tree(root, [("No Finding", "PA", "X-ray", "a.png")])
    link(root / "images" / "leak.png", outside / "secret.png")
    rows = [
        [1, "", "M", "No Finding", "PA", "X-ray", "images", "../../outside/secret.png"],
        [2, "", "M", "No Finding", "PA", "X-ray", "images", str(outside / "secret.png")],
        [3, "", "M", "No Finding", "PA", "X-ray", str(outside), "secret.png"],
        [4, "", "M", "No Finding", "PA", "X-ray", "../outside", "secret.png"],
        [5, "", "M", "No Finding", "PA", "X-ray", "images", "leak.png"],
    ]
    with (root / "metadata.csv").open("a", newline="") as handle:
        import csv
        csv.writer(handle).writerows(rows)
    return f"cohen:{root}", 1


def hostile_radiography(root: Path, outside: Path):
    radiography_tree(root, per_class=1)
    link(root / "COVID" / "images" / "leak.png", outside / "secret.png")
    import shutil

    shutil.rmtree(root / "Normal" / "masks")
    link(root / "Normal" / "masks", outside / "dir")  # masks read from outside: dropped
    write_image(outside / "dir" / "Normal-1.png", film(40))
    return f"radiography:{root}", 1


def hostile_rsna(root: Path, outside: Path):
    rsna_tree(root, {"p1": [], "../../outside/secret": [], str(outside / "secret"): []}, None)
    link(root / "stage_2_train_images" / "p2.dcm", outside / "secret.dcm")
    with (root / "stage_2_train_labels.csv").open("a") as handle:
        handle.write("p2,,,,,0\n")
    return f"rsna:{root}", 1


def hostile_nih(root: Path, outside: Path):
    nih_tree(root, {"00000001_000.png": "No Finding"}, [])
    link(root / "images_003", outside / "dir")  # images*/ folder out: noted, not listed
    link(root / "images_001" / "images" / "leak.png", outside / "secret.png")
    with (root / "Data_Entry_2017.csv").open("a") as handle:
        handle.write("s0.png,No Finding\n../../outside/secret.png,No Finding\n"
                     "leak.png,No Finding\n")
    return f"nih:{root}", 1


def hostile_tutorial(root: Path, outside: Path):
    cohen_spec, _ = hostile_cohen(root / "cohen", outside)
    kermany_spec, _ = hostile_kermany(root / "kermany", outside)
    # The tutorial reads Kermany's train split.
    link(root / "kermany" / "chest_xray" / "train" / "NORMAL" / "leak.jpeg",
         outside / "secret.jpeg")
    write_image(root / "kermany" / "chest_xray" / "train" / "NORMAL" / "ok.jpeg", film(3))
    return f"tutorial:{root / 'cohen'},{root / 'kermany'}", None


HOSTILE: dict[str, Callable] = {
    "folder": hostile_folder, "kermany": hostile_kermany, "cohen": hostile_cohen,
    "radiography": hostile_radiography, "rsna": hostile_rsna, "nih": hostile_nih,
    "tutorial": hostile_tutorial,
}


@pytest.mark.parametrize("layout", HOSTILE)
def test_nothing_outside_the_data_folder_is_read(tmp_path, outside, layout):
    spec, _ = HOSTILE[layout](tmp_path / "data", outside)
    source, unreadable = read_everything(spec, outside=outside)
    outside_real = os.path.realpath(outside)
    for record in source.records:
        assert not os.path.realpath(record.source).startswith(outside_real), record
        assert record.mask is None or not os.path.realpath(record.mask).startswith(outside_real)
    assert source.records  # the clean part of the tree is still read


@pytest.mark.parametrize("layout", [name for name in HOSTILE if name != "tutorial"])
def test_refused_items_are_skipped_with_a_reason(tmp_path, outside, layout):
    spec, symlinks = HOSTILE[layout](tmp_path / "data", outside)
    source, unreadable = read_everything(spec, outside=outside)
    found = reasons(source, unreadable)
    assert sum(r == containment.SYMLINK_OUT for r in found) == symlinks
    assert all(not r.startswith("missing file") for r in found if "secret" in r)


@pytest.mark.parametrize("layout", ["folder", "kermany", "cohen", "rsna", "nih"])
def test_follow_symlinks_reads_them_but_never_dot_dot(tmp_path, outside, layout):
    spec, symlinks = HOSTILE[layout](tmp_path / "data", outside)
    refused, _ = read_everything(spec, outside=outside)
    followed, _ = read_everything(spec, follow_symlinks=True)
    assert len(followed.records) >= len(refused.records) + symlinks
    assert containment.SYMLINK_OUT not in reasons(followed)
    # Paths spelled out of the folder stay refused whatever the flag says.
    assert [r for r in reasons(refused) if r.startswith(containment.OUTSIDE)] == [
        r for r in reasons(followed) if r.startswith(containment.OUTSIDE)]


def test_cohen_paths_out_of_the_folder_are_named(tmp_path, outside):
    spec, _ = hostile_cohen(tmp_path / "data", outside)
    source, _ = read_everything(spec, outside=outside)
    spelled_out = [r for r in reasons(source) if r.startswith(containment.OUTSIDE)]
    assert len(spelled_out) == 4


def test_an_nih_image_folder_out_of_the_folder_is_noted_not_listed(tmp_path, outside):
    spec, _ = hostile_nih(tmp_path / "data", outside)
    source, _ = read_everything(spec, outside=outside)
    assert any(note.startswith("images_003/ not read: symlink out") for note in source.notes)
    followed, _ = read_everything(spec, follow_symlinks=True)
    assert any(record.source.endswith("s0.png") for record in followed.records)


def test_a_radiography_mask_out_of_the_folder_is_not_used(tmp_path, outside):
    spec, _ = hostile_radiography(tmp_path / "data", outside)
    source, _ = read_everything(spec, outside=outside)
    normal = [r for r in source.records if r.source_label == "Normal"]
    assert normal and all(r.mask is None for r in normal)
    assert f"1 lung mask(s) not used: {containment.SYMLINK_OUT}" in source.notes


def test_symlinks_that_stay_inside_are_read(tmp_path, outside):
    spec, _ = hostile_folder(tmp_path / "data", outside)
    source, _ = read_everything(spec, outside=outside)
    assert any(r.source.endswith("same.png") for r in source.records)


def test_the_data_folder_itself_may_be_a_symlink(tmp_path, outside):
    spec, _ = hostile_folder(tmp_path / "data", outside)
    alias = link(tmp_path / "alias", tmp_path / "data")
    via_alias, _ = read_everything(str(alias), outside=outside)
    direct, _ = read_everything(spec, outside=outside)
    assert len(via_alias.records) == len(direct.records)


@pytest.mark.parametrize("name", ["X_Train.npy", "Y_Train.npy"])
def test_arrays_linked_out_of_the_folder_are_refused(tmp_path, name):
    from tests.data.builders import arrays_tree

    arrays_tree(tmp_path / "elsewhere")
    root = tmp_path / "data"
    root.mkdir()
    for file in ("X_Train.npy", "Y_Train.npy"):
        if file == name:
            link(root / file, tmp_path / "elsewhere" / file)
        else:
            (root / file).write_bytes((tmp_path / "elsewhere" / file).read_bytes())
    with pytest.raises(UserError, match="symlink out of the data folder"):
        open_source(f"arrays:{root}", CLASSES, "all")
    assert len(open_source(f"arrays:{root}", CLASSES, "all", follow_symlinks=True).records) == 5


# ------------------------------------------------------------------------------ file sizes


@pytest.mark.parametrize("layout", ["folder", "kermany", "cohen", "rsna", "nih"])
def test_files_over_the_size_limit_are_skipped_unread(tmp_path, outside, layout, monkeypatch):
    spec, _ = HOSTILE[layout](tmp_path / "data", outside)
    # Index files stay readable; the images larger than they are must be skipped unread.
    limit = max([p.stat().st_size for p in (tmp_path / "data").rglob("*.csv")], default=100)
    monkeypatch.setattr(containment, "MAX_FILE_BYTES", limit)
    source, unreadable = read_everything(spec, outside=outside)
    assert any(r.startswith("file over the") for r in reasons(source))  # when listed
    assert all(os.path.getsize(record.source) <= limit for record in source.records)


def test_a_file_that_grew_past_the_limit_after_listing_is_not_read(tmp_path, monkeypatch):
    write_image(tmp_path / "NORMAL" / "ok.png", film(1))
    source = open_source(str(tmp_path), CLASSES, "all")
    monkeypatch.setattr(containment, "MAX_FILE_BYTES", 10)
    unreadable: list = []
    assert not list(iter_batches(source, source.records, (16, 16), 4, unreadable))
    assert [item.reason for item in unreadable] == [
        "file over the 10 bytes limit "
        f"({os.path.getsize(source.records[0].source)} bytes; raise "
        "report.data.containment.MAX_FILE_BYTES to read it)"]


def test_a_fifo_named_like_an_image_is_never_opened(tmp_path):
    write_image(tmp_path / "NORMAL" / "ok.png", film(1))
    (tmp_path / "COVID-19").mkdir()
    os.mkfifo(tmp_path / "COVID-19" / "pipe.png")
    source, unreadable = read_everything(str(tmp_path))
    assert len(source.records) == 1 and not unreadable


def test_oversized_index_files_are_a_user_error(tmp_path, monkeypatch):
    cohen_tree(tmp_path, [("No Finding", "PA", "X-ray", "a.png")])
    monkeypatch.setattr(containment, "MAX_FILE_BYTES", 10)
    with pytest.raises(UserError, match="metadata.csv.*file over the"):
        open_source(f"cohen:{tmp_path}", CLASSES, "all")


# --------------------------------------------------------------------------- odd file names


def test_names_that_are_not_utf8_are_skipped_with_printable_sources(tmp_path):
    write_image(tmp_path / "NORMAL" / "ok.png", film(1))
    bad_file = os.fsdecode(b"r\xf6ntgen.png")
    write_image(tmp_path / "NORMAL" / bad_file, film(2))
    write_image(tmp_path / os.fsdecode(b"COVID\xff") / "x.png", film(3))
    (tmp_path / "NORMAL" / os.fsdecode(b"caf\xe9.txt")).write_text("not an image")
    source, unreadable = read_everything(str(tmp_path))
    assert [Path(r.source).name for r in source.records] == ["ok.png"]
    for item in [*source.skipped, *unreadable]:
        item.source.encode("utf-8")  # no surrogates left
        item.reason.encode("utf-8")
        item.image_id.encode("ascii")
    assert any("not valid UTF-8" in r for r in reasons(source))
    for note in source.notes:
        note.encode("utf-8")


def test_a_data_folder_whose_name_is_not_utf8_is_a_user_error(tmp_path):
    root = tmp_path / os.fsdecode(b"d\xe4ta")
    write_image(root / "NORMAL" / "ok.png", film(1))
    with pytest.raises(UserError, match="not valid UTF-8"):
        open_source(str(root), CLASSES, "all")


@pytest.mark.parametrize(
    "key", ["a" * 300, "x/" * 200 + "y", "é" * 250, "line\nbreak\r\n" * 40, "=cmd|' /C calc'!A0"])
def test_ids_are_short_safe_file_names(key):
    image_id = safe_id(key)
    assert len(image_id.encode()) <= 120 and image_id.isascii()
    assert "/" not in image_id and "\n" not in image_id and not image_id.startswith(".")


def test_long_names_keep_distinct_readable_ids():
    first, second = safe_id("p" * 300 + "1"), safe_id("p" * 300 + "2")
    assert first != second and first.startswith("ppp")


def test_very_long_and_newline_names_are_read(tmp_path):
    long_folder = tmp_path / "NORMAL" / ("f" * 200)
    write_image(long_folder / ("n" * 200 + ".png"), film(1))
    write_image(tmp_path / "NORMAL" / "two\nlines.png", film(2))
    source, unreadable = read_everything(str(tmp_path))
    assert len(source.records) == 2 and not unreadable
    assert all(len(r.image_id) <= 120 for r in source.records)


# ----------------------------------------------------------------- careless index files


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"finding,filename\nNo Finding,\xff\xfe.png\n", "not UTF-8"),
        (b"\xff\xfe\x00f\x00i\x00n\x00d\x00", "not UTF-8"),
        (b"finding,filename\n" + b"No Finding,a.png,extra,fields\n", None),
        (b"finding,filename\n\"No Finding,a.png\n", None),
    ],
)
def test_a_careless_cohen_metadata_file(tmp_path, content, message):
    write_image(tmp_path / "images" / "a.png", film(1))
    (tmp_path / "metadata.csv").write_bytes(content)
    if message:
        with pytest.raises(UserError, match=message):
            open_source(f"cohen:{tmp_path}", CLASSES, "all")
    else:
        read_everything(f"cohen:{tmp_path}")


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("stage_2_train_labels.csv", b"patientId,Target\np1,1\n", None),
        ("stage_2_train_labels.csv", b"", None),
        ("stage_2_train_labels.csv", b"patientId,x\n\xff,1\n", "not UTF-8"),
        ("stage_2_detailed_class_info.csv", b"patientId\np1\n", "class"),
        ("stage_2_detailed_class_info.csv", b"\xff\xfe", "not UTF-8"),
    ],
)
def test_careless_rsna_index_files(tmp_path, name, content, message):
    rsna_tree(tmp_path, {"p1": [(1, 2, 3, 4)]}, None)
    (tmp_path / name).write_bytes(content)
    if message:
        with pytest.raises(UserError, match=message):
            open_source(f"rsna:{tmp_path}", CLASSES, "all")
    else:
        read_everything(f"rsna:{tmp_path}")


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("Data_Entry_2017.csv", b"Image Index\n00000001_000.png\n", "Finding Labels"),
        ("Data_Entry_2017.csv", b"", "Image Index"),
        ("Data_Entry_2017.csv", b"Image Index,Finding Labels\n\xff.png,x\n", "not UTF-8"),
        ("test_list.txt", b"\xff\xfe", "not UTF-8"),
        ("BBox_List_2017.csv", b"\xff\xfe", "not UTF-8"),
        ("BBox_List_2017.csv", b"h\n00000001_000.png\n", None),
    ],
)
def test_careless_nih_index_files(tmp_path, name, content, message):
    nih_tree(tmp_path, {"00000001_000.png": "No Finding"}, [])
    (tmp_path / name).write_bytes(content)
    spec = f"nih:{tmp_path}"
    if message:
        with pytest.raises(UserError, match=message):
            open_source(spec, CLASSES, "test" if name == "test_list.txt" else "all")
    else:
        read_everything(spec)


def test_arrays_that_are_not_arrays_are_a_user_error(tmp_path):
    (tmp_path / "X_Train.npy").write_bytes(b"\x93NUMPY garbage")
    np.save(tmp_path / "Y_Train.npy", np.eye(3))
    with pytest.raises(UserError, match="cannot read the arrays"):
        open_source(f"arrays:{tmp_path}", CLASSES, "all")


def test_a_class_folder_that_is_a_file_is_not_a_class(tmp_path):
    write_image(tmp_path / "NORMAL" / "ok.png", film(1))
    (tmp_path / "COVID-19").write_bytes(b"a file where a folder should be")
    source, _ = read_everything(str(tmp_path))
    assert len(source.records) == 1


def test_kermany_split_folder_that_is_a_file(tmp_path):
    kermany_tree(tmp_path, {"train": 1})
    (tmp_path / "chest_xray" / "test").write_bytes(b"not a folder")
    source, _ = read_everything(f"kermany:{tmp_path}")
    assert source.records
