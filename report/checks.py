"""How far the heatmaps can be trusted: the measurements that need the data or the model.

The arithmetic of each metric lives in measures.py; this module feeds it. While the report
streams, `QualityAccumulator.add_batch` scores every image's map against its lung fields,
border band and lesion mask (and scores a random map the same way, so each number has a
reference), sums the maps per class for the mean heatmaps, and keeps a bounded sample of
model inputs. `finish` then runs the two checks that need extra forward passes on that
sample only: deletion/insertion faithfulness and the cascading-randomisation sanity check.
It also looks for burned-in markers on every decoded film (marker_audit, no model needed),
and keeps, in the same sample, what the counterfactual shortcut test needs
(`check_counterfactual`: hide what lies outside the lungs and watch the predictions). The
class-level shortcut verdict rests on that test's effect (`shortcut_verdicts`); the location
of the maps is its supporting evidence.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import cv2
import keras
import numpy as np
import tensorflow as tf

from report import counterfactual, i18n, marker_audit, measures
from report.cam.normalise import per_image
from report.i18n import N_, _, percent

if TYPE_CHECKING:
    from report.baselines import BaselineScores
    from report.counterfactual import ClassEffect, CounterfactualResult
    from report.marker_audit import MarkerAuditResult
    from report.robustness import Robustness

LEVELS = ("full", "fast", "off")
# Location measures of shortcuts (supporting evidence since the counterfactual test decides the
# class verdict, see `shortcut_verdicts`; still the verdict for a class the test could not
# test). Shortcut scores use each map's salient part (values >= half its maximum), see
# measures.salient_part. An image is flagged when more than IMAGE_FLAG of that lies in the border
# band (text markers, laterality tokens, collimation edges) or outside the lungs; a class when
# its mean border share passes BORDER_FLAG (the band is 30% of the image: random maps put about
# 0.30 there; the demo model's classes 0.06-0.19; a model trained on synthetic-confounded, 0.57
# for COVID-19) or its mean outside-lung share passes OUTSIDE_LUNGS_FLAG.
IMAGE_FLAG = 0.5
COUNTERFACTUAL_SEED = 0  # the bootstrap's: the same films give the same interval
BORDER_FLAG = 0.35
OUTSIDE_LUNGS_FLAG = 0.90
SANITY_PASS = 0.5  # mean Spearman correlation after full randomisation must fall below this
HIDDEN_EXAMPLES = 3  # films shown before and after hiding in the Shortcuts section
# Films in the counterfactual test's sample (QualityPlan.counterfactual_images). Measured on
# the demo model with 600 films at 237 px (README "A whole report run"): FAST_COUNTERFACTUAL
# keeps quality=fast's extra cost within 1x the streaming pass.
FAST_COUNTERFACTUAL = 48
FULL_COUNTERFACTUAL = 192


@dataclass(frozen=True)
class QualityPlan:
    level: str
    faithfulness_images: int  # images in the deletion/insertion sample
    steps: int  # fractions of pixels 0, 1/steps, ..., 1
    sanity_images: int
    sanity_stages: int
    # quality=full only: the method against its baselines (on `baseline_images` of the
    # sample, ROAD on the first `road_images`: a sparse solve per removed set) and the
    # robustness check. Both stay out of quality=fast, which must cost at most one pass.
    baseline_images: int = 0
    road_images: int = 0
    robustness_images: int = 0
    # The counterfactual shortcut test (counterfactual.py) on the first
    # `counterfactual_images` images: 4 predict passes over them plus the fills. Per-class
    # effects need about 15 films per class (MIN_IMAGES is 5) to give an interval narrower
    # than the flag's margin, so its sample is larger than the faithfulness one; 0: not run.
    counterfactual_images: int = 0
    counterfactual_resamples: int = counterfactual.BOOTSTRAP_RESAMPLES

    @classmethod
    def of(cls, level: str) -> QualityPlan:
        if level == "full":
            return cls(level, faithfulness_images=128, steps=20, sanity_images=16,
                       sanity_stages=8, baseline_images=32, road_images=16,
                       robustness_images=32, counterfactual_images=FULL_COUNTERFACTUAL)
        return cls(level, faithfulness_images=16, steps=6, sanity_images=8, sanity_stages=5,
                   counterfactual_images=FAST_COUNTERFACTUAL if level == "fast" else 0)

    @property
    def explanation_metrics(self) -> bool:
        return self.level != "off"

    @property
    def sample_images(self) -> int:
        """Images the sample keeps: those of smallest `sample_rank` serve every sample check
        (faithfulness, sanity, baselines and robustness take the first of them)."""
        if not self.explanation_metrics:
            return 0
        return max(self.faithfulness_images, self.counterfactual_images)


@dataclass
class MapScores:
    """Per-image scores of the model's maps and of random maps, with the images' classes and
    positions in the full record list (`add_images` first, then one `add` per score)."""

    labels: list[int] = field(default_factory=list)
    values: dict[str, list[float]] = field(default_factory=dict)
    positions: list[int] = field(default_factory=list)

    def add_images(self, positions, labels) -> None:
        self.positions.extend(int(p) for p in positions)
        self.labels.extend(labels)

    def add(self, name: str, numbers) -> None:
        self.values.setdefault(name, []).extend(float(v) for v in np.ravel(numbers))

    def array(self, name: str) -> np.ndarray:
        return np.asarray(self.values.get(name, []), dtype=float)

    def in_position_order(self) -> MapScores:
        order = sorted(range(len(self.positions)), key=self.positions.__getitem__)
        return MapScores(
            labels=[self.labels[i] for i in order],
            values={name: [scores[i] for i in order] for name, scores in self.values.items()},
            positions=[self.positions[i] for i in order],
        )

    def merge(self, other: MapScores) -> MapScores:
        names = list(dict.fromkeys([*self.values, *other.values]))
        joined = MapScores(
            labels=self.labels + other.labels,
            values={name: self.values.get(name, []) + other.values.get(name, [])
                    for name in names},
            positions=self.positions + other.positions,
        )
        return joined.in_position_order()


@dataclass
class Faithfulness:
    fractions: np.ndarray
    labels: np.ndarray
    curves: dict[str, np.ndarray]  # "deletion", "insertion", "random deletion", ... -> (n, S+1)
    average_drop: dict[str, float]  # "cam" / "random"
    increase_in_confidence: dict[str, float]


@dataclass
class Sanity:
    stages: list[str]  # per stage, the last layer randomised (all layers above it are too)
    correlations: list[np.ndarray]

    @property
    def final_correlation(self) -> float:
        return float(np.nanmean(self.correlations[-1])) if self.correlations else float("nan")

    @property
    def passed(self) -> bool:
        return self.final_correlation < SANITY_PASS


@dataclass
class QualityResults:
    plan: QualityPlan
    class_names: tuple[str, ...]
    y_true: np.ndarray
    y_pred: np.ndarray
    probabilities: np.ndarray
    localisation: MapScores
    shortcut: MapScores
    lung_source: str  # "masks from the data source" or "estimated"
    mean_maps: dict[str, dict[str, np.ndarray]]  # "true"/"predicted" -> class -> (H, W)
    faithfulness: Faithfulness | None = None
    sanity: Sanity | None = None
    baselines: BaselineScores | None = None
    robustness: Robustness | None = None
    # The counterfactual shortcut test on the sample (`check_counterfactual`; None with
    # quality=off or too few images) and the marker audit over every explained film (None
    # with quality=off).
    counterfactual: CounterfactualResult | None = None
    markers: MarkerAuditResult | None = None
    # A few sample films before and after hiding, for the report (`hidden_examples`).
    hidden_examples: list[HiddenExample] = field(default_factory=list)
    seconds: float = 0.0


@dataclass(frozen=True)
class HiddenExample:
    """One film before and after hiding (`QualityAccumulator.hidden_examples`)."""

    position: int  # in the full record list
    predicted: int
    model_input: np.ndarray  # (H, W, C)
    hidden: dict[str, np.ndarray]  # condition -> the film with its region filled
    probabilities: np.ndarray  # (classes,) before
    hidden_probabilities: dict[str, np.ndarray]  # condition -> (classes,) after


@dataclass(frozen=True)
class _SampleImage:
    """One image of the faithfulness/sanity sample (model input and map at input size)."""

    position: int
    model_input: np.ndarray
    map: np.ndarray
    predicted: int
    label: int  # -1 when unlabelled
    lesion_mask: np.ndarray | None = None
    lung_mask: np.ndarray | None = None
    probabilities: np.ndarray | None = None  # the model's outputs for model_input
    marked: bool = False  # a burned-in marker was found on it (marker_audit)


class QualityAccumulator:
    """The streaming side of the trust checks.

    Every per-image value is kept with the image's position in the full record list and read
    back in that order, sums and counts add, and the sample is the plan's N images of
    smallest `sample_rank` (a fixed shuffle of the positions). So accumulators of any split
    of the records merge (`merge`) into the one a single pass would give, whatever the order
    of merging.
    """

    def __init__(self, plan: QualityPlan, class_names: tuple[str, ...],
                 image_size: tuple[int, int], keep_sample: bool = True):
        """`keep_sample=False`: the sample is not kept while streaming; the caller adds it
        (`keep_sample`) once it knows which images it holds (a Spark driver: shipping every
        part's candidates would cost memory in the number of parts)."""
        self.plan = plan
        self._keeps_sample = keep_sample
        self.class_names = class_names
        self.image_size = image_size
        # Labelled images only: (position, label, predicted class, probabilities).
        self._predictions: list[tuple[int, int, int, np.ndarray]] = []
        self.localisation = MapScores()
        self.shortcut = MapScores()
        self._lung_masks_seen = self._lungs_estimated = 0
        # Class index -> summed map, made when a class first has an image: a model with
        # 1,000 classes would otherwise hold (and merge) 1,000 maps per kind, mostly zeros.
        self._sums: dict[str, dict[int, np.ndarray]] = {"true": {}, "predicted": {}}
        self._counts = {kind: np.zeros(len(class_names)) for kind in ("true", "predicted")}
        self._sample: list[_SampleImage] = []  # sorted by sample_rank, at most the plan's size
        self._markers = marker_audit.MarkerCounts(tuple(class_names))
        self._border = measures.border_band(image_size)
        self._estimated_lungs = measures.estimated_lung_fields(image_size)
        self._next_position = 0  # where a batch given without positions starts

    def add_batch(self, labels, images, model_inputs, explanation, positions=None
                  ) -> list[list[str]]:
        """Score one batch; returns each image's shortcut flags (empty lists when clean).
        `positions` are the images' indices in the full record list (by default, the ones
        after the previous batch's)."""
        positions = self._positions_for(len(labels), positions)
        predicted = explanation.class_index
        for position, label, p, probabilities in zip(positions, labels, predicted,
                                                     explanation.probabilities, strict=True):
            if label is not None:
                self._predictions.append((position, label, int(p), probabilities))
        if not self.plan.explanation_metrics:
            return [[] for _ in labels]
        maps = explanation.maps
        random = random_maps_at(positions, maps.shape[1:])
        flags = self._score_shortcuts(positions, labels, images, maps, random)
        self._score_localisation(positions, labels, predicted, images, maps, random)
        self._add_to_means(labels, predicted, maps)
        detections = marker_audit.detect_batch(image.pixels for image in images)
        self._markers.add(positions, labels, detections)
        if self._keeps_sample:
            self.keep_sample(positions, labels, predicted, model_inputs, maps, images,
                             probabilities=explanation.probabilities, detections=detections)
        return flags

    def _positions_for(self, count: int, positions) -> list[int]:
        if positions is None:
            positions = range(self._next_position, self._next_position + count)
        positions = [int(p) for p in positions]
        self._next_position = max([self._next_position, *(p + 1 for p in positions)])
        return positions

    def _score_shortcuts(self, positions, labels, images, maps, random) -> list[list[str]]:
        lungs = [self._lungs_of(image) for image in images]
        # Without masks every image shares the prior: one (H, W) region, no (B, H, W) stack.
        shared = all(region is self._estimated_lungs for region in lungs)
        lungs = self._estimated_lungs if shared else np.stack(lungs)
        border = self._border  # one (H, W) band for every map
        maps, random = measures.salient_part(maps), measures.salient_part(random)
        outside = measures.energy_outside(maps, lungs)
        in_border = measures.energy_inside(maps, border)
        self.shortcut.add_images(positions, [-1 if label is None else label
                                             for label in labels])
        self.shortcut.add("outside_lungs", outside)
        self.shortcut.add("border", in_border)
        self.shortcut.add("random outside_lungs", measures.energy_outside(random, lungs))
        self.shortcut.add("random border", measures.energy_inside(random, border))
        return [_shortcut_flags(o, b) for o, b in zip(outside, in_border, strict=True)]

    def _lungs_of(self, image) -> np.ndarray:
        if image.lung_mask is not None and image.lung_mask.any():
            self._lung_masks_seen += 1
            return image.lung_mask
        self._lungs_estimated += 1
        return self._estimated_lungs

    def _score_localisation(self, positions, labels, predicted, images, maps, random) -> None:
        """Correctly classified images with a non-empty lesion mask: the map explains the
        class the lesion belongs to."""
        chosen = [
            i for i, (label, image) in enumerate(zip(labels, images, strict=True))
            if label is not None and label == predicted[i]
            and image.lesion_mask is not None and image.lesion_mask.any()
        ]
        if not chosen:
            return
        masks = np.stack([images[i].lesion_mask for i in chosen])
        self.localisation.add_images([positions[i] for i in chosen],
                                     [labels[i] for i in chosen])
        for prefix, stack in (("", maps[chosen]), ("random ", random[chosen])):
            self.localisation.add(prefix + "pointing", measures.pointing_hits(stack, masks))
            self.localisation.add(prefix + "energy", measures.energy_inside(stack, masks))
            self.localisation.add(prefix + "iou", measures.iou_at(stack, masks))
            self.localisation.add(prefix + "otsu_iou", measures.otsu_iou(stack, masks))

    def _add_to_means(self, labels, predicted, maps) -> None:
        shown = per_image(maps)
        true = np.array([-1 if label is None else label for label in labels])
        for kind, classes in (("true", true), ("predicted", np.asarray(predicted))):
            for index in np.unique(classes[classes >= 0]):
                chosen = classes == index
                total = shown[chosen].sum(axis=0, dtype=np.float64)
                sums = self._sums[kind]
                sums[int(index)] = sums[int(index)] + total if int(index) in sums else total
                self._counts[kind][index] += int(chosen.sum())

    def keep_sample(self, positions, labels, predicted, model_inputs, maps, images=None,
                    probabilities=None, detections=None) -> None:
        """Keep the plan's N images (`QualityPlan.sample_images`) of smallest `sample_rank`,
        whatever order they come in, with their masks (`images`: the decoded
        images, when there are any to keep) and the model's `probabilities` (the
        counterfactual test then needs no pass over the originals). `detections`: the
        marker audit's, when `add_batch` already has them; else the kept images are searched.
        Copies, so that a kept image does not hold its whole batch in memory."""
        if detections is None and images is not None:
            detections = [marker_audit.detect(image.pixels) for image in images]
        entering = [
            _SampleImage(position, np.array(model_inputs[i]), np.array(maps[i]),
                         int(predicted[i]), -1 if labels[i] is None else labels[i],
                         *(_masks_of(images[i]) if images is not None else (None, None)),
                         None if probabilities is None else np.array(probabilities[i]),
                         detections is not None and detections[i].found)
            for i, position in enumerate(positions) if self._may_enter_sample(position)
        ]
        self._sample = _first_by_rank(self._sample + entering, self.plan.sample_images)

    def _may_enter_sample(self, position: int) -> bool:
        if not self.plan.sample_images:
            return False
        full = len(self._sample) >= self.plan.sample_images
        return not full or sample_rank(position) < sample_rank(self._sample[-1].position)

    @property
    def sample_positions(self) -> list[int]:
        """Positions of the images the faithfulness and sanity checks will use."""
        return [image.position for image in self._sample[: self.plan.faithfulness_images]]

    @property
    def counterfactual_positions(self) -> list[int]:
        """Positions of the images the counterfactual test will use."""
        return [image.position for image in self._sample[: self.plan.counterfactual_images]]

    def merge(self, other: QualityAccumulator) -> QualityAccumulator:
        """The accumulator of both parts' images; associative and independent of order."""
        if (self.plan, self.class_names, self.image_size) != (
                other.plan, other.class_names, other.image_size):
            raise ValueError("only accumulators of the same plan, classes and size merge")
        merged = QualityAccumulator(self.plan, self.class_names, self.image_size)
        merged._predictions = self._predictions + other._predictions
        merged.localisation = self.localisation.merge(other.localisation)
        merged.shortcut = self.shortcut.merge(other.shortcut)
        merged._lung_masks_seen = self._lung_masks_seen + other._lung_masks_seen
        merged._lungs_estimated = self._lungs_estimated + other._lungs_estimated
        merged._sums = {kind: _add_sums(self._sums[kind], other._sums[kind])
                        for kind in self._sums}
        merged._counts = {kind: self._counts[kind] + other._counts[kind]
                          for kind in self._counts}
        merged._sample = _first_by_rank(self._sample + other._sample, self.plan.sample_images)
        merged._markers = self._markers.merge(other._markers)
        merged._next_position = max(self._next_position, other._next_position)
        return merged

    def results(self) -> QualityResults:
        """What the stream measured, without the sample checks (`check_faithfulness` and
        `check_sanity` add them)."""
        ordered = sorted(self._predictions, key=lambda entry: entry[0])
        return QualityResults(
            plan=self.plan,
            class_names=self.class_names,
            y_true=np.asarray([label for _, label, _, _ in ordered], dtype=int),
            y_pred=np.asarray([predicted for _, _, predicted, _ in ordered], dtype=int),
            probabilities=np.asarray([p for _, _, _, p in ordered]).reshape(
                -1, len(self.class_names)),
            localisation=self.localisation.in_position_order(),
            shortcut=self.shortcut.in_position_order(),
            lung_source=self._lung_source(),
            mean_maps=self._mean_maps(),
            markers=self._markers.results() if self.plan.explanation_metrics else None,
        )

    def check_faithfulness(self, engine, batch_size: int) -> Faithfulness | None:
        """Deletion/insertion and Average Drop on the sample: extra forward passes (None
        with `quality=off` or no images)."""
        if not (self.plan.explanation_metrics and self._sample):
            return None
        inputs, maps, classes, labels = self._sample_arrays(self.plan.faithfulness_images)
        return faithfulness(engine, inputs, maps, classes, labels, self.plan.steps,
                            batch_size)

    def check_sanity(self, engine) -> Sanity | None:
        """The cascading-randomisation sanity check on the sample's first images."""
        if not (self.plan.explanation_metrics and self._sample):
            return None
        inputs, _, classes, _ = self._sample_arrays(self.plan.sanity_images)
        return cascading_randomisation(engine, inputs, classes, self.plan.sanity_stages)

    def check_baselines(self, engine, batch_size: int, sanity: Sanity | None
                        ) -> BaselineScores | None:
        """quality=full: the method, RandomCAM, Sobel edges and random maps scored by every
        check on the sample's first images (`sanity`: the method's own result)."""
        from report.baselines import SampleData, score_with_baselines

        count = self.plan.baseline_images
        if not (count and self._sample and sanity is not None):
            return None
        inputs, maps, classes, labels = self._sample_arrays(count)
        sample = self._sample[:count]
        lesions = np.stack([image.lesion_mask if image.lesion_mask is not None
                            else np.zeros(self.image_size, bool) for image in sample])
        lungs = np.stack([image.lung_mask if image.lung_mask is not None
                          else self._estimated_lungs for image in sample])
        return score_with_baselines(engine, SampleData(inputs, maps, classes, labels, lesions,
                                                       lungs), self.plan, batch_size,
                                    sanity.final_correlation)

    def check_robustness(self, engine, batch_size: int) -> Robustness | None:
        """quality=full: the maps under noise, a shift, JPEG and a contrast change."""
        from report.robustness import robustness

        if not (self.plan.robustness_images and self._sample):
            return None
        inputs, maps, classes, _ = self._sample_arrays(self.plan.robustness_images)
        return robustness(engine, inputs, maps, classes, batch_size)

    def check_counterfactual(self, engine, batch_size: int
                             ) -> CounterfactualResult | None:
        """Hide what lies outside the lungs (and the border band alone) on the sample's first
        `counterfactual_images` films and watch the predictions, against a control of the
        same area inside the lungs (counterfactual.py): 4 predict passes over them. None
        with quality=off, a plan without the test, or fewer films than a class needs."""
        count = min(self.plan.counterfactual_images, len(self._sample))
        if not (self.plan.explanation_metrics and count >= counterfactual.MIN_IMAGES):
            return None
        sample = self._sample[:count]
        lungs, estimated = counterfactual.lung_fields([image.lung_mask for image in sample],
                                                      self.image_size)
        # Kept with the sample on the local path; a sample added without them is predicted.
        probabilities = (None if any(image.probabilities is None for image in sample)
                         else np.stack([image.probabilities for image in sample]))
        return counterfactual.counterfactual_test(
            engine.predict, np.stack([image.model_input for image in sample]), lungs,
            self.class_names, probabilities, lungs_estimated=estimated,
            seed=COUNTERFACTUAL_SEED, resamples=self.plan.counterfactual_resamples,
            batch_size=batch_size, sample_images=count,
            unmarked=np.array([not image.marked for image in sample]))

    def check_shortcut_effect(self, engine, batch_size: int, examples: int = HIDDEN_EXAMPLES
                              ) -> tuple[CounterfactualResult | None, list[HiddenExample]]:
        """The counterfactual test, and `examples` films before and after hiding, of the
        flagged classes when any class is flagged (what a reviewer should see first)."""
        result = self.check_counterfactual(engine, batch_size)
        if result is None:
            return None, []
        flagged = [effect.index for effect in result.classes if effect.flagged]
        return result, self.hidden_examples(engine, examples, flagged or None)

    def hidden_examples(self, engine, count: int = 4, classes=None) -> list[HiddenExample]:
        """The report's "before and after hiding" films: the first `count` films of the
        counterfactual sample predicted as one of `classes` (indices; all when None), each
        with everything outside its lung fields hidden and with the border band hidden, as
        the test filled them (the same reference film), and the model's probabilities
        before and after. One predict pass over 2 * count films. Model inputs, as
        `streaming.preprocess` made them: divide by the model's `scale` to show them."""
        sample = self._sample[: self.plan.counterfactual_images]
        chosen = [image for image in sample
                  if classes is None or image.predicted in set(classes)][:count]
        if not chosen:
            return []
        inputs = np.stack([image.model_input for image in chosen])
        lungs, _ = counterfactual.lung_fields([image.lung_mask for image in chosen],
                                              self.image_size)
        reference = counterfactual.reference_film(
            np.stack([image.model_input for image in sample]),
            np.array([not image.marked for image in sample]))
        regions = counterfactual.hidden_regions(lungs)
        filled = {name: counterfactual.neutral_fill(inputs, regions[name][0], reference)
                  for name in counterfactual.CONDITIONS}
        after = engine.predict(np.concatenate([filled[name]
                                               for name in counterfactual.CONDITIONS]))
        before = (np.stack([image.probabilities for image in chosen])
                  if all(image.probabilities is not None for image in chosen)
                  else engine.predict(inputs))
        n = len(chosen)
        return [HiddenExample(image.position, image.predicted, image.model_input,
                              {name: filled[name][i] for name in counterfactual.CONDITIONS},
                              before[i], {name: after[k * n + i] for k, name in
                                          enumerate(counterfactual.CONDITIONS)})
                for i, image in enumerate(chosen)]

    def _sample_arrays(self, count: int):
        # The faithfulness sample's first images: the sample may be longer for the
        # counterfactual test, and these checks keep the images they always had.
        sample = self._sample[: min(count, self.plan.faithfulness_images)]
        return (np.stack([image.model_input for image in sample]),
                np.stack([image.map for image in sample]),
                np.asarray([image.predicted for image in sample]),
                np.asarray([image.label for image in sample]))

    def _lung_source(self) -> str:
        if not self._lung_masks_seen:
            return N_("estimated (fixed PA lung-field prior)")
        if self._lungs_estimated:
            return N_("masks where the source has them, else estimated")
        return N_("masks from the data source")

    def _mean_maps(self) -> dict[str, dict[str, np.ndarray]]:
        return {
            kind: {
                self.class_names[i]: self._sums[kind][i] / self._counts[kind][i]
                for i in sorted(self._sums[kind]) if self._counts[kind][i]
            }
            for kind in ("true", "predicted")
        }


def random_maps_at(positions, size: tuple[int, int]) -> np.ndarray:
    """(B, H, W) random reference maps, each seeded by its image's position: the same map for
    an image however the records are split into batches or parts."""
    return np.stack([measures.random_maps((1, *size), seed=position)[0]
                     for position in positions])


def _masks_of(image) -> tuple[np.ndarray | None, np.ndarray | None]:
    """An image's non-empty lesion and lung masks, copied (None where it has none)."""
    return tuple(np.array(mask) if mask is not None and mask.any() else None
                 for mask in (image.lesion_mask, image.lung_mask))


def _add_sums(first: dict[int, np.ndarray], second: dict[int, np.ndarray]
              ) -> dict[int, np.ndarray]:
    return {index: first[index] + second[index] if index in first and index in second
            else first.get(index, second.get(index)) for index in {*first, *second}}


def sample_rank(position: int) -> int:
    """Where the image at `position` comes in the sample's order: Knuth's multiplicative hash,
    a fixed shuffle of the positions. The sample is the images of smallest rank, so it is
    spread over the whole run (a folder per class lists one class after another: the first N
    images would all be of one class), and the same whatever the order of the batches or
    the partitioning."""
    return (int(position) * 2654435761) % 2**32


def _first_by_rank(images: list[_SampleImage], count: int) -> list[_SampleImage]:
    return sorted(images, key=lambda image: sample_rank(image.position))[:count]


# --- the class-level shortcut verdict -------------------------------------------------------


@dataclass(frozen=True)
class ShortcutVerdict:
    """Whether a class is flagged as reading a shortcut, and what that rests on.

    `basis` "effect": the counterfactual test decided (`flagged_by`: the conditions,
    "outside_lungs" and/or "border", whose flip effect's interval lies above the flag); the
    location numbers are supporting evidence only. "location": the class was predicted for
    fewer than counterfactual.MIN_IMAGES sample films (or the test did not run), so the
    location thresholds decide, as before the test existed. The effect is measured over the
    films PREDICTED as the class, the location over the films labelled with it."""

    class_name: str
    index: int
    flagged: bool
    basis: str  # "effect" or "location"
    flagged_by: tuple[str, ...]  # conditions, basis "effect" only
    effect: ClassEffect | None  # None when the test did not run
    border: float  # mean share of the salient map in the border band (nan: no films)
    outside_lungs: float  # mean share outside the lung fields (nan: no films)
    past_location_thresholds: bool  # border > BORDER_FLAG or outside_lungs > OUTSIDE_...


def shortcut_verdicts(results: QualityResults) -> list[ShortcutVerdict]:
    """One verdict per class with location scores or sample films predicted as it, in class
    order (empty with quality=off)."""
    border = class_location(results, "border")
    outside = class_location(results, "outside_lungs")
    effects = {e.index: e for e in results.counterfactual.classes} if (
        results.counterfactual is not None) else {}
    verdicts = []
    for index, name in enumerate(results.class_names):
        effect = effects.get(index)
        if index not in border and not (effect is not None and effect.images):
            continue
        b, o = border.get(index, float("nan")), outside.get(index, float("nan"))
        located = bool(b > BORDER_FLAG or o > OUTSIDE_LUNGS_FLAG)  # nan compares False
        if effect is not None and effect.tested:
            verdicts.append(ShortcutVerdict(name, index, effect.flagged, "effect",
                                            effect.flagged_by, effect, b, o, located))
        else:
            verdicts.append(ShortcutVerdict(name, index, located, "location", (), effect, b,
                                            o, located))
    return verdicts


def flagged_classes(results: QualityResults) -> list[tuple[str, float, float]]:
    """(class, mean border share, mean outside-lung share) of each class flagged by
    `shortcut_verdicts`: what the report, the metrics and `Audit.shortcut_classes` read."""
    return [(v.class_name, v.border, v.outside_lungs)
            for v in shortcut_verdicts(results) if v.flagged]


def class_location(results: QualityResults, key: str) -> dict[int, float]:
    """Class index -> mean of shortcut score `key` ("border", "outside_lungs") over the
    films labelled with the class (classes with a finite score only)."""
    labels = np.asarray(results.shortcut.labels)
    values = results.shortcut.array(key)
    return {
        int(c): float(np.nanmean(values[labels == c]))
        for c in np.unique(labels) if c >= 0 and np.isfinite(values[labels == c]).any()
    }


class Flag(str):
    """A flag as predictions.csv writes it, in English whatever the report's language (a
    column others parse), with `shown`: the same words in the report's language."""

    shown: str

    def __new__(cls, written: str, shown: str) -> Flag:
        flag = super().__new__(cls, written)
        flag.shown = shown
        return flag


def _shortcut_flags(outside_lungs: float, border: float) -> list[Flag]:
    shown = _flag_texts(outside_lungs, border)
    if shown and i18n.current() != "en":  # worded twice only when flagged in another language
        with i18n.use("en"):
            written = _flag_texts(outside_lungs, border)
    else:
        written = shown
    return [Flag(w, s) for w, s in zip(written, shown, strict=True)]


def _flag_texts(outside_lungs: float, border: float) -> list[str]:
    flags = []
    if border > IMAGE_FLAG:
        flags.append(_("shortcut: %(share)s of the salient map in the image border")
                     % {"share": percent(border, 0)})
    if outside_lungs > OUTSIDE_LUNGS_FLAG:
        flags.append(_("shortcut: %(share)s of the salient map outside the lungs")
                     % {"share": percent(outside_lungs, 0)})
    return flags


# --- faithfulness ---------------------------------------------------------------------------


def faithfulness(engine, inputs, maps, classes, labels, steps: int, batch_size: int,
                 with_random: bool = True) -> Faithfulness:
    """Deletion and insertion (Petsiuk et al. 2018) for the maps and for random maps of the
    same smoothness, plus Average Drop and Increase in Confidence (Chattopadhyay et al.
    2018). Deletion replaces pixels, most important first, with black; insertion starts from
    a blurred copy and puts the original pixels back in the same order. The class score is
    the probability of the explained class.

    The curves' ends do not depend on the map (nothing or everything changed), so they are
    predicted once and shared by the model's and the random curves: the original image, the
    blurred one and the black one. Every other point is one forward pass. `with_random=False`
    scores the maps alone (a caller that has its own references)."""
    inputs = np.asarray(inputs, np.float32)
    fractions = np.linspace(0.0, 1.0, steps + 1)
    blurred = np.stack([_blur(image) for image in inputs])
    stacks = {"": maps}
    if with_random:
        stacks["random "] = measures.random_maps(maps.shape, seed=1234)
    scores = _class_scores(engine, _perturbed(inputs, blurred, stacks, fractions[1:-1]),
                           classes, batch_size)
    original, black = scores["original"], scores["black"]
    curves, drop, increase = {}, {}, {}
    inner = range(len(fractions) - 2)
    for name in stacks:
        curves[f"{name}deletion"] = np.column_stack(
            [original, *(scores[name, "deletion", k] for k in inner), black])
        curves[f"{name}insertion"] = np.column_stack(
            [scores["blurred"], *(scores[name, "insertion", k] for k in inner), original])
        key = "random" if name else "cam"
        drop[key] = measures.average_drop(original, scores[name, "weighted"])
        increase[key] = measures.increase_in_confidence(original, scores[name, "weighted"])
    return Faithfulness(fractions, labels, curves, drop, increase)


def _perturbed(inputs, blurred, stacks: dict, fractions):
    """(key, images) for every input the faithfulness metrics score: the shared ends, each
    map's weighted image (Average Drop), then each map's deletion and insertion images at
    the inner `fractions`. TensorFlow makes them, on every core and without copies through
    NumPy: at these sizes the masking costs as much as the forward passes."""
    yield "original", inputs
    yield "blurred", blurred
    yield "black", np.zeros_like(inputs)
    for name, maps in stacks.items():
        yield (name, "weighted"), inputs * per_image(maps)[..., None]
    n, height, width = inputs.shape[:3]
    ranks = {name: tf.constant(_pixel_ranks(maps).reshape(n, height, width, 1))
             for name, maps in stacks.items()}
    inputs, blurred = tf.constant(inputs), tf.constant(blurred)
    for k, fraction in enumerate(fractions):
        for name, rank in ranks.items():
            changed = rank < round(fraction * height * width)
            yield (name, "deletion", k), tf.where(changed, 0.0, inputs)
            yield (name, "insertion", k), tf.where(changed, inputs, blurred)


def _pixel_ranks(maps) -> np.ndarray:
    """(B, H*W) int32: each pixel's place in the deletion order, 0 for the most important."""
    n, height, width = maps.shape
    rank = np.empty((n, height * width), dtype=np.int32)
    rank[np.arange(n)[:, None], measures.deletion_order(maps)] = np.arange(height * width)
    return rank


def _class_scores(engine, keyed_images, classes, batch_size: int) -> dict:
    """key -> the explained class's probability per image, for (key, images) pairs of
    len(classes) images each, predicted `batch_size` images at a time."""
    rows = np.arange(len(classes))
    return {
        key: np.concatenate([engine.predict(images[i : i + batch_size])
                             for i in range(0, len(classes), batch_size)])[rows, classes]
        for key, images in keyed_images
    }


def _blur(image: np.ndarray) -> np.ndarray:
    sigma = max(image.shape[:2]) / 20
    blurred = cv2.GaussianBlur(image, (0, 0), sigma)
    return blurred.reshape(image.shape)


# --- sanity check ---------------------------------------------------------------------------


def cascading_randomisation(engine, inputs, classes, max_stages: int, seed: int = 0) -> Sanity:
    """Adebayo et al. (2018): re-initialise the model's weights from the output layer down,
    cumulatively, and compare each stage's maps with the original ones (Spearman rank
    correlation, per image). Maps that stay the same while the model is destroyed show the
    input, not the model. Weights are restored afterwards, whatever happens."""
    original = engine.explain(inputs, classes).raw_maps
    weighted = [call.layer for call in engine.trace.calls if call.layer.trainable_weights]
    groups = [list(g) for g in np.array_split(np.array(weighted[::-1], dtype=object),
                                               min(max_stages, len(weighted))) if len(g)]
    saved = [(v, v.numpy()) for layer in weighted for v in layer.trainable_weights]
    stages, correlations = [], []
    try:
        for index, group in enumerate(groups):
            for layer in group:
                _reinitialise(layer, seed + index)
            maps = engine.explain(inputs, classes).raw_maps
            stages.append(group[-1].name)  # worded where shown: "down to <layer>"
            correlations.append(measures.rank_correlation(original, maps))
    finally:
        for variable, value in saved:
            variable.assign(value)
    return Sanity(stages, correlations)


def _reinitialise(layer, seed: int) -> None:
    for variable in layer.trainable_weights:
        initializer = getattr(layer, f"{variable.name}_initializer", None)
        if isinstance(initializer, keras.initializers.Initializer):
            config = initializer.get_config()
            if "seed" in config:
                config["seed"] = seed
            fresh = type(initializer).from_config(config)(variable.shape, dtype=variable.dtype)
        else:
            rng = np.random.default_rng(seed)
            fresh = rng.normal(0.0, float(np.std(variable.numpy())) or 0.05, variable.shape)
        variable.assign(np.asarray(fresh, dtype=variable.dtype))
