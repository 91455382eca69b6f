"""The "which method for this model?" report: the recommendation and its reasons, the ranking
table, faithfulness against cost, and the same images under every method side by side, in
the audit report's style (templates/methods.html.j2, report.css)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from report import checks, figures, render
from report.cam.normalise import per_image
from report.cam.overlay import blend, encode
from report.methods import CRITERIA, MethodsRanking, best_baseline_gap, reasons
from report.render import Finding, Table

TEMPLATE_NAME = "methods.html.j2"


@dataclass(frozen=True)
class Tile:
    caption: str
    png: bytes


@dataclass(frozen=True)
class GalleryRow:
    caption: str
    tiles: list[Tile]


def findings(ranking: MethodsRanking) -> list[Finding]:
    lines = []
    if ranking.recommended:
        best = ranking.score(ranking.recommended)
        lines.append(Finding("pass", f"For this model, use {best.title}: "
                             + "; ".join(reasons(ranking)) + "."))
    else:
        lines.append(Finding("warn", "No method both passes the sanity check and beats the "
                             "baselines on ROAD for this model: treat every heatmap of it as "
                             "unverified."))
    failed = [score.title for score in ranking.methods
              if np.isfinite(score.values["sanity"]) and not score.sanity_passed]
    unmeasured = [score.title for score in ranking.methods
                  if not np.isfinite(score.values["sanity"])]
    if unmeasured:
        lines.append(Finding("warn", "The sanity check could not be measured (the maps are "
                             "flat once the weights are randomised), so these cannot be "
                             "recommended: " + ", ".join(unmeasured) + "."))
    if failed:
        lines.append(Finding("warn", "Failed the sanity check (their maps barely change when "
                             "the model's weights are randomised, so they show the image more "
                             "than the model): " + ", ".join(failed) + "."))
    floor = best_baseline_gap(ranking.scores)
    beaten = [score.title for score in ranking.methods if score.values["road_gap"] <= floor]
    if beaten:
        lines.append(Finding("warn", "No more faithful than a baseline on ROAD (random channel "
                             "weights or the film's own edges): " + ", ".join(beaten) + "."))
    if not ranking.has_masks:
        lines.append(Finding("info", "The data have no lesion masks or boxes, so localisation "
                             "is not part of the ranking."))
    skipped = len(ranking.sample.skipped)
    lines.append(Finding("info", f"Measured on {len(ranking.sample.image_ids)} images, each "
                         "map explaining the model's predicted class"
                         + (f" ({skipped} unreadable or repeated files skipped)" if skipped
                            else "") + ". Costs are this machine's."))
    return lines


def ranking_table(ranking: MethodsRanking) -> Table:
    shown = [c for c in CRITERIA if c[0] != "otsu_iou" or ranking.has_masks]
    headers = ["Method", "Mean rank", *(label for _, label, _, _ in shown)]
    ordered = sorted(ranking.methods, key=lambda score: score.mean_rank) + ranking.baselines
    rows = []
    for score in ordered:
        name = short_title(score) + (" (baseline)" if score.baseline else "")
        mean = "—" if score.baseline else f"{score.mean_rank:.1f}"
        rows.append([name, mean, *(_cell(score, key) for key, _, _, _ in shown)])
    return Table(headers, rows)


def short_title(score) -> str:
    """"Grad-CAM" of "Grad-CAM (Selvaraju et al. 2017)": the table's rows stay one line."""
    return score.title.split(" (")[0]


def _cell(score, key: str) -> str:
    value = score.values[key]
    if not np.isfinite(value):
        return "—"
    shown = f"{value * 1000:.1f}" if key == "seconds_per_image" else f"{value:.3f}"
    if key == "sanity":
        shown += " pass" if score.sanity_passed else " FAIL"
    place = score.ranks.get(key)
    return f"{shown} (#{place})" if place else shown


def gallery(ranking: MethodsRanking) -> list[GalleryRow]:
    """One row per gallery image: the film, then its map under every method."""
    sample, names = ranking.sample, ranking.sample.image_ids
    rows = []
    for index in range(min(len(names), *(len(s.maps) for s in ranking.scores))):
        film = sample.pixels[index]
        tiles = [Tile("film", encode(film))]
        for score in ranking.scores:
            heatmap = per_image(score.maps[index][None])[0]
            caption = short_title(score) + (" (baseline)" if score.baseline else "")
            tiles.append(Tile(caption, encode(blend(film, heatmap, 0.5, "viridis"))))
        explained = ranking.class_names[int(ranking.classes[index])]
        rows.append(GalleryRow(f"{names[index]}: each map explains {explained}", tiles))
    return rows


def render_html(ranking: MethodsRanking, run_id: str | None = None) -> str:
    template = render._environment().get_template(TEMPLATE_NAME)
    scores = ranking.scores
    return template.render(
        model=ranking.model_label,
        data=ranking.data_label,
        run_id=run_id,
        created=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        n_images=len(ranking.sample.image_ids),
        findings=findings(ranking),
        finding_markers=render.FINDING_MARKERS,
        disclaimer=render.DISCLAIMER,
        disclaimer_pt=render.DISCLAIMER_PT,
        ranking=ranking_table(ranking),
        figure=figures.methods_svg([s.method for s in scores],
                                   [s.values["seconds_per_image"] * 1000 for s in scores],
                                   [s.values["road_gap"] for s in scores],
                                   [s.baseline for s in scores]),
        gallery=gallery(ranking),
        sanity_pass=checks.SANITY_PASS,
    )


def write(ranking: MethodsRanking, folder: Path, run_id: str | None = None
          ) -> tuple[Path, Path]:
    """`folder/methods.html` and `folder/methods.pdf`."""
    return render.write_html_and_pdf(render_html(ranking, run_id), Path(folder), "methods")


def run_note(ranking: MethodsRanking) -> str:
    """The run's description: the disclaimer, then the findings."""
    from report.sinks import _markdown_text

    lines = "\n".join(f"- {_markdown_text(finding.text)}" for finding in findings(ranking))
    return (f"**{render.DISCLAIMER}**\n\n"
            f"Which CAM method for **{_markdown_text(ranking.model_label)}**, on "
            f"{len(ranking.sample.image_ids)} images.\n\n{lines}\n\n"
            "Full report: artifacts `report/methods.html` and `report/methods.pdf`.")
