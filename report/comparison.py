"""Champion against challenger: the same images through two model versions, their
predictions and explanations compared, and one verdict for the promotion gate.

    data -> audit with the baseline   ─┐
         -> audit with the candidate  ─┴─> pairs by image id -> paired statistics (paired.py)
                                                              -> map agreement per image
                                                              -> flipped predictions
                                                              -> trust checks side by side
                                                              -> Comparison (verdict, metrics)

Each model keeps its own input size, target layer and map size; maps are brought to the
finer of the two grids before they are compared. Nothing here calls MLflow or renders.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from report import core, i18n, options, paired
from report.artifacts import artifact_names
from report.errors import UserError
from report.i18n import N_
from report.result import Audit

SIGNIFICANCE = 0.05  # McNemar's p below this, with an accuracy interval that excludes 0
DRIFT_SPEARMAN = 0.5  # median rank correlation of the two models' maps below this: drifted
TOP_FRACTION = 0.15
FLIPPED_SHOWN = 8  # per direction, most confident first
LEAST_AGREEING_SHOWN = 6
RESAMPLES = 1000
# The verdict stays English where it is a value (the `audit.verdict` tag, `compare.verdict`);
# N_ puts the words in the catalog, translated where shown (the CLI's summary).
BETTER, WORSE, SAME = N_("better"), N_("worse"), N_("not significantly different")
# Labels declared here, translated where shown (compare_report's trust table).
TRUST_METRICS = (
    ("faithfulness.deletion_auc", N_("Deletion AUC (lower is better)")),
    ("faithfulness.insertion_auc", N_("Insertion AUC (higher is better)")),
    ("localisation.pointing_game", N_("Pointing game")),
    ("localisation.energy_in_lesion", N_("Energy in the lesion")),
    ("sanity.final_spearman", N_("Sanity: Spearman after randomisation (lower is better)")),
    ("shortcut.border_energy", N_("Share of the salient map in the border band")),
    ("shortcut.outside_lung_energy", N_("Share of the salient map outside the lungs")),
)
GATES = {
    "none": (),
    "worse": ("worse",),
    "shortcut": ("shortcut",),
    "any": ("worse", "shortcut"),
}


@dataclass
class Side:
    """One model's part of the comparison: its identity and its whole audit."""

    role: str  # "baseline" | "candidate"
    loaded: object  # model.LoadedModel
    audit: Audit

    @property
    def label(self) -> str:
        version = f" v{self.loaded.version}" if self.loaded.version else ""
        alias = f" (@{self.loaded.alias})" if self.loaded.alias else ""
        return f"{self.loaded.name}{version}{alias}"


@dataclass
class Flip:
    image_id: str
    true_label: str
    baseline_label: str
    candidate_label: str
    baseline_confidence: float
    candidate_confidence: float
    overlays: tuple[bytes | None, bytes | None]  # baseline's, candidate's


@dataclass
class Comparison:
    """The result of `report.compare(...)`."""

    baseline: Side
    candidate: Side
    class_names: tuple[str, ...]
    pairs: pd.DataFrame  # per labelled image explained by both: ids, labels, predictions
    accuracy: paired.Interval
    macro_f1: paired.Interval
    per_class: dict[str, list[paired.Interval]]
    mcnemar: paired.McNemar
    spearman: np.ndarray  # per pair, the two maps' rank correlation
    iou: np.ndarray  # per pair, IoU of their top-15% regions
    fixed: list[Flip]
    broken: list[Flip]
    newly_flagged: list[str]
    verdict: str
    drifted: bool
    language: str = "en"  # what to_html / to_pdf write in (options: language)
    # Owns the audits' folder when the caller gave none: removed with the Comparison.
    _workspace: object = field(default=None, repr=False)

    def to_html(self, path) -> Path:
        """Write the self-contained HTML comparison report to `path`."""
        from report import compare_report

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(compare_report.render_html(self, language=self.language),
                        encoding="utf-8")
        return path

    def to_pdf(self, path) -> Path:
        """Write the PDF comparison report (the disclaimer on every page) to `path`."""
        from report import compare_report, render

        return render.write_pdf(compare_report.render_html(self, language=self.language),
                                Path(path))

    @property
    def new_shortcut(self) -> bool:
        return bool(self.newly_flagged)

    def gate(self, fail_on: str) -> list[str]:
        """Why the promotion gate `fail_on` fails (empty when it passes)."""
        reasons = []
        if "worse" in GATES[fail_on] and self.verdict == WORSE:
            reasons.append(f"the candidate is significantly worse (accuracy "
                           f"{self.accuracy.estimate:+.1%}, McNemar p = "
                           f"{self.mcnemar.p_value:.3g})")
        if "shortcut" in GATES[fail_on] and self.new_shortcut:
            reasons.append("a new shortcut in the candidate: "
                           + ", ".join(self.newly_flagged))
        return reasons

    @property
    def metrics(self) -> dict[str, float]:
        counts = self.pairs
        values = {
            "compare.images": len(counts),
            "compare.accuracy.baseline": float(counts.baseline_correct.mean()),
            "compare.accuracy.candidate": float(counts.candidate_correct.mean()),
            "compare.accuracy.difference": self.accuracy.estimate,
            "compare.accuracy.difference_low": self.accuracy.low,
            "compare.accuracy.difference_high": self.accuracy.high,
            "compare.macro_f1.difference": self.macro_f1.estimate,
            "compare.macro_f1.difference_low": self.macro_f1.low,
            "compare.macro_f1.difference_high": self.macro_f1.high,
            "compare.mcnemar_p": self.mcnemar.p_value,
            "compare.fixed": self.mcnemar.fixed,
            "compare.broken": self.mcnemar.broken,
            "compare.maps.spearman_median": finite_median(self.spearman),
            "compare.maps.top15_iou_median": finite_median(self.iou),
            "compare.newly_flagged_classes": len(self.newly_flagged),
            "compare.better": float(self.verdict == BETTER),
            "compare.worse": float(self.verdict == WORSE),
        }
        return {name: float(value) for name, value in values.items()}


def compare(baseline, candidate, data, values: Mapping, folder: Path) -> Comparison:
    """Audit `data` with both loaded models into `folder/baseline` and `folder/candidate`
    and compare them. `values`: checked options of options.COMPARE."""
    names = tuple(baseline.metadata.class_names)
    if sorted(candidate.metadata.class_names) != sorted(names):
        raise UserError(f"the two models have different classes ({', '.join(names)} against "
                        f"{', '.join(candidate.metadata.class_names)}); compare models of "
                        "the same classes")
    models = {"baseline": baseline, "candidate": candidate}
    audits = _audits(models, data, values, folder)
    sides = [Side(role, models[role], audit) for role, audit in zip(models, audits,
                                                                     strict=True)]
    pairs = _pairs(sides[0].audit, sides[1].audit, names)
    if pairs.empty:
        raise UserError("no labelled image was explained by both models; compare on "
                        "labelled data")
    comparison = _measure(sides, names, pairs)
    comparison.language = values.get("language", "en")
    return comparison


def _audits(models: dict, data, values: Mapping, folder: Path) -> list[Audit]:
    """Both models' audits of `data` in one pass: each film decoded once."""
    # The audit's defaults for what each model chooses for itself (its layer) or what a
    # comparison does not offer (drawing, the backend), the comparison's values for the rest.
    explain = options.defaults("explain")
    shared = {name: value for name, value in values.items() if name in explain}
    explain_values = {**explain, **shared, "class_names": None}
    opened = [core.open_data(data, model.metadata.class_names, explain_values)
              for model in models.values()]
    folders = [core.writable_folder(folder / role, "output_dir") for role in models]
    # The audits word what they show in the report's language; the sources were opened
    # outside it, so their descriptions, which are params, stay English.
    with i18n.use(explain_values["language"]):
        return core.run_audits_together(list(models.values()),
                                        [source for source, _ in opened], explain_values,
                                        folders, opened[0][1])


def _pairs(a: Audit, b: Audit, names: tuple[str, ...]) -> pd.DataFrame:
    """One row per labelled image both models explained, keyed by image id."""
    columns = ["image_id", "true_label", "predicted_label"]
    left, right = a.predictions, b.predictions
    left = left[(left.predicted_label != "") & (left.true_label.isin(names))]
    right = right[(right.predicted_label != "") & (right.true_label.isin(names))]
    merged = left[columns + [f"prob_{n}" for n in names]].merge(
        right[columns + [f"prob_{n}" for n in names]], on=["image_id", "true_label"],
        suffixes=("_baseline", "_candidate"))
    index = {name: i for i, name in enumerate(names)}
    rows = np.arange(len(merged))
    # Added in one concat: one column at a time fragments a frame of many prob_ columns.
    added = {}
    for role in ("baseline", "candidate"):
        predicted = merged[f"predicted_label_{role}"]
        classes = predicted.map(index).astype(int)
        probabilities = merged[[f"prob_{name}_{role}" for name in names]].to_numpy(float)
        added[f"{role}_class"] = classes
        added[f"{role}_correct"] = predicted == merged.true_label
        added[f"{role}_confidence"] = probabilities[rows, classes.to_numpy()]
    added["true_class"] = merged.true_label.map(index).astype(int)
    return pd.concat([merged, pd.DataFrame(added, index=merged.index)], axis=1)


def _measure(sides: list[Side], names, pairs: pd.DataFrame) -> Comparison:
    y_true = pairs.true_class.to_numpy()
    pred_a, pred_b = pairs.baseline_class.to_numpy(), pairs.candidate_class.to_numpy()
    accuracy = paired.paired_bootstrap(y_true, pred_a, pred_b, paired.accuracy,
                                       resamples=RESAMPLES)
    macro_f1 = paired.paired_bootstrap(y_true, pred_a, pred_b, paired.macro_f1(len(names)),
                                       resamples=RESAMPLES)
    per_class = paired.per_class_bootstrap(y_true, pred_a, pred_b, len(names),
                                           resamples=RESAMPLES)
    mcnemar = paired.mcnemar_exact(pairs.baseline_correct.to_numpy(),
                                   pairs.candidate_correct.to_numpy())
    spearman, iou = _map_agreement(sides, pairs.image_id.tolist())
    flagged = [set(side.audit.shortcut_classes) for side in sides]
    drifted = bool(np.isfinite(spearman).any() and finite_median(spearman) < DRIFT_SPEARMAN)
    return Comparison(
        baseline=sides[0], candidate=sides[1], class_names=names, pairs=pairs,
        accuracy=accuracy, macro_f1=macro_f1, per_class=per_class, mcnemar=mcnemar,
        spearman=spearman, iou=iou,
        fixed=_flips(sides, pairs, ~pairs.baseline_correct & pairs.candidate_correct),
        broken=_flips(sides, pairs, pairs.baseline_correct & ~pairs.candidate_correct),
        newly_flagged=sorted(flagged[1] - flagged[0]),
        verdict=_verdict(accuracy, mcnemar), drifted=drifted,
    )


def _verdict(accuracy: paired.Interval, mcnemar: paired.McNemar) -> str:
    """Better or worse only when both agree: McNemar's test rejects equal error rates and
    the accuracy difference's interval lies on one side of zero."""
    if mcnemar.p_value >= SIGNIFICANCE or not accuracy.excludes_zero:
        return SAME
    return BETTER if accuracy.estimate > 0 else WORSE


def _map_agreement(sides: list[Side], image_ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Both models' raw maps of each image on the finer of the two grids."""
    maps = [side.audit.maps for side in sides]
    if not image_ids:
        return np.array([]), np.array([])
    first = [np.asarray(m[image_ids[0]]) for m in maps]
    size = max((f.shape for f in first), key=lambda shape: shape[0] * shape[1])
    spearman, iou = [], []
    chunk = 256  # bounded memory: maps are compared a chunk at a time
    for start in range(0, len(image_ids), chunk):
        ids = image_ids[start : start + chunk]
        a, b = (paired.to_common_size(np.stack([m[i] for i in ids]), size) for m in maps)
        spearman.append(paired.rank_correlation(a, b))
        iou.append(paired.top_region_iou(a, b, TOP_FRACTION))
    return np.concatenate(spearman), np.concatenate(iou)


def _flips(sides: list[Side], pairs: pd.DataFrame, chosen) -> list[Flip]:
    rows = pairs[chosen].copy()
    rows["_sure"] = np.maximum(rows.baseline_confidence, rows.candidate_confidence)
    flips = []
    for _, row in rows.sort_values(["_sure", "image_id"], ascending=[False, True]).iterrows():
        flips.append(Flip(
            image_id=row.image_id, true_label=row.true_label,
            baseline_label=row.predicted_label_baseline,
            candidate_label=row.predicted_label_candidate,
            baseline_confidence=float(row.baseline_confidence),
            candidate_confidence=float(row.candidate_confidence),
            overlays=tuple(overlay_of(side.audit, row.true_label, row.image_id)
                           if len(flips) < FLIPPED_SHOWN else None for side in sides),
        ))
    return flips


def overlay_of(audit: Audit, true_label: str, image_id: str) -> bytes | None:
    folder = audit.artifacts_dir / "overlays" / artifact_names(audit.context.class_names).get(
        true_label, true_label)
    found = sorted(folder.glob(f"{image_id}.*"))
    return found[0].read_bytes() if found else None


def finite_median(values) -> float:
    finite = np.asarray(values, dtype=float)
    finite = finite[np.isfinite(finite)]
    return float(np.median(finite)) if finite.size else float("nan")
