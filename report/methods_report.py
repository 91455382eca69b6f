"""The "which method for this model?" report: the recommendation and its reasons, the ranking
table, faithfulness against cost, and the same images under every method side by side, in
the audit report's style (templates/methods.html.j2, report.css)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from report import checks, figures, i18n, render
from report.cam.normalise import per_image
from report.cam.overlay import blend, encode
from report.i18n import _, decimal, ngettext, number
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
    """What a reviewer reads first, in the language in use (`i18n.use`)."""
    lines = []
    if ranking.recommended:
        best = ranking.score(ranking.recommended)
        lines.append(Finding("pass", _("For this model, use %(method)s: %(reasons)s.")
                             % {"method": _(best.title), "reasons": "; ".join(reasons(ranking))}))
    else:
        lines.append(Finding("warn", _("No method both passes the sanity check and beats the "
                                       "baselines on ROAD for this model: treat every heatmap "
                                       "of it as unverified.")))
    failed = [_(score.title) for score in ranking.methods
              if np.isfinite(score.values["sanity"]) and not score.sanity_passed]
    unmeasured = [_(score.title) for score in ranking.methods
                  if not np.isfinite(score.values["sanity"])]
    if unmeasured:
        lines.append(Finding("warn", ngettext(
            "The sanity check could not be measured (the maps are flat once the weights are "
            "randomised), so this one cannot be recommended: %(methods)s.",
            "The sanity check could not be measured (the maps are flat once the weights are "
            "randomised), so these cannot be recommended: %(methods)s.", len(unmeasured))
            % {"methods": ", ".join(unmeasured)}))
    if failed:
        lines.append(Finding("warn", ngettext(
            "Failed the sanity check (its maps barely change when the model's weights are "
            "randomised, so they show the image more than the model): %(methods)s.",
            "Failed the sanity check (their maps barely change when the model's weights are "
            "randomised, so they show the image more than the model): %(methods)s.",
            len(failed)) % {"methods": ", ".join(failed)}))
    floor = best_baseline_gap(ranking.scores)
    beaten = [_(score.title) for score in ranking.methods
              if score.values["road_gap"] <= floor]
    if beaten:
        lines.append(Finding("warn", ngettext(
            "No more faithful than a baseline on ROAD (random channel weights or the film's "
            "own edges): %(methods)s.",
            "No more faithful than a baseline on ROAD (random channel weights or the film's "
            "own edges): %(methods)s.", len(beaten)) % {"methods": ", ".join(beaten)}))
    if not ranking.has_masks:
        lines.append(Finding("info", _("The data have no lesion masks or boxes, so "
                                       "localisation is not part of the ranking.")))
    n_images, n_skipped = len(ranking.sample.image_ids), len(ranking.sample.skipped)
    # TRANSLATORS: %(skipped)s is empty or " (3 unreadable or repeated files skipped)".
    skipped = (" " + ngettext("(%(count)s unreadable or repeated file skipped)",
                              "(%(count)s unreadable or repeated files skipped)", n_skipped)
               % {"count": number(n_skipped)}) if n_skipped else ""
    lines.append(Finding("info", ngettext(
        "Measured on %(count)s image, each map explaining the model's predicted "
        "class%(skipped)s. Costs are this machine's.",
        "Measured on %(count)s images, each map explaining the model's predicted "
        "class%(skipped)s. Costs are this machine's.", n_images)
        % {"count": number(n_images), "skipped": skipped}))
    return lines


def ranking_table(ranking: MethodsRanking) -> Table:
    """The methods by mean rank, then the baselines; headers and cells in the language in
    use."""
    shown = [c for c in CRITERIA if c[0] != "otsu_iou" or ranking.has_masks]
    headers = [_("Method"), _("Mean rank"), *(_(label) for _key, label, _higher, _ranked
                                              in shown)]
    ordered = sorted(ranking.methods, key=lambda score: score.mean_rank) + ranking.baselines
    rows = []
    for score in ordered:
        mean = i18n.MISSING if score.baseline else decimal(score.mean_rank, 1)
        rows.append([_row_title(score), mean, *(_cell(score, key) for key, *_rest in shown)])
    return Table(headers, rows)


def short_title(score) -> str:
    """"Grad-CAM" of "Grad-CAM (Selvaraju et al. 2017)": the table's rows stay one line (a
    baseline's title translated first: "Sobel edges" of "Sobel edges (ignores the model)")."""
    return _(score.title).split(" (")[0]


def _row_title(score) -> str:
    """The short title, and "(baseline)" after a baseline's."""
    if score.baseline:
        # TRANSLATORS: a baseline's short title, e.g. "Sobel edges (baseline)".
        return _("%(title)s (baseline)") % {"title": short_title(score)}
    return short_title(score)


def _cell(score, key: str) -> str:
    value = score.values[key]
    if not np.isfinite(value):
        return i18n.MISSING
    shown = decimal(value * 1000, 1) if key == "seconds_per_image" else decimal(value, 3)
    if key == "sanity":
        shown = ((_("%(value)s pass") if score.sanity_passed else _("%(value)s FAIL"))
                 % {"value": shown})
    place = score.ranks.get(key)
    if not place:
        return shown
    # TRANSLATORS: a value and its rank among the methods, e.g. "0.123 (#2)".
    return _("%(value)s (#%(place)s)") % {"value": shown, "place": number(place)}


def gallery(ranking: MethodsRanking) -> list[GalleryRow]:
    """One row per gallery image: the film, then its map under every method."""
    sample, names = ranking.sample, ranking.sample.image_ids
    rows = []
    for index in range(min(len(names), *(len(s.maps) for s in ranking.scores))):
        film = sample.pixels[index]
        # TRANSLATORS: the gallery's first tile, the chest X-ray without a heatmap.
        tiles = [Tile(_("film"), encode(film))]
        for score in ranking.scores:
            heatmap = per_image(score.maps[index][None])[0]
            tiles.append(Tile(_row_title(score),
                              encode(blend(film, heatmap, 0.5, "viridis"))))
        explained = ranking.class_names[int(ranking.classes[index])]
        rows.append(GalleryRow(_("%(image)s: each map explains %(class_name)s")
                               % {"image": names[index], "class_name": explained}, tiles))
    return rows


def render_html(ranking: MethodsRanking, run_id: str | None = None,
                language: str | None = None) -> str:
    """The report page in `language` (i18n.LANGUAGES; default the ranking's own): the
    template's messages, the findings, the table, the figure and the gallery's captions."""
    language = language or ranking.language
    template = render._environment().get_template(TEMPLATE_NAME)
    scores = ranking.scores
    with i18n.use(language):
        return template.render(
            language=language,
            model=ranking.model_label,
            data=ranking.data_label,
            run_id=run_id,
            created=i18n.timestamp(datetime.now(UTC)),
            n_images=len(ranking.sample.image_ids),
            findings=findings(ranking),
            disclaimer=render.DISCLAIMER,
            disclaimer_pt=render.DISCLAIMER_PT,
            ranking=ranking_table(ranking),
            figure=figures.methods_svg([s.method for s in scores],
                                       [s.values["seconds_per_image"] * 1000 for s in scores],
                                       [s.values["road_gap"] for s in scores],
                                       [s.baseline for s in scores]),
            gallery=gallery(ranking),
            sanity_pass=decimal(checks.SANITY_PASS, 1),
        )


def write(ranking: MethodsRanking, folder: Path, run_id: str | None = None,
          language: str | None = None) -> tuple[Path, Path]:
    """`folder/methods.html` and `folder/methods.pdf`, in `language`."""
    return render.write_html_and_pdf(render_html(ranking, run_id, language), Path(folder),
                                     "methods")


def run_note(ranking: MethodsRanking, language: str | None = None) -> str:
    """The run's description: the disclaimer, then the findings, in `language` (default the
    ranking's own)."""
    from report.sinks import _markdown_text

    language = language or ranking.language
    with i18n.use(language):
        lines = "\n".join(f"- {_markdown_text(finding.text)}"
                          for finding in findings(ranking))
        disclaimer = render.DISCLAIMER_PT if language == "pt-BR" else render.DISCLAIMER
        n_images = len(ranking.sample.image_ids)
        return (f"**{disclaimer}**\n\n"
                + ngettext("Which CAM method for **%(model)s**, on %(count)s image.",
                           "Which CAM method for **%(model)s**, on %(count)s images.",
                           n_images) % {"model": _markdown_text(ranking.model_label),
                                        "count": number(n_images)}
                + f"\n\n{lines}\n\n"
                + _("Full report: artifacts `report/methods.html` and `report/methods.pdf`."))
