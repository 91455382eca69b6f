"""The data section's accounting: for every data set and class, how many images were found,
how many were explained, and why the rest were not. Nothing may go missing in between:
found == used + skipped is asserted for every row."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from report.data.records import Record, Skipped
from report.data.source import ImageSource

BEYOND_LIMIT = "beyond --limit"
NO_CLASS = "no model class"


@dataclass(frozen=True)
class InventoryRow:
    """One data set and one model class (NO_CLASS for labels that reach none)."""

    source: str
    class_name: str
    found: int
    used: int
    skipped: int
    reasons: dict[str, int] = field(default_factory=dict)  # grouped reason -> count


@dataclass(frozen=True)
class DataInventory:
    rows: list[InventoryRow]
    notes: list[str]

    @property
    def found(self) -> int:
        return sum(row.found for row in self.rows)

    @property
    def used(self) -> int:
        return sum(row.used for row in self.rows)

    @property
    def skipped(self) -> int:
        return sum(row.skipped for row in self.rows)


def take_inventory(
    source: ImageSource,
    class_names: tuple[str, ...],
    explained: Iterable[Record],
    unreadable: Iterable[Skipped],
    limit: int = 0,
) -> DataInventory:
    """Rows per (data set, class) for a run that explained `explained` and had to skip
    `unreadable` (from iter_batches) out of `source.records[:limit]` (all when limit is 0).

    found counts the source's records and its listing-time skips; used counts `explained`;
    skipped counts listing-time skips, unreadable images and records beyond the limit.
    """
    records = list(source.records)
    beyond = records[limit:] if limit else []
    found, used, skipped = Counter(), Counter(), Counter()
    reasons: dict[tuple[str, str], Counter] = {}

    def key(item: Record | Skipped) -> tuple[str, str]:
        name = NO_CLASS if item.label is None else class_names[item.label]
        return item.dataset or source.name, name

    def skip(item: Record | Skipped, reason: str) -> None:
        skipped[key(item)] += 1
        reasons.setdefault(key(item), Counter())[reason_group(reason)] += 1

    listing_skips = list(source.skipped)
    for item in [*records, *listing_skips]:
        found[key(item)] += 1
    for record in explained:
        used[key(record)] += 1
    for item in [*listing_skips, *unreadable]:
        skip(item, item.reason)
    for record in beyond:
        skip(record, BEYOND_LIMIT)
    rows = [
        InventoryRow(*row_key, found[row_key], used[row_key], skipped[row_key],
                     dict(reasons.get(row_key, Counter()).most_common()))
        for row_key in _row_order(found | used | skipped, class_names)
    ]
    _check(rows)
    return DataInventory(rows, list(source.notes))


def reason_group(reason: str) -> str:
    """Reasons without their per-file details, so they can be counted together: the part
    before ': ' or ' (', and "duplicate of <path>" as one group."""
    if reason.startswith("duplicate of "):
        return "duplicate of an earlier file"
    return re.split(r": | \(", reason, maxsplit=1)[0]


def _row_order(keys: Iterable[tuple[str, str]], class_names: tuple[str, ...]):
    order = {name: i for i, name in enumerate((*class_names, NO_CLASS))}
    return sorted(set(keys), key=lambda k: (k[0], order[k[1]]))


def _check(rows: list[InventoryRow]) -> None:
    for row in rows:
        if row.found != row.used + row.skipped:
            raise AssertionError(
                f"data inventory does not add up for {row.source} / {row.class_name}: found "
                f"{row.found} != used {row.used} + skipped {row.skipped}"
            )
