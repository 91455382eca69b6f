"""Which CAM method to believe for this model (`python -m report methods`).

Every method and both baselines explain the same sample of images; each is scored by the same
trust checks, and the methods are ranked for this model:

- faithfulness: deletion (Petsiuk et al. 2018) and ROAD (Rong et al. 2022), whose removed
  pixels are imputed from their neighbours rather than blackened;
- localisation, where the data have lesion masks or boxes: Otsu-thresholded IoU
  (CheXlocalize, Saporta et al. 2022);
- the sanity check (Adebayo et al. 2018): a method whose maps survive the randomisation of
  the model's weights cannot be recommended;
- robustness under acquisition changes (noise, a 4 px shift, JPEG, contrast), shown but not
  ranked: a stable map is not a right one;
- cost per image, on this machine.

The recommendation is the best mean rank among the methods that pass the sanity check and
beat both baselines on ROAD; none is recommended when no method does, and the report says so.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from scipy.stats import rankdata
from tqdm import tqdm

from report import checks, i18n
from report.baselines import faithfulness_scores, localisation_scores
from report.cam.engine import BASELINES, METHODS, make_engine
from report.data.batches import iter_batches
from report.data.records import Skipped
from report.errors import UserError
from report.i18n import N_, decimal, number, signed
from report.streaming import preprocess

FAITHFULNESS_STEPS = 10  # deletion at 0, 10%, ..., 100% of the pixels
# ROAD's imputations are a sparse solve each (about 0.1 s at 224 px for half the pixels), so
# fewer images than deletion's forward passes.
ROAD_IMAGES = 16
SANITY_IMAGES, SANITY_STAGES = 8, 5
GALLERY_IMAGES = 4  # images shown under every method, side by side

# (key, label, higher is better, ranked). Ranks are among the methods, not the baselines.
# The labels are the ranking table's headers, translated where shown (`_(label)`).
CRITERIA = (
    ("deletion_auc", N_("Deletion AUC"), False, True),
    ("road_gap", N_("ROAD gap"), True, True),
    ("otsu_iou", N_("Otsu IoU"), True, True),
    ("sanity", N_("Sanity"), False, True),
    ("seconds_per_image", N_("ms / image"), False, True),
    ("insertion_auc", N_("Insertion AUC"), True, False),
    ("robustness", N_("Robustness"), True, False),
)


@dataclass(frozen=True)
class Sample:
    """The images every method explains: model inputs, 8-bit pixels for the gallery, labels
    (-1 when unlabelled) and lesion masks (None where the source has none)."""

    image_ids: list[str]
    pixels: np.ndarray  # uint8 (N, H, W, 3)
    inputs: np.ndarray  # float32 (N, H, W, C)
    labels: np.ndarray
    lesion_masks: list[np.ndarray | None]
    skipped: list[Skipped]

    @property
    def masked(self) -> np.ndarray:
        return np.array([mask is not None and mask.any() for mask in self.lesion_masks])

    @property
    def lesion_stack(self) -> np.ndarray:
        """(N, H, W) bool, all False where an image has no mask."""
        empty = np.zeros(self.pixels.shape[1:3], bool)
        return np.stack([empty if mask is None else mask.astype(bool)
                         for mask in self.lesion_masks])


@dataclass
class MethodScore:
    method: str
    title: str
    baseline: bool
    values: dict[str, float]  # criterion key -> value (nan when not measured)
    maps: np.ndarray  # the gallery images' maps (G, H, W)
    ranks: dict[str, int] = field(default_factory=dict)
    mean_rank: float = float("nan")

    @property
    def sanity_passed(self) -> bool:
        """nan (every randomised map flat) is no pass: nothing showed the maps changed."""
        return self.values["sanity"] < checks.SANITY_PASS


@dataclass
class MethodsRanking:
    model_label: str
    data_label: str
    class_names: tuple[str, ...]
    sample: Sample
    classes: np.ndarray  # the class each map explains (the model's prediction)
    scores: list[MethodScore]
    recommended: str | None
    has_masks: bool
    language: str = "en"  # what its report is written in, unless the caller says otherwise

    def score(self, method: str) -> MethodScore:
        return next(score for score in self.scores if score.method == method)

    @property
    def methods(self) -> list[MethodScore]:
        return [score for score in self.scores if not score.baseline]

    @property
    def baselines(self) -> list[MethodScore]:
        return [score for score in self.scores if score.baseline]

    def metrics(self) -> dict[str, float]:
        """`methods.<method>.<criterion>` and `methods.<method>.mean_rank`, for MLflow
        (gradcam++ as gradcam__: MLflow keys allow no "+")."""
        from report.artifacts import metric_keys

        flat = {}
        for score in self.scores:
            for key, value in score.values.items():
                if np.isfinite(value):
                    flat[f"methods.{score.method}.{key}"] = float(value)
            if np.isfinite(score.mean_rank):
                flat[f"methods.{score.method}.mean_rank"] = score.mean_rank
        keys = metric_keys(flat)
        return {keys[name]: value for name, value in flat.items()}


def rank_methods(loaded, source, values, data_label: str) -> MethodsRanking:
    """Explain `values["sample"]` images of `source` with every method and baseline, score
    each, rank the methods and pick one (see the module's docstring)."""
    metadata = loaded.metadata
    sample = load_sample(source, metadata, values["sample"], values["batch_size"], data_label)
    shape = (*metadata.image_size, metadata.channels)
    layer = metadata.layer_for(values["layer"])
    classes, scores = None, []
    bar = tqdm([*METHODS, *BASELINES], desc="Scoring methods", unit="method")
    for name in bar:
        bar.set_postfix_str(name)
        engine = make_engine(name, loaded.model, layer, values["score"], shape)
        maps, seconds, classes = _explain_timed(engine, sample.inputs, classes,
                                                values["batch_size"])
        scores.append(MethodScore(name, engine.title, engine.baseline,
                                  _scored(engine, sample, maps, classes, values["batch_size"],
                                          seconds), maps[:GALLERY_IMAGES]))
    has_masks = bool(sample.masked.any())
    _rank(scores, has_masks)
    return MethodsRanking(loaded_label(loaded), data_label, metadata.class_names, sample,
                          classes, scores, recommend(scores), has_masks,
                          values.get("language", "en"))


def loaded_label(loaded) -> str:
    return f"{loaded.name} v{loaded.version}" if loaded.version else loaded.name


def load_sample(source, metadata, count: int, batch_size: int, data_label: str) -> Sample:
    """The first `count` readable images of `source`, decoded once for every method."""
    skipped: list[Skipped] = []
    ids, pixels, masks, labels = [], [], [], []
    for batch in iter_batches(source, source.records, metadata.image_size, batch_size,
                              skipped):
        for record, image in zip(batch.records, batch.images, strict=True):
            if len(ids) == count:
                break
            ids.append(record.image_id)
            pixels.append(image.pixels)
            masks.append(image.lesion_mask)
            labels.append(-1 if record.label is None else record.label)
        if len(ids) == count:
            break
    if len(ids) < 2:
        raise UserError(f"data: '{data_label}' has {len(ids)} readable image(s); ranking "
                        "methods needs at least 2: choose other data or another split")
    pixels = np.stack(pixels)
    return Sample(ids, pixels, preprocess(pixels, metadata), np.asarray(labels), masks,
                  skipped)


def _explain_timed(engine, inputs, classes, batch_size: int):
    """Maps at input size, seconds per image after the compile, and the explained classes
    (the predictions, kept from the first method so every method explains the same class)."""
    engine.explain(inputs[:1], None if classes is None else classes[:1])  # compile, untimed
    started = time.perf_counter()
    parts = [engine.explain(inputs[i : i + batch_size],
                            None if classes is None else classes[i : i + batch_size])
             for i in range(0, len(inputs), batch_size)]
    seconds = (time.perf_counter() - started) / len(inputs)
    maps = np.concatenate([part.maps for part in parts])
    explained = np.concatenate([part.class_index for part in parts])
    return maps, seconds, explained if classes is None else classes


def _scored(engine, sample: Sample, maps, classes, batch_size: int, seconds: float
            ) -> dict[str, float]:
    from report import robustness

    faithful, _ = faithfulness_scores(engine, sample.inputs, maps, classes, sample.labels,
                                      FAITHFULNESS_STEPS, batch_size, ROAD_IMAGES)
    sanity = checks.cascading_randomisation(engine, sample.inputs[:SANITY_IMAGES],
                                            classes[:SANITY_IMAGES], SANITY_STAGES)
    stable = robustness.robustness(engine, sample.inputs, maps, classes, batch_size)
    return {
        **{key: faithful[key] for key in ("deletion_auc", "insertion_auc", "road_morf_auc",
                                          "road_lerf_auc", "road_gap")},
        "otsu_iou": localisation_scores(maps, sample.labels, classes,
                                        sample.lesion_stack)["otsu_iou"],
        "sanity": sanity.final_correlation,
        "robustness": stable.mean_spearman,
        "seconds_per_image": seconds,
    }


def _rank(scores: list[MethodScore], has_masks: bool) -> None:
    """Rank the methods (not the baselines) on each ranked criterion, 1 the best; a method's
    mean rank weighs faithfulness (deletion, ROAD) and localisation as much as the sanity
    check and the cost together."""
    methods = [score for score in scores if not score.baseline]
    for key, _, higher, ranked in CRITERIA:
        if not ranked or (key == "otsu_iou" and not has_masks):
            continue
        values = np.array([_as_shown(key, score.values[key]) for score in methods])
        ordered = -values if higher else values
        ordered = np.where(np.isfinite(ordered), ordered, np.inf)  # unmeasured ranks last
        # Equal values share the better place: a tie is not decided by the list's order.
        for score, place in zip(methods, rankdata(ordered, method="min"), strict=True):
            score.ranks[key] = int(place)
    weights = {"deletion_auc": 1.0, "road_gap": 1.0, "otsu_iou": 1.0, "sanity": 0.5,
               "seconds_per_image": 0.5}
    for score in methods:
        used = {key: weights[key] for key in score.ranks}
        score.mean_rank = sum(score.ranks[k] * w for k, w in used.items()) / sum(used.values())


def _as_shown(key: str, value: float) -> float:
    """Values compared at the precision the report shows them (0.001; costs 0.1 ms), so
    timing noise and float round-off do not decide a rank."""
    return round(value, 4 if key == "seconds_per_image" else 3)


def best_baseline_gap(scores: list[MethodScore]) -> float:
    """The best ROAD gap a baseline reached: what a method must beat."""
    gaps = [score.values["road_gap"] for score in scores if score.baseline
            and np.isfinite(score.values["road_gap"])]
    return max(gaps, default=-np.inf)


def recommend(scores: list[MethodScore]) -> str | None:
    """The best mean rank among methods that pass the sanity check and beat both baselines
    on the ROAD gap; None when no method does."""
    floor = best_baseline_gap(scores)
    eligible = [score for score in scores if not score.baseline and score.sanity_passed
                and score.values["road_gap"] > floor]
    if not eligible:
        return None
    return min(eligible, key=lambda score: score.mean_rank).method


def reasons(ranking: MethodsRanking) -> list[str]:
    """Why the recommended method: its place on each criterion, in words, in the language
    in use (`i18n.use`)."""
    _ = i18n._
    if ranking.recommended is None:
        return []
    best = ranking.score(ranking.recommended)
    count = len(ranking.methods)
    # %(rank)s: the method's place among the methods, "1st of 8" (place_of).
    words = {
        "deletion_auc": lambda v, rank: _("deletion AUC %(value)s (%(rank)s)")
        % {"value": decimal(v, 3), "rank": rank},
        "road_gap": lambda v, rank: _("ROAD gap %(value)s (%(rank)s)")
        % {"value": signed(v, 3), "rank": rank},
        "otsu_iou": lambda v, rank: _("Otsu IoU with the lesion masks %(value)s (%(rank)s)")
        % {"value": decimal(v, 2), "rank": rank},
        "sanity": lambda v, rank: _("Spearman %(value)s after the weights are randomised "
                                    "(%(rank)s)") % {"value": decimal(v, 2), "rank": rank},
        "seconds_per_image": lambda v, rank: _("%(value)s ms per image (%(rank)s)")
        % {"value": decimal(v * 1000, 1), "rank": rank},
    }
    lines = [words[key](best.values[key], place_of(place, count))
             for key, place in best.ranks.items()]
    floor = ", ".join(f"{_(score.title)} {signed(score.values['road_gap'], 3)}"
                      for score in ranking.baselines)
    lines.append(_("beats the baselines on ROAD: %(baselines)s") % {"baselines": floor})
    return lines


def place_of(place: int, count: int) -> str:
    """ "1st of 8": the English ordinal's form picks the message (1st, 2nd, 3rd, 4th...),
    which each language translates whole ("%(place)sº de %(count)s" in Portuguese)."""
    _ = i18n._
    values = {"place": number(place), "count": number(count)}
    form = "th" if 10 <= place % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(place % 10,
                                                                                "th")
    if form == "st":
        # TRANSLATORS: an English ordinal (1st, 21st...): the place among %(count)s methods.
        return _("%(place)sst of %(count)s") % values
    if form == "nd":
        # TRANSLATORS: an English ordinal (2nd, 22nd...): the place among %(count)s methods.
        return _("%(place)snd of %(count)s") % values
    if form == "rd":
        # TRANSLATORS: an English ordinal (3rd, 23rd...): the place among %(count)s methods.
        return _("%(place)srd of %(count)s") % values
    # TRANSLATORS: an English ordinal (4th, 11th...): the place among %(count)s methods.
    return _("%(place)sth of %(count)s") % values
