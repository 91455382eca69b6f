"""The tutorial's recipe: Cohen COVID-19 plus Kermany train NORMAL and PNEUMONIA, sampled."""

from collections import Counter

import pytest
from sklearn.model_selection import train_test_split

from report.data import open_source
from report.errors import UserError
from tests.data.builders import CLASSES, cohen_tree, kermany_tree

COVID, NORMAL, OTHER = range(3)


@pytest.fixture
def folders(tmp_path):
    rows = [("Pneumonia/Viral/COVID-19", "PA", "X-ray", f"covid-{n}.png") for n in range(7)]
    rows += [("Pneumonia/Bacterial/Klebsiella", "PA", "X-ray", "kleb.png"),
             ("Pneumonia/Viral/COVID-19", "L", "X-ray", "covid-lateral.png")]
    cohen = cohen_tree(tmp_path / "cohen", rows)
    kermany = kermany_tree(tmp_path / "kermany", {"train": 6, "test": 2})
    return cohen, kermany


def test_counts_per_class_and_sources(folders):
    cohen, kermany = folders
    source = open_source(f"tutorial:{cohen},{kermany},5", CLASSES, "all")
    assert Counter(r.label for r in source.records) == {COVID: 5, NORMAL: 5, OTHER: 5}
    assert {r.dataset for r in source.records if r.label == COVID} == {"cohen"}
    assert all("/train/" in r.source for r in source.records if r.label != COVID)
    assert all("lateral" not in r.source and "kleb" not in r.source for r in source.records)
    assert len({r.image_id for r in source.records}) == 15
    assert "tutorial recipe: 5 of 7 COVID-19 images from Cohen" in source.notes[0]


def test_sampling_is_reproducible_and_ignores_listing_order(folders):
    cohen, kermany = folders
    first = open_source(f"tutorial:{cohen},{kermany},4", CLASSES, "all").records
    assert open_source(f"tutorial:{cohen},{kermany},4", CLASSES, "all").records == first
    # Not just the first four of a sorted listing either: it is a seeded choice.
    covid = sorted(r.source.rsplit("/", 1)[1] for r in first if r.label == COVID)
    assert covid != [f"covid-{n}.png" for n in range(4)]


def test_fewer_images_than_asked_takes_them_all(folders):
    cohen, kermany = folders
    source = open_source(f"tutorial:{cohen},{kermany}", CLASSES, "all")  # default 100
    assert Counter(r.label for r in source.records) == {COVID: 7, NORMAL: 6, OTHER: 6}


def test_split_keeps_train_test_split_order_over_the_concatenated_classes(folders):
    cohen, kermany = folders
    # 6 per class: 18 images, whose 4 test indices are not in ascending order.
    sampled = open_source(f"tutorial:{cohen},{kermany},6", CLASSES, "all").records
    test = open_source(f"tutorial:{cohen},{kermany},6", CLASSES, "test").records
    _, expected = train_test_split(sampled, test_size=0.2, random_state=40)
    assert [r.source for r in test] == [r.source for r in expected]


def test_split_is_taken_over_the_sample(folders):
    cohen, kermany = folders
    test = open_source(f"tutorial:{cohen},{kermany},5", CLASSES, "test").records
    train = open_source(f"tutorial:{cohen},{kermany},5", CLASSES, "train").records
    assert len(test) == 3 and len(train) == 12
    assert not {r.source for r in test} & {r.source for r in train}


@pytest.mark.parametrize("spec", ["tutorial:only-one", "tutorial:a,b,c,d", "tutorial:,x"])
def test_bad_tutorial_specs(spec):
    with pytest.raises(UserError, match="tutorial:COHEN_DIR,KERMANY_DIR"):
        open_source(spec, CLASSES, "test")
