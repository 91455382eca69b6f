"""The one base class of every image source, and of the sources read from one data-set folder.

A source turns a data set into records (the images of the chosen split), skips (what it found
but cannot use, and why) and notes (sentences for the report), and reads one record's pixels
on demand. `open_source` (see __init__.py) picks the class from its registry `SOURCES` by the
class attributes declared here.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar

from report.data.containment import (
    DataFolder,
    file_refusal,
    is_utf8,
    printable,
    reason_group,
)
from report.data.ids import safe_id, unique_id
from report.data.images import read_bytes, read_image_file, read_mask
from report.data.labels import LabelMap, LabelResolver, unmapped_reason, unused_note
from report.data.listing import image_files, left_out_note
from report.data.records import Box, LoadedImage, Record, Skipped, UnreadableImage
from report.errors import UserError
from report.i18n import _, ngettext, number


@dataclass(frozen=True)
class Request:
    """What `open_source` was asked for besides the spec itself."""

    class_names: tuple[str, ...]
    split: str
    label_map: LabelMap | None = None
    channel_order: str = "bgr"  # how the `arrays` layout stored colour
    follow_symlinks: bool = False  # read files that symlinks take out of the data folder


class ImageSource:
    """A data set as records to explain, the items it had to skip, and a way to read one.

    A subclass declares the class attributes, fills `records`, `skipped` and `notes` in
    `list_records` (through `add`, `keep` and `skip`), and overrides `load` unless its records
    are image files. One that takes more than the model's classes, the split and a label map
    stores its own inputs first and then calls this `__init__`, which lists the records.
    """

    name: ClassVar[str] = ""  # the data set, e.g. "kermany"; also NAME in `--data NAME:...`
    # `matches(path) -> bool` on the layouts a plain `--data PATH` can detect; None on others.
    matches: ClassVar[Callable[[Path], bool] | None] = None
    # The spec may be the bare name (`--data synthetic`), not only `NAME:LOCATION`.
    location_optional: ClassVar[bool] = False
    # Records with the same bytes stay, instead of being skipped as duplicates (batches.py).
    keeps_duplicates: ClassVar[bool] = False
    # Whether `split` chose the records (false where the caller already chose the images).
    applies_split: ClassVar[bool] = True
    # The data set's labels -> model classes; the user's label map overrides it entry by entry.
    default_label_map: ClassVar[LabelMap] = {}

    def __init__(
        self, class_names: tuple[str, ...], split: str, label_map: LabelMap | None = None
    ):
        self.class_names = tuple(class_names)
        self.split = split
        self.resolve = LabelResolver(self.class_names, self.default_label_map, label_map)
        self.records: list[Record] = []
        self.skipped: list[Skipped] = []
        self.notes: list[str] = []
        self._ids: set[str] = set()
        self.list_records()
        self.notes += self.listing_notes()
        self.notes += unused_note(self.resolve)
        # Notes can name files and folders; the report, params and JSON need valid UTF-8.
        self.notes = [printable(note) for note in self.notes]
        self.description: str = self.describe()

    @classmethod
    def from_spec(cls, location: str, request: Request) -> ImageSource:
        """The source `--data NAME:LOCATION` names (LOCATION is "" for a bare NAME)."""
        raise NotImplementedError(f"{cls.__name__} is not opened from a --data spec")

    def list_records(self) -> None:
        """Fill records, skipped and notes; called once, by `__init__`."""
        raise NotImplementedError

    def listing_notes(self) -> list[str]:
        """Notes that sum up the whole listing, added after `list_records`."""
        return []

    def describe(self) -> str:
        """One line for the report: what was read, and how many images it gave, in the
        language in use (`description`, made when the source opens, is the run param)."""
        return _("%(name)s (%(where)s): %(found)s") % {
            "name": self.name, "where": self.where(), "found": images(len(self.records))}

    def where(self) -> str:
        return _("all images") if self.split == "all" else _("%(split)s split") % {
            "split": self.split}

    def refusal(self, path: str) -> str | None:
        """Why the file at `path` may not be read at all (containment.py), or None. Checked
        again at read time: records may have been listed elsewhere (a Spark driver), or
        the folder changed since it was listed."""
        return None

    def file_size(self, record: Record) -> int | None:
        """The size in bytes of the file `digest` reads (None when it cannot be read): files
        of different sizes cannot repeat each other, so only same-size files are hashed."""
        if self.refusal(record.source):
            return None
        try:
            return Path(record.source).stat().st_size
        except OSError:
            return None

    def digest(self, record: Record) -> str:
        """The digest `load` gives the record, without decoding it: what finds duplicates
        across parts that are read apart (backend=spark). Sources whose `load` digests
        something other than the file's bytes keep their duplicates (`keeps_duplicates`)."""
        self._check(record.source)
        return hashlib.sha256(read_bytes(Path(record.source))).hexdigest()

    def load(self, record: Record, image_size: tuple[int, int]) -> LoadedImage:
        """The record's file at the model's size, with its lung mask when it has one; raises
        UnreadableImage when the image cannot be decoded."""
        self._check(record.source)
        image = read_image_file(Path(record.source), image_size, record.boxes)
        if not record.mask or self.refusal(record.mask):
            return image
        try:
            lungs = read_mask(Path(record.mask), image_size)
        except UnreadableImage as error:
            # The image is still good; only the shortcut check loses its mask for it.
            self.notes.append(f"lung mask {record.mask} not used: {error}")
            return image
        return replace(image, lung_mask=lungs)

    def _check(self, path: str) -> None:
        refusal = self.refusal(path)
        if refusal is not None:
            raise UnreadableImage(refusal)

    def add(
        self,
        key: str,
        source: str,
        source_label: str,
        mask: str | None = None,
        boxes: tuple[Box, ...] | None = None,
    ) -> None:
        """A record labelled through the label map, or a skip when its label reaches no class.
        `key` becomes the image id, made file-safe and unique within this source."""
        label = self.resolve(source_label)
        if label is None:
            self.skip(key, source, None, unmapped_reason(source_label))
            return
        self.keep(key, source, label, source_label, mask, boxes)

    def keep(
        self,
        key: str,
        source: str,
        label: int | None,
        source_label: str | None = None,
        mask: str | None = None,
        boxes: tuple[Box, ...] | None = None,
    ) -> None:
        """A record whose label the source resolved itself (None: the image is unlabelled)."""
        image_id = unique_id(safe_id(key), self._ids)
        self.records.append(
            Record(image_id, source, label, source_label, self.name, mask, boxes)
        )

    def skip(self, key: str, source: str, label: int | None, reason: str) -> None:
        image_id = unique_id(safe_id(key), self._ids)
        self.skipped.append(
            Skipped(image_id, printable(source), label, printable(reason), self.name))


class RootedSource(ImageSource):
    """A source read from one data-set folder: `--data NAME:DIR`, or `--data DIR` when the
    folder's layout is detected."""

    title: ClassVar[str] = ""  # the layout's name in messages, e.g. "Kermany"
    expected: ClassVar[str] = ""  # what its folder holds, said when a folder does not

    def __init__(
        self,
        root: Path,
        class_names: tuple[str, ...],
        split: str,
        label_map: LabelMap | None = None,
        follow_symlinks: bool = False,
    ):
        if not is_utf8(str(root)):
            raise UserError(f"data folder '{printable(str(root))}': its name is not valid "
                            "UTF-8; rename it")
        self.root = self.find_root(Path(root))
        self.folder = DataFolder(self.root, follow_symlinks)
        self._refused_masks: Counter[str] = Counter()
        super().__init__(class_names, split, label_map)

    @classmethod
    def from_spec(cls, location: str, request: Request) -> ImageSource:
        root = cls.named_folder(location)
        return cls(root, request.class_names, request.split, request.label_map,
                   request.follow_symlinks)

    @classmethod
    def named_folder(cls, location: str) -> Path:
        if not is_utf8(location):
            raise UserError(f"--data {cls.name}:{printable(location)}: the folder's name is "
                            "not valid UTF-8; rename it")
        root = Path(location).expanduser()
        if not root.is_dir():
            raise UserError(f"--data {cls.name}:{location}: '{root}' is not a folder")
        return root

    @classmethod
    def find_root(cls, path: Path) -> Path:
        """The data set's top folder at `path`; a UserError when the layout is not there."""
        if cls.matches is not None and not cls.matches(path):
            raise UserError(f"'{path}' is not the {cls.title} layout: expected {cls.expected}")
        return path

    def describe(self, extra: str = "") -> str:
        extra = f", {extra}" if extra else ""
        return _("%(name)s %(root)s (%(where)s): %(found)s") % {
            "name": self.name, "root": self.root, "where": self.where() + extra,
            "found": images(len(self.records))}

    # Containment (containment.py): every path a record or a skip names is checked here, so
    # a source that lists through keep/add/skip gets the rule without doing anything.
    def keep(self, key, source, label, source_label=None, mask=None, boxes=None) -> None:
        refusal = self.listing_refusal(source)
        if refusal is not None:
            self.skip(key, source, label, refusal)
            return
        if mask is not None and self.listing_refusal(mask) is not None:
            self._refused_masks[reason_group(self.listing_refusal(mask))] += 1
            mask = None  # the image is still good; only its lung mask is not read
        super().keep(key, source, label, source_label, mask, boxes)

    def listing_notes(self) -> list[str]:
        return [f"{count} lung mask(s) not used: {reason}"
                for reason, count in sorted(self._refused_masks.items())]

    def skip(self, key: str, source: str, label: int | None, reason: str) -> None:
        """A refused path is reported as refused, whatever else the source found wrong: that
        way a path out of the folder is never probed (missing file or not)."""
        super().skip(key, source, label, self.refusal(source) or reason)

    def refusal(self, path: str) -> str | None:
        return self.folder.refusal(path)

    def listing_refusal(self, path: str) -> str | None:
        """The refusal, or else what stat says before a byte is read (too large, not a
        regular file): a record is only what can be read."""
        return self.refusal(path) or file_refusal(path)

    def images_in(self, folder: Path, where: str) -> list[Path]:
        """Image files under `folder`; the other files there are noted as not read. A
        folder that a symlink takes out of the data folder is one entry, for `keep` to
        skip, and is not listed."""
        images, left_out = image_files(folder, lambda linked: self.refusal(linked) is None)
        self.notes += left_out_note(left_out, where)
        return images


def images(count: int) -> str:
    """"1 image" / "120 images", in the language in use."""
    return ngettext("%(count)s image", "%(count)s images", count) % {"count": number(count)}
