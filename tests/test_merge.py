"""Mergeable summaries: the records split into parts, each part explained on its own with its
records' global positions, and the parts' summaries merged in any order give the report of
one pass over all the records (issue 11: one code path for the local and a cluster backend)."""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass

import numpy as np
import pytest

from report import api, checks, core, options, render, streaming
from report.artifacts import ArtifactWriter
from report.cam.engine import make_engine
from report.checks import sample_rank
from report.streaming import Collected, Explainer, Summary
from tests.conftest import synthetic_films, tiny_classifier

CLASSES = ("COVID-19", "NORMAL", "OTHER_INFECTION")
SIZE = 48
N_IMAGES = 40
# Uneven parts, one of them given in reverse order: the faithfulness sample (16 images for
# quality=fast, from all three parts) must still be the 16 smallest positions, not the first
# 16 seen.
PARTS = (list(range(0, 7)), list(range(7, N_IMAGES, 2))[::-1], list(range(8, N_IMAGES, 2)))
COUNTERFACTUAL_IMAGES = 24  # lowered too, under N_IMAGES, so that the bound has to choose


@dataclass
class Setup:
    values: dict
    loaded: object
    source: object
    engine: object


@dataclass
class Outcome:
    summary: Summary
    results: checks.QualityResults
    audit: object


@pytest.fixture(scope="module")
def setup() -> Setup:
    return make_setup()


@pytest.fixture(scope="module")
def outcomes(setup, tmp_path_factory) -> dict[str, Outcome]:
    """One pass, and the three parts merged in two orders. The grid and extremes bounds are
    lowered and the per-image flag threshold too, so that what is kept has to be chosen."""
    folder = tmp_path_factory.mktemp("merge")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(streaming, "GRID_IMAGES_PER_CLASS", 3)
        patch.setattr(streaming, "EXTREMES", 2)
        patch.setattr(checks, "IMAGE_FLAG", 0.2)
        patch.setattr(checks, "FAST_COUNTERFACTUAL", COUNTERFACTUAL_IMAGES)
        whole = list(range(N_IMAGES))
        parts = [explain_part(setup, indices, folder / f"part{n}")
                 for n, indices in enumerate(PARTS)]
        a, b, c = parts
        summaries = {
            "single": explain_part(setup, whole, folder / "single"),
            "merged (a+b)+c": a.merge(b).merge(c),
            "merged c+(b+a)": c.merge(b.merge(a)),
        }
        return {name: finish(setup, summary, folder / name)
                for name, summary in summaries.items()}


def make_setup() -> Setup:
    values = options.resolve("explain", {"class_names": list(CLASSES), "quality": "fast",
                                         "batch_size": 4, "workers": 2, "output_dir": None},
                             only=api.AUDIT_KEYWORDS)
    loaded = api._loaded_model(tiny_classifier(SIZE, "merged", convs=2, seed=3), values)
    source, _ = core.open_data(synthetic_films(N_IMAGES, SIZE), loaded.metadata.class_names,
                               values)
    metadata = loaded.metadata
    engine = make_engine(values["method"], loaded.model, metadata.layer_for(values["layer"]),
                         values["score"], (*metadata.image_size, metadata.channels))
    return Setup(values, loaded, source, engine)


def explain_part(setup: Setup, indices: list[int], folder) -> Summary:
    metadata = setup.loaded.metadata
    explainer = Explainer(setup.values, metadata, setup.engine)
    records = [setup.source.records[i] for i in indices]
    with ArtifactWriter(folder, metadata.class_names, setup.engine.target.name,
                        metadata.image_size, explainer.overlay_suffix) as writer:
        skipped = explainer.run(setup.source, records, writer, positions=indices)
    assert skipped == []
    return explainer.summary


def finish(setup: Setup, summary: Summary, folder) -> Outcome:
    audit, results = core.measure(setup.loaded, setup.source, setup.values, setup.engine,
                                  summary, [], "in-memory arrays", folder, started=0.0)
    return Outcome(summary, results, audit)


MERGED = ["merged (a+b)+c", "merged c+(b+a)"]


def grid_ids(audit) -> list[list[str]]:
    return [[item.image_id for item in grid.items] for grid in audit.context.grids]


def extreme_ids(audit) -> list[list[str]]:
    return [[item.image_id for item in items] for _, items in audit.context.extremes]


@pytest.mark.parametrize("name", MERGED)
def test_merged_parts_classify_and_measure_like_one_pass(outcomes, name):
    single, merged = outcomes["single"], outcomes[name]
    assert len(single.results.y_pred) == N_IMAGES
    np.testing.assert_array_equal(merged.results.y_true, single.results.y_true)
    np.testing.assert_array_equal(merged.results.y_pred, single.results.y_pred)
    np.testing.assert_array_equal(merged.results.probabilities, single.results.probabilities)
    assert merged.audit.metrics == pytest.approx(single.audit.metrics, nan_ok=True)
    assert merged.audit.findings == single.audit.findings


@pytest.mark.parametrize("name", MERGED)
def test_merged_parts_keep_the_same_tiles_and_flags(outcomes, name):
    single, merged = outcomes["single"].audit, outcomes[name].audit
    assert grid_ids(merged) == grid_ids(single)
    assert any(len(ids) == 3 for ids in grid_ids(single))  # the bound had to choose
    assert extreme_ids(merged) == extreme_ids(single)
    assert all(len(ids) == 2 for ids in extreme_ids(single))
    assert merged.context.flagged == single.context.flagged
    assert single.context.flagged, "the lowered threshold should flag some images"


@pytest.mark.parametrize("name", MERGED)
def test_merged_parts_have_the_same_fingerprint_sample_and_mean_maps(outcomes, name):
    single, merged = outcomes["single"], outcomes[name]
    assert merged.summary.fingerprint == single.summary.fingerprint
    assert merged.audit.params["data_fingerprint"] == single.audit.params["data_fingerprint"]
    assert merged.summary.explained == single.summary.explained
    plan = single.summary.quality.plan
    assert single.summary.quality.sample_positions == sorted(
        range(N_IMAGES), key=sample_rank)[: plan.faithfulness_images]
    assert merged.summary.quality.sample_positions == single.summary.quality.sample_positions
    np.testing.assert_array_equal(merged.results.faithfulness.labels,
                                  single.results.faithfulness.labels)
    for kind, maps in single.results.mean_maps.items():
        assert merged.results.mean_maps[kind].keys() == maps.keys()
        for name_, mean in maps.items():
            np.testing.assert_allclose(merged.results.mean_maps[kind][name_], mean, atol=1e-9)
    # The engine's maps depend on the batch an image shares at float32 rounding level
    # (batched kernels), and parts batch differently: equal to that tolerance.
    for score in ("outside_lungs", "border", "random border"):
        np.testing.assert_allclose(merged.results.shortcut.array(score),
                                   single.results.shortcut.array(score), rtol=1e-5)


def test_one_pass_fingerprint_is_the_running_hash_in_record_order(setup, outcomes):
    """The value one pass gave before summaries became mergeable."""
    expected = hashlib.sha256()
    for record in setup.source.records:
        digest = setup.source.load(record, (SIZE, SIZE)).digest
        expected.update(f"{record.image_id}|{record.label}|{digest}\n".encode())
    assert outcomes["single"].summary.fingerprint == expected.hexdigest()
    assert outcomes["single"].summary.explained == list(setup.source.records)


# --- Collected.merge on hand-made tiles ---------------------------------------------------


def tile(position: int, label: int, predicted: int, confidence: float):
    return position, label, render.GridItem(
        image_id=f"img{position}", true_label=CLASSES[label], predicted_label=CLASSES[predicted],
        confidence=confidence, correct=label == predicted, overlay=b"")


# Ties in confidence, so only the position can order them.
TILES = [tile(p, p % 2, (p * 7) % 3 % 2, round(0.3 + 0.1 * ((p * 5) % 4), 2))
         for p in range(30)]


TILE_LABELS = ([label for _, label, _ in TILES],
               [CLASSES.index(item.predicted_label) for _, _, item in TILES])


def collected_of(tiles) -> Collected:
    collected = Collected()
    for position, label, item in tiles:
        collected.offer_tile(position, label, item)
        if position % 4 == 0:
            collected.add_flag(position, item.image_id, item.true_label, "flag")
    return collected


def view(collected: Collected):
    grids = collected.grids(CLASSES, *TILE_LABELS)
    return (collected.flagged,
            [[item.image_id for item in grid.items] for grid in grids],
            [[item.image_id for item in items] for _, items in collected.extremes()],
            [(grid.total, grid.misclassified) for grid in grids])


def test_collected_merge_is_associative_and_independent_of_order(monkeypatch):
    monkeypatch.setattr(streaming, "GRID_IMAGES_PER_CLASS", 4)
    monkeypatch.setattr(streaming, "EXTREMES", 3)
    shuffled = np.random.default_rng(0).permutation(len(TILES))
    parts = [collected_of([TILES[i] for i in shuffled[cut]])
             for cut in (slice(0, 5), slice(5, 19), slice(19, None))]
    expected = view(collected_of(TILES))
    for a, b, c in itertools.permutations(parts):
        assert view(a.merge(b).merge(c)) == expected
        assert view(a.merge(b.merge(c))) == expected

    grid = collected_of(TILES).grids(CLASSES, *TILE_LABELS)[0]
    mistakes = [item for _, label, item in TILES if label == 0 and not item.correct]
    assert len(mistakes) > 4  # the bound has to choose among them
    most_confident = sorted(mistakes, key=lambda item: -item.confidence)[:4]
    assert [item.confidence for item in grid.items] == [t.confidence for t in most_confident]


@pytest.mark.parametrize("name", MERGED)
def test_merged_parts_keep_the_same_counterfactual_sample_result_and_marker_counts(
        setup, outcomes, name):
    single, merged = outcomes["single"], outcomes[name]
    assert single.summary.quality.counterfactual_positions == sorted(
        range(N_IMAGES), key=sample_rank)[:COUNTERFACTUAL_IMAGES]
    assert (merged.summary.quality.counterfactual_positions
            == single.summary.quality.counterfactual_positions)
    assert single.results.markers.films == N_IMAGES
    assert merged.results.markers == single.results.markers
    one = single.summary.quality.check_counterfactual(setup.engine, 4)
    other = merged.summary.quality.check_counterfactual(setup.engine, 4)
    assert one.sample_images == COUNTERFACTUAL_IMAGES
    assert [c.images for c in other.classes] == [c.images for c in one.classes]
    assert sum(c.images for c in one.classes) == COUNTERFACTUAL_IMAGES
    for mine, theirs in zip(one.classes, other.classes, strict=True):
        for a, b in zip(mine.conditions, theirs.conditions, strict=True):
            # Probabilities equal to float32 rounding (parts batch differently, see above).
            assert (a.flip_rate, a.control_flip_rate) == (b.flip_rate, b.control_flip_rate)
            assert a.drop == pytest.approx(b.drop, abs=1e-5)
            assert a.flagged == b.flagged
