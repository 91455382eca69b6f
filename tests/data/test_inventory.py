"""The data section's accounting: found == used + skipped, per data set and class."""

from dataclasses import replace

import pytest

from report.data import open_source, take_inventory
from report.data.batches import iter_batches
from report.data.inventory import reason_group
from tests.data.builders import CLASSES, cohen_tree, film, kermany_tree, write_image


@pytest.fixture
def folder(tmp_path):
    for i in range(6):
        write_image(tmp_path / "NORMAL" / f"n{i}.png", film(3 * i + 1))
        write_image(tmp_path / "COVID-19" / f"c{i}.png", film(3 * i))
    write_image(tmp_path / "cats" / "tabby.png", film(2))
    (tmp_path / "NORMAL" / "n9.png").write_bytes(b"")
    write_image(tmp_path / "NORMAL" / "n_copy.png", film(1))
    return tmp_path


def run(source, limit=0):
    records = source.records[:limit] if limit else source.records
    unreadable = []
    explained = [r for b in iter_batches(source, records, (16, 16), 4, unreadable)
                 for r in b.records]
    return explained, unreadable


def test_rows_add_up_and_reasons_are_grouped(folder):
    source = open_source(str(folder), CLASSES, "all")
    explained, unreadable = run(source)
    inventory = take_inventory(source, CLASSES, explained, unreadable)
    rows = {(r.source, r.class_name): (r.found, r.used, r.skipped, r.reasons)
            for r in inventory.rows}
    assert rows == {
        ("folder", "COVID-19"): (6, 6, 0, {}),
        ("folder", "NORMAL"): (8, 6, 2, {"empty file": 1, "duplicate of an earlier file": 1}),
        ("folder", "no model class"): (1, 0, 1, {"label 'cats' maps to no model class": 1}),
    }
    assert (inventory.found, inventory.used, inventory.skipped) == (15, 12, 3)


def test_records_beyond_the_limit_count_as_skipped(folder):
    source = open_source(str(folder), CLASSES, "all")
    explained, unreadable = run(source, limit=5)
    inventory = take_inventory(source, CLASSES, explained, unreadable, limit=5)
    covid = next(r for r in inventory.rows if r.class_name == "COVID-19")
    assert (covid.found, covid.used, covid.skipped) == (6, 5, 1)
    assert covid.reasons == {"beyond --limit": 1}
    assert inventory.found == inventory.used + inventory.skipped == 15


def test_a_record_lost_between_listing_and_report_fails_loudly(folder):
    source = open_source(str(folder), CLASSES, "all")
    explained, unreadable = run(source)
    with pytest.raises(AssertionError, match=r"folder / COVID-19: found 6 != used 5 \+ skipped 0"):
        take_inventory(source, CLASSES, explained[1:], unreadable)
    with pytest.raises(AssertionError, match="found 6 != used 7"):
        take_inventory(source, CLASSES, [*explained, explained[0]], unreadable)


def test_a_record_counted_in_the_wrong_class_fails(folder):
    source = open_source(str(folder), CLASSES, "all")
    explained, unreadable = run(source)
    moved = [replace(explained[0], label=2), *explained[1:]]
    with pytest.raises(AssertionError, match="does not add up"):
        take_inventory(source, CLASSES, moved, unreadable)


def test_rows_are_per_data_set_for_a_combined_source(tmp_path):
    cohen_tree(tmp_path / "c", [("COVID-19", "PA", "X-ray", f"c{n}.png") for n in range(3)])
    kermany_tree(tmp_path / "k", {"train": 2})
    source = open_source(f"tutorial:{tmp_path / 'c'},{tmp_path / 'k'}", CLASSES, "all")
    inventory = take_inventory(source, CLASSES, source.records, [])
    assert [(r.source, r.class_name, r.used) for r in inventory.rows] == [
        ("cohen", "COVID-19", 3), ("kermany", "NORMAL", 2), ("kermany", "OTHER_INFECTION", 2),
    ]


def test_sources_without_listing_skips_work_too():
    source = open_source("synthetic:10", CLASSES, "all")
    inventory = take_inventory(source, CLASSES, source.records[:9], [], limit=9)
    assert inventory.found == 10 and inventory.skipped == 1
    assert {r.source for r in inventory.rows} == {"synthetic"}


@pytest.mark.parametrize(
    ("reason", "group"),
    [("duplicate of /a/b.png", "duplicate of an earlier file"),
     ("truncated or corrupt image: image file is truncated", "truncated or corrupt image"),
     ("image over the 50-megapixel limit (10000x10000 = 100 megapixels; ...)",
      "image over the 50-megapixel limit"),
     ("view L not PA/AP", "view L not PA/AP"), ("missing file", "missing file")],
)
def test_reason_groups(reason, group):
    assert reason_group(reason) == group
