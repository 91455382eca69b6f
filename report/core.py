"""The audit core: a source streamed through the engine into the artifact sink and bounded
summaries, then measured once into an `Audit`. Nothing here calls MLflow or renders.

    source -> batches -> engine -> per-image results -> artifact files + summaries -> Audit
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from threadpoolctl import threadpool_limits

from report import checks, findings, i18n, measures, options
from report.artifacts import ArtifactWriter, metric_keys
from report.cam.engine import make_engine
from report.checks import QualityResults
from report.data import load_label_map, open_source, take_inventory
from report.errors import OptionError, UserError
from report.i18n import N_, _, number
from report.model import LoadedModel
from report.render import ReportContext, Table, other_classes_label
from report.result import Audit
from report.streaming import Explainer, explain_together


def run_audit(loaded: LoadedModel, source, values: Mapping, artifacts_dir: Path,
              data_label: str, run_id: str | None = None) -> Audit:
    """Explain `source` with `loaded`'s model per the checked option `values` (see
    options.EXPLAIN), streaming overlays, maps and prediction rows into `artifacts_dir`.
    `data_label` is the data as the caller named it (the `data` run param).

    With `backend=spark` the records are explained in partitions on a Spark cluster; when
    there is a run (`run_id`), its tasks write overlays and map shards straight to the run's
    artifact store, and `artifacts_dir` gets predictions.csv only."""
    metadata = loaded.metadata
    records = source.records[: values["limit"]] if values["limit"] else source.records
    if not records:
        raise UserError(f"data: no images to explain in '{data_label}' ({values['split']} "
                        "split); choose other data or another split")
    engine = make_engine(values["method"], loaded.model, metadata.layer_for(values["layer"]),
                         values["score"], (*metadata.image_size, metadata.channels))
    started = time.perf_counter()
    if values["backend"] == "spark":
        from report import spark  # deferred: pyspark is only needed here

        explained = spark.explain(loaded, source, records, values, engine,
                                  Path(artifacts_dir), run_id)
        streamed, skipped, backend = explained.summary, explained.skipped, explained.backend
    else:
        # One part, the whole list: the same code path as merged parts (`Summary.merge`).
        streamed, skipped = _explain_here(metadata, source, records, values, engine,
                                          Path(artifacts_dir))
        backend = None
    explained_seconds = time.perf_counter() - started
    audit, _ = measure(loaded, source, values, engine, streamed, skipped, data_label,
                       Path(artifacts_dir), started, backend)
    audit.metrics["time.explain_seconds"] = explained_seconds
    audit.metrics["time.quality_seconds"] = streamed.quality_seconds
    return audit


def run_audits_together(models: list[LoadedModel], sources: list, values: Mapping,
                        folders: list[Path], data_label: str) -> list[Audit]:
    """`run_audit` for several models on the same images with one decode (streaming.
    explain_together); `sources[m]` lists the images with model m's class names, in the same
    order. Each model keeps its own input size, target layer and artifact folder."""
    listed = [_in_order_of(sources[0].records, source.records, data_label)
              for source in sources]
    if values["limit"]:
        listed = [records[: values["limit"]] for records in listed]
    if not listed[0]:
        raise UserError(f"data: no images to explain in '{data_label}' ({values['split']} "
                        "split); choose other data or another split")
    engines = [make_engine(values["method"], model.model, model.metadata.layer_for(
        values["layer"]), values["score"], (*model.metadata.image_size,
                                            model.metadata.channels)) for model in models]
    started = time.perf_counter()
    explainers = [Explainer(values, model.metadata, engine)
                  for model, engine in zip(models, engines, strict=True)]
    with ExitStack() as open_writers:
        writers = [open_writers.enter_context(ArtifactWriter(
            folder, model.metadata.class_names, engine.target.name, model.metadata.image_size,
            explainer.overlay_suffix)) for model, engine, explainer, folder in zip(
                models, engines, explainers, folders, strict=True)]
        skipped = explain_together(explainers, sources[0], listed, writers)
    explained_seconds = time.perf_counter() - started
    audits = []
    for model, source, engine, explainer, folder, own in zip(
            models, sources, engines, explainers, folders, skipped, strict=True):
        audit, _ = measure(model, source, values, engine, explainer.summary, own, data_label,
                           folder, started)
        audit.metrics["time.explain_seconds"] = explained_seconds
        audits.append(audit)
    return audits


def _in_order_of(first: list, records: list, data_label: str) -> list:
    """`records` (the same images listed for another model's classes) in `first`'s order: a
    source may list its class folders in the model's class order."""
    by_id = {record.image_id: record for record in records}
    if by_id.keys() != {record.image_id for record in first} or len(by_id) != len(records):
        raise UserError(f"data: '{data_label}' lists different images for the two models' "
                        "classes; compare on data labelled with classes both models share")
    return [by_id[record.image_id] for record in first]


def _explain_here(metadata, source, records, values, engine, artifacts_dir: Path):
    explainer = Explainer(values, metadata, engine)
    with ArtifactWriter(artifacts_dir, metadata.class_names, engine.target.name,
                        metadata.image_size, explainer.overlay_suffix) as writer:
        skipped = explainer.run(source, records, writer)
    return explainer.summary, skipped


def open_data(data, class_names, values: Mapping):
    """The source for `data` (a spec, a folder or in-memory (images, labels)) and the label
    the run params give it."""
    label_map = load_label_map(values["label_map"]) if values["label_map"] else None
    source = open_source(data, class_names, values["split"], label_map,
                         follow_symlinks=values["follow_symlinks"])
    if isinstance(data, tuple):
        return source, f"in-memory arrays ({len(source.records) + len(source.skipped)} images)"
    return source, str(data)


def writable_folder(folder: Path, option: str) -> Path:
    """`folder`, created if need be and checked writable before the long work starts
    (creating it is not enough: an existing folder may refuse new files); an OptionError
    naming `option` when it cannot be written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OptionError(option, f"cannot create {folder}: {error.strerror}; pass a "
                          "writable folder") from error
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise OptionError(option, f"cannot write in {folder}: {error.strerror}; pass a "
                          "writable folder") from error
    return folder


def measure(loaded, source, values, engine, streamed, skipped, data_label,
            artifacts_dir: Path, started: float, backend: str | None = None
            ) -> tuple[Audit, QualityResults]:
    """Every metric, sentence and figure, each computed once, from `streamed` (a
    `streaming.Summary`: one pass's, or merged parts'), and the quality results they rest
    on. `started`: the perf_counter the audit's elapsed time counts from; `backend`: how the
    Settings table words where the images were explained (default: the option's value)."""
    collected = streamed.collected
    class_names = loaded.metadata.class_names
    results = streamed.quality.results()
    flagged = collected.flagged
    n_flagged = len(flagged)
    quality, batch_size = streamed.quality, values["batch_size"]
    with (
        threadpool_limits(limits=1, user_api="blas"),  # no third pool of spinning threads
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="sample-checks") as pool,
    ):
        try:
            # The sample checks are TensorFlow work that releases the GIL; the figures are
            # Matplotlib work that holds it. So each section is drawn while the next check runs.
            # First: the sanity check, later on this one thread, changes the model's weights.
            effect = pool.submit(streamed.timed, quality.check_shortcut_effect, engine, batch_size)
            faithful = pool.submit(streamed.timed, quality.check_faithfulness, engine, batch_size)
            sane = pool.submit(streamed.timed, quality.check_sanity, engine)
            roc, calibration = _roc_and_calibration(results)
            shown = findings.shown_classes(results)  # measures.MAX_CLASSES_SHOWN of them at most
            classification_figures = findings.classification_figures(roc, calibration, shown)
            built = {"localisation": findings.section("localisation", results, n_flagged)}
            results.counterfactual, results.hidden_examples = effect.result()
            built["shortcuts"] = findings.section("shortcuts", results, n_flagged)
            results.faithfulness = faithful.result()
            built["faithfulness"] = findings.section("faithfulness", results, n_flagged)
            results.sanity = sane.result()
            # quality=full only (None otherwise): after the sanity check, which they build on,
            # on the same one-thread pool, since the sanity check changes the model's weights.
            against = pool.submit(streamed.timed, quality.check_baselines, engine, batch_size,
                                  results.sanity)
            stable = pool.submit(streamed.timed, quality.check_robustness, engine, batch_size)
            results.baselines, results.robustness = against.result(), stable.result()
            for name in ("baselines", "robustness"):
                built[name] = findings.section(name, results, n_flagged)
        except BaseException:
            # A signal or a failure while a check runs: the checks still queued are dropped
            # (leaving the block would otherwise run every one of them first).
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    y_true, y_pred = results.y_true, results.y_pred
    scores = measures.classification_quality(np.asarray(y_true), np.asarray(y_pred),
                                             class_names)
    inventory = take_inventory(source, class_names, streamed.explained, skipped,
                               values["limit"])
    fingerprint = streamed.fingerprint  # hashed once: the lines are sorted on every call
    metrics = {
        **scores.metrics(),
        **findings.classification_metrics(roc, calibration, shown),
        **findings.explanation_metrics(results),
        "images_explained": len(y_pred),
        "images_skipped": len(skipped),
        "shortcut.flagged_images": n_flagged,
        "data.found": inventory.found,
        "data.used": inventory.used,
        "data.skipped": inventory.skipped,
    }
    keys = metric_keys(metrics)  # the Audit's names are the logged ones, whoever logs them
    metrics = {keys[name]: float(value) for name, value in metrics.items()}
    summary = findings.summary(results, metrics, scores.accuracy, len(y_pred),
                               n_flagged)
    sections = findings.sections(results, n_flagged, built)
    context = ReportContext(
        model_name=loaded.name,
        model_version=loaded.version or "—",
        model_alias=loaded.alias,
        model_source=loaded.source,
        data_source=source.describe(),  # in the report's language; the param stays English
        data_fingerprint=fingerprint,
        run_id=None,
        created=i18n.timestamp(datetime.now(UTC)),
        settings=_settings_table(values, engine, source, backend),
        assumptions=list(loaded.metadata.assumed) + list(source.notes),
        class_names=list(class_names),
        n_images=len(y_pred),
        accuracy=scores.accuracy,
        per_class=scores.per_class,
        confusion=scores.confusion,
        grids=collected.grids(class_names, y_true, y_pred),
        skipped=[(item.source, item.reason) for item in skipped],
        elapsed_seconds=time.perf_counter() - started,
        summary=summary,
        sections=sections,
        extremes=collected.extremes(),
        flagged=flagged,
        figures=classification_figures,
        data=_inventory_table(inventory, class_names, shown),
        language=values.get("language", "en"),
    )
    return Audit(
        metrics=metrics,
        params=_params(loaded, source, values, engine, fingerprint, data_label),
        findings=list(summary),
        sections=list(sections),
        figures=[*classification_figures, *(f for s in sections for f in s.figures)],
        artifacts_dir=artifacts_dir,
        context=context,
        shortcut_classes=[name for name, _, _ in checks.flagged_classes(results)],
    ), results


def _roc_and_calibration(results):
    if not len(results.y_true):
        return [], None
    return (measures.roc_curves(results.y_true, results.probabilities, results.class_names),
            measures.calibration(results.y_true, results.probabilities))


def _inventory_table(inventory, class_names, shown: measures.ShownClasses) -> Table:
    """Files found, used and skipped per source and class. Past measures.MAX_CLASSES_SHOWN
    classes, the rows of the classes not shown are pooled per source, so every file is still
    counted (found = used + skipped) in a table of bounded length."""
    rows = [
        [row.source, row.class_name, number(row.found), number(row.used), number(row.skipped),
         "; ".join(
             # TRANSLATORS: why files were skipped, and how many, e.g. "unreadable (3)".
             # The reasons are report.data's wordings, translated when its catalog has them.
             _("%(reason)s (%(count)s)") % {"reason": _(reason), "count": number(n)}
             for reason, n in sorted(row.reasons.items())) or "—"]
        for row in _pooled_inventory(inventory.rows, class_names, shown)
    ]
    return Table([_("Source"), _("Class"), _("Found"), _("Used"), _("Skipped"), _("Reasons")],
                 rows)


def _pooled_inventory(rows: list, class_names, shown: measures.ShownClasses) -> list:
    """`rows` with those of model classes not `shown` summed into one row per source."""
    if not shown.left_out:
        return rows
    hidden = set(class_names) - {class_names[i] for i in shown.indices}
    kept, pooled = [], {}
    for row in rows:
        if row.class_name not in hidden:
            kept.append(row)
            continue
        total = pooled.setdefault(row.source, {"classes": 0, "found": 0, "used": 0,
                                               "skipped": 0, "reasons": {}})
        total["classes"] += 1
        for key in ("found", "used", "skipped"):
            total[key] += getattr(row, key)
        for reason, n in row.reasons.items():
            total["reasons"][reason] = total["reasons"].get(reason, 0) + n
    return kept + [
        SimpleNamespace(source=source, class_name=other_classes_label(total.pop("classes")),
                        **total)
        for source, total in pooled.items()]


def _settings_table(values: Mapping, engine, source, backend: str | None) -> dict[str, str]:
    height, width = engine.target.map_size
    layer = engine.target.name
    if values["layer"] == "auto":
        # TRANSLATORS: the target layer's name, chosen by the report itself.
        layer = _("%(layer)s (automatic)") % {"layer": layer}
    # Labels and fixed wordings stay in English (N_), as options.settings_rows gives them:
    # the template and the run description look rows up by label and translate them where
    # shown. Wordings with a value in them are translated here.
    rows = options.settings_rows("explain", values, resolved={
        "backend": backend,
        "layer": layer,
        "limit": N_("all images") if not values["limit"] else str(values["limit"]),
        "split": None if source.applies_split else N_("all (arrays in memory are not split)"),
    })
    # The feature-map size belongs next to the layer it comes from.
    ordered = {}
    for label, wording in rows.items():
        ordered[label] = wording
        if label == "Target layer":
            # TRANSLATORS: a feature map's height x width, in cells, e.g. "7 x 7".
            ordered[N_("Feature map")] = _("%(height)s x %(width)s") % {
                "height": number(height), "width": number(width)}
    return ordered


# Options that describe where files go or how the work was spread, not what was computed,
# are not run params (class_names is logged below when it was given).
_NOT_PARAMS = ("output_dir", "class_names", "workers", "spark_master", "partitions")


def _params(loaded, source, values, engine, fingerprint: str, data_label: str) -> dict:
    height, width = engine.target.map_size
    params = {name: value for name, value in values.items() if name not in _NOT_PARAMS}
    params.update(
        model_uri=loaded.uri or f"in memory ({loaded.name})",
        data=data_label,
        label_map=values["label_map"] or "none",
        model_name=loaded.name,
        model_version=loaded.version,
        model_source=loaded.source,
        target_layer=engine.target.name,
        target_map_size=f"{height}x{width}",
        data_source=source.description,
        data_fingerprint=fingerprint,
    )
    if values["class_names"]:
        params["class_names"] = ",".join(values["class_names"])
    if not source.applies_split:
        params["split"] = "all"
    return {name: str(value) for name, value in params.items()}
