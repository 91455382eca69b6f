"""The model-free audit of burned-in markers (report/marker_audit.py)."""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest
from scipy import stats

from report import marker_audit as audit
from report.data import synthetic

FILMS = 90  # 30 per class


@cache
def confounded(confound: synthetic.Confound | None, size: int = 64):
    cases = [synthetic.generate(i, 0, size, confound=confound) for i in range(FILMS)]
    return cases, audit.detect_batch([case.image for case in cases])


# Each kind, each place, two sizes of each kind.
CONFOUNDS = [
    synthetic.Confound("block", "top-left", 0.06),
    synthetic.Confound("block", "bottom", 0.15),
    synthetic.Confound("block", "right", 0.1),
    synthetic.Confound("text", "top-right", 0.3),
    synthetic.Confound("text", "bottom-left", 0.45),
    synthetic.Confound("ruler", "left", 0.25),
    synthetic.Confound("ruler", "bottom-right", 0.15),
    synthetic.Confound("ruler", "top", 0.3),
]


@pytest.mark.parametrize("confound", CONFOUNDS, ids=lambda c: f"{c.kind}-{c.position}-{c.size}")
def test_markers_are_found_where_they_were_burned_in_and_nowhere_else(confound):
    cases, detections = confounded(confound)
    for case, detection in zip(cases, detections, strict=True):
        assert detection.found == bool(case.marker_mask.any())
        for x, y, width, height in detection.boxes:
            assert case.marker_mask[y : y + height, x : x + width].any()


@pytest.mark.parametrize("confound", CONFOUNDS, ids=lambda c: f"{c.kind}-{c.position}-{c.size}")
def test_a_confounded_data_set_warns_about_the_class_that_carries_the_markers(confound):
    cases, detections = confounded(confound)
    counts = audit.MarkerCounts(synthetic.CLASS_NAMES)
    counts.add(range(FILMS), [case.label for case in cases], detections)
    result = counts.results()
    assert result.warned_classes == ["COVID-19"]
    assert result.chi_square_p < audit.ALPHA


@pytest.mark.parametrize("size", [64, 237])
def test_clean_films_carry_no_markers(size):
    cases = [synthetic.generate(i, 5, size) for i in range(150)]
    detections = audit.detect_batch([case.image for case in cases])
    assert sum(d.found for d in detections) <= 1  # a streak of bright bone, at most
    counts = audit.MarkerCounts(synthetic.CLASS_NAMES)
    counts.add(range(150), [case.label for case in cases], detections)
    result = counts.results()
    assert result.warned_classes == []
    assert max(c.prevalence for c in result.classes) <= 1 / 50


def test_the_original_tag_is_found_at_the_demo_size():
    cases, detections = confounded(synthetic.DEFAULT_CONFOUND, 237)
    assert [d.found for d in detections] == [bool(c.marker_mask.any()) for c in cases]


def film(value=90):
    return np.full((64, 64), value, np.uint8)


def test_only_sharp_bright_groups_near_the_edges_count():
    sharp = film()
    sharp[2:7, 50:58] = 255
    assert audit.detect(sharp) == audit.Detection(True, ((50, 2, 8, 5),))
    textured = sharp.copy()
    textured[2:7, 50:58] = np.tile([236, 255], 20).reshape(5, 8)  # bright, but not one value
    assert not audit.detect(textured).found
    soft = film().astype(float)
    yy, xx = np.mgrid[:64, :64]
    soft += 175 * np.exp(-((yy - 4) ** 2 + (xx - 54) ** 2) / (2 * 8.0**2))  # a gradual rise
    assert not audit.detect(soft.clip(0, 255).astype(np.uint8)).found
    centre = film()
    centre[28:34, 28:34] = 255  # inside the film, where the lungs are
    assert not audit.detect(centre).found
    speck = film()
    speck[3, 3] = 255
    assert not audit.detect(speck).found
    overexposed = film()
    overexposed[:, :9] = 255  # a whole side burned out: too large to be a marker
    assert not audit.detect(overexposed).found


def test_coloured_text_counts_and_letters_group_into_one_box():
    image = np.full((64, 64, 3), 80, np.uint8)
    image[4:10, 10:12, 0] = 250  # two red letters, one pixel apart
    image[4:10, 13:15, 0] = 250
    detection = audit.detect(image)
    assert detection.found and detection.boxes == ((10, 4, 5, 6),)


def test_prevalence_and_the_tests_are_a_direct_count():
    labels = [0] * 20 + [1] * 25 + [2] * 15 + [None] * 4
    found = [True] * 12 + [False] * 8 + [True] * 3 + [False] * 22 + [True] * 2 + [False] * 13
    found += [True, False, True, False]
    counts = audit.MarkerCounts(("a", "b", "c"))
    counts.add(range(len(labels)), labels, [audit.Detection(f) for f in found])
    result = counts.results()
    assert (result.films, result.marked) == (64, 19)
    a, b, c = result.classes
    assert (a.films, a.marked, a.prevalence) == (20, 12, 0.6)
    assert a.rest_prevalence == pytest.approx(5 / 40)
    assert a.p_value == pytest.approx(
        stats.fisher_exact([[12, 8], [5, 35]], alternative="greater").pvalue)
    assert result.chi_square_p == pytest.approx(
        stats.chi2_contingency([[12, 3, 2], [8, 22, 13]]).pvalue)
    assert result.warned_classes == ["a"]  # 0.6 - 0.125 >= 0.3 and p < 0.01
    assert (b.prevalence, c.prevalence) == (3 / 25, 2 / 15) and not (b.warned or c.warned)


def test_a_small_gap_or_a_weak_test_is_no_warning():
    counts = audit.MarkerCounts(("a", "b"), films=[40, 40], marked=[20, 10])  # gap 0.25
    assert counts.results().warned_classes == []
    counts = audit.MarkerCounts(("a", "b"), films=[3, 40], marked=[3, 4])  # gap 0.9, p 0.002
    assert counts.results().warned_classes == ["a"]
    counts = audit.MarkerCounts(("a", "b"), films=[2, 40], marked=[2, 4])  # gap 0.9, p 0.01
    assert counts.results().warned_classes == []


def test_parts_merge_in_any_order_into_one_pass():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 40).tolist()
    detections = [audit.Detection(bool(f), ((1, 1, 2, 2),) if f else ())
                  for f in rng.random(40) < 0.3]
    whole = audit.MarkerCounts(("a", "b", "c"))
    whole.add(range(40), labels, detections)
    parts = []
    for chunk in (slice(25, 40), slice(0, 10), slice(10, 25)):
        part = audit.MarkerCounts(("a", "b", "c"))
        part.add(range(40)[chunk], labels[chunk], detections[chunk])
        parts.append(part)
    merged = parts[0].merge(parts[1]).merge(parts[2])
    assert merged.results() == whole.results()
    assert [p for p, _ in whole.results().examples] == [
        i for i, d in enumerate(detections) if d.found][: audit.EXAMPLES]


def the_whole_rule(monkeypatch):
    """`detect` with its two shortcuts (the interleaved zone check and the group prefilter)
    turned off: every film goes through the whole rule."""
    monkeypatch.setattr(audit, "_bright_in_zone", lambda image: True)
    monkeypatch.setattr(audit, "_any_candidate", lambda stats, shape: True)


@pytest.mark.parametrize("size", [64, 237])
def test_the_cheap_early_exits_change_no_detection(size, monkeypatch):
    """Clean films (bright bone near the top edge among them, which passes the zone check),
    confounded ones, coloured and odd films: the same detections with and without the
    shortcuts that let most films out early."""
    films = [synthetic.generate(i, 5, size).image for i in range(60)]
    films += [case.image for case in confounded(CONFOUNDS[3], size)[0][:30]]
    films += [case.image for case in confounded(CONFOUNDS[5], size)[0][:30]]
    coloured = np.full((size, size, 3), 80, np.uint8)
    coloured[4:10, 10:14, 2] = 250  # blue text: one channel only
    inside = np.full((size, size), 90, np.uint8)
    inside[size // 2 - 4 : size // 2 + 4, size // 2 - 4 : size // 2 + 4] = 255
    corner_speck = np.full((size, size), 90, np.uint8)
    corner_speck[:2, :2] = 255
    films += [coloured, inside, corner_speck, np.full((size, size, 3), 255, np.uint8)]
    fast = audit.detect_batch(films)
    assert sum(d.found for d in fast) > 20  # the confounded films' markers
    the_whole_rule(monkeypatch)
    assert audit.detect_batch(films) == fast


@pytest.mark.slow
def test_train_says_before_any_model_exists_that_markers_tell_the_classes_apart(tmp_path):
    """`train` audits its training films: on synthetic-confounded (a tag on most COVID-19
    films) it warns on stderr and logs markers.* with the training run; on clean films it
    logs the counts and says nothing."""
    import mlflow

    from tests.conftest import cli_env, run_cli

    env = cli_env(tmp_path)
    confounded = run_cli(["train", "--data", "synthetic-confounded:60", "--epochs", "1",
                          "--image-size", "128", "--model-name", "marked"], env, tmp_path)
    clean = run_cli(["train", "--data", "synthetic:60", "--epochs", "1", "--image-size", "64",
                     "--model-name", "clean"], env, tmp_path)
    assert "burned-in markers are far more common in one class: COVID-19" in confounded.stderr
    assert "burned-in markers" not in clean.stderr
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    runs = mlflow.search_runs(experiment_names=["tests"], order_by=["start_time ASC"])
    assert runs["metrics.markers.warned_classes"].tolist() == [1.0, 0.0]
    assert runs["metrics.markers.prevalence.COVID-19"].iloc[0] > 0.5
