"""Champion against challenger (`report.compare`, `python -m report compare`).

The fast tests compare two untrained models of different architectures and input sizes (a
flat small CNN at 48 px against the demo's nested backbone at 64 px) on the same synthetic
films; the slow one runs the README's worked example for real: a clean demo model as the
champion, a model trained on confounded films as the challenger, and `--fail-on shortcut`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from pypdf import PdfReader

import report
from report import comparison as comparing
from report.cli import GATE_FAILED
from report.model import build_classifier
from report.render import DISCLAIMER
from tests.conftest import cli_env, tiny_classifier

CLASSES = ["COVID-19", "NORMAL", "OTHER_INFECTION"]


@pytest.fixture(scope="module")
def duel(tmp_path_factory):
    baseline = tiny_classifier(48, "flat-small", convs=1, seed=1)
    candidate = build_classifier("small-cnn", 3, (64, 64))  # a backbone nested in its head
    folder = tmp_path_factory.mktemp("compare")
    return report.compare(baseline, candidate, "synthetic:60", split="all",
                          class_names=CLASSES, output_dir=str(folder), batch_size=16)


def test_two_architectures_are_compared_on_the_same_images(duel):
    assert len(duel.pairs) == 60
    sizes = {side.audit.params["target_map_size"] for side in (duel.baseline, duel.candidate)}
    assert len(sizes) == 2, "the two models' maps should come at different sizes"
    assert duel.spearman.shape == duel.iou.shape == (60,)
    finite = duel.iou[np.isfinite(duel.iou)]
    assert finite.size and ((finite >= 0) & (finite <= 1)).all()


def test_each_film_is_decoded_once_for_both_models(tmp_path, monkeypatch):
    from report.data.synthetic_source import SyntheticSource

    sizes = []
    original = SyntheticSource.load

    def counted(self, record, image_size):
        sizes.append(tuple(image_size))
        return original(self, record, image_size)

    monkeypatch.setattr(SyntheticSource, "load", counted)
    result = report.compare(tiny_classifier(48, "a", seed=1), tiny_classifier(40, "b", seed=2),
                            "synthetic:12", split="all", class_names=CLASSES,
                            output_dir=None, quality="off")
    assert len(result.pairs) == 12
    assert sizes == [(48, 48)] * 12  # once each, at the larger input size


def test_fixed_and_broken_are_a_direct_count_of_the_two_prediction_files(duel):
    a = duel.baseline.audit.predictions.set_index("image_id")
    b = duel.candidate.audit.predictions.set_index("image_id")
    right_a = a.predicted_label == a.true_label
    right_b = b.predicted_label.reindex(a.index) == a.true_label
    assert len(duel.fixed) == int((~right_a & right_b).sum()) == duel.mcnemar.fixed
    assert len(duel.broken) == int((right_a & ~right_b).sum()) == duel.mcnemar.broken
    assert {f.image_id for f in duel.fixed} == set(a.index[~right_a & right_b])
    assert duel.metrics["compare.fixed"] == len(duel.fixed)


def test_the_verdict_follows_the_test_and_the_interval(duel):
    accuracy = duel.accuracy
    expected = (comparing.SAME if duel.mcnemar.p_value >= comparing.SIGNIFICANCE
                or not accuracy.excludes_zero
                else comparing.BETTER if accuracy.estimate > 0 else comparing.WORSE)
    assert duel.verdict == expected
    difference = duel.pairs.candidate_correct.mean() - duel.pairs.baseline_correct.mean()
    assert accuracy.estimate == pytest.approx(difference)
    assert accuracy.low <= accuracy.estimate <= accuracy.high


def test_gates_fail_only_on_what_they_name(duel, monkeypatch):
    assert duel.gate("none") == []
    monkeypatch.setattr(duel, "newly_flagged", [])
    monkeypatch.setattr(duel, "verdict", comparing.SAME)
    assert duel.gate("any") == []
    monkeypatch.setattr(duel, "newly_flagged", ["COVID-19"])
    monkeypatch.setattr(duel, "verdict", comparing.WORSE)
    assert [r.split(" ")[0] for r in duel.gate("any")] == ["the", "a"]
    assert "COVID-19" in duel.gate("shortcut")[0] and len(duel.gate("shortcut")) == 1
    assert "worse" in duel.gate("worse")[0] and len(duel.gate("worse")) == 1


def test_a_better_candidate_with_a_new_shortcut_gets_no_green_mark(duel, monkeypatch):
    from report import compare_report

    monkeypatch.setattr(duel, "verdict", comparing.BETTER)
    monkeypatch.setattr(duel, "newly_flagged", [])
    assert compare_report.findings(duel)[0].level == "pass"
    monkeypatch.setattr(duel, "newly_flagged", ["COVID-19"])
    first, *rest = compare_report.findings(duel)
    assert first.level == "info" and "is better than" in first.text
    assert any(f.level == "warn" and "COVID-19" in f.text for f in rest)


def test_the_comparison_report_has_every_part_and_the_disclaimer_on_every_page(duel,
                                                                               tmp_path):
    html = duel.to_html(tmp_path / "compare.html").read_text(encoding="utf-8")
    for heading in ("Read this first", "Metrics side by side", "Flipped predictions",
                    "Do the two models look at the same places?", "Trust checks side by side"):
        assert heading in html
    pages = PdfReader(duel.to_pdf(tmp_path / "compare.pdf")).pages
    assert len(pages) >= 2
    assert all(DISCLAIMER.split(".")[0] in page.extract_text() for page in pages)


@pytest.mark.slow
def test_the_readme_worked_example_flags_the_confounded_challenger(tmp_path):
    """README, "Champion against challenger": the challenger scores higher on confounded
    films, the report names its new shortcut, and --fail-on shortcut exits 3."""
    env = {**cli_env(tmp_path), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}

    def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run([sys.executable, "-m", "report", *args], env=env,
                                cwd=tmp_path, capture_output=True, text=True, timeout=1200)
        assert not check or result.returncode == 0, f"{result.stdout}\n{result.stderr}"
        return result

    cli("train", "--data", "synthetic", "--model-name", "cxr-classifier", "--alias", "champion")
    cli("train", "--data", "synthetic-confounded", "--model-name", "cxr-classifier",
        "--alias", "challenger")
    result = cli("compare", "--baseline", "models:/cxr-classifier@champion",
                 "--candidate", "models:/cxr-classifier@challenger",
                 "--data", "synthetic-confounded", "--fail-on", "shortcut", check=False)
    assert result.returncode == GATE_FAILED, f"{result.stdout}\n{result.stderr}"
    assert "newly flagged for a shortcut: COVID-19" in result.stdout
    assert "gate --fail-on shortcut failed" in result.stderr.splitlines()[-1]

    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    client = MlflowClient()
    experiment = client.get_experiment_by_name("tests")
    run = client.search_runs([experiment.experiment_id], "tags.mlflow.runName LIKE 'compare-%'"
                             )[0]
    metrics = run.data.metrics
    assert metrics["compare.accuracy.candidate"] > metrics["compare.accuracy.baseline"]
    assert metrics["compare.newly_flagged_classes"] == 1
    assert run.data.params["candidate_version"] == "2"
    version = client.get_model_version("cxr-classifier", "2")
    assert version.tags["audit.compare_run_id"] == run.info.run_id
    assert version.tags["audit.verdict"] in (comparing.BETTER, comparing.SAME)
    names = {a.path for a in client.list_artifacts(run.info.run_id, "report")}
    assert names == {"report/compare.html", "report/compare.pdf"}


def test_models_of_different_classes_are_refused_in_one_line(tmp_path):
    from report import api
    from report.errors import UserError

    values = {"class_names": CLASSES, "unsafe_deserialization": False}
    baseline = api._loaded_model(tiny_classifier(48, "a"), values)
    candidate = api._loaded_model(tiny_classifier(48, "b"),
                                  {**values, "class_names": ["A", "B", "C"]})
    with pytest.raises(UserError, match="different classes") as raised:
        comparing.compare(baseline, candidate, "synthetic:6", {}, tmp_path)
    assert "\n" not in str(raised.value)


def test_models_that_order_their_classes_differently_are_paired_by_name(tmp_path):
    """A folder source lists its class folders in the model's class order: the two models'
    lists of the same images differ in order and in label indices."""
    from PIL import Image

    from report import api
    from report.data import synthetic

    for index in range(9):
        case = synthetic.generate(index, size=40)
        folder = tmp_path / "films" / CLASSES[case.label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(case.image[..., 0]).save(folder / f"film-{index}.png")
    values = {"class_names": CLASSES, "unsafe_deserialization": False}
    baseline = api._loaded_model(tiny_classifier(40, "a", seed=1), values)
    candidate = api._loaded_model(tiny_classifier(40, "b", seed=2),
                                  {**values, "class_names": CLASSES[::-1]})
    settings = report.options.resolve("compare", {"split": "all", "quality": "off"})
    result = comparing.compare(baseline, candidate, str(tmp_path / "films"), settings,
                               tmp_path / "out")
    assert len(result.pairs) == 9
    truth = {row.image_id: row.true_label for row in result.pairs.itertuples()}
    for side in (result.baseline, result.candidate):
        rows = side.audit.predictions
        assert dict(zip(rows.image_id, rows.true_label, strict=True)) == truth
