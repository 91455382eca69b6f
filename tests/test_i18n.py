"""The report in Brazilian Portuguese (`language=pt-BR`): every message has a translation, no
English sentence is left in a Portuguese PDF, numbers follow the locale, counts have real
plural forms, and what is a contract (metric names, artifact paths) stays as it is."""

from __future__ import annotations

import re
import subprocess
import sys
from html import unescape

import pytest
from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po
from pypdf import PdfReader

import report
from report import i18n, render
from tests.conftest import PROJECT_ROOT, TINY_SIZE, tiny_classifier

CATALOG = i18n.LOCALES_DIR / "pt_BR" / "LC_MESSAGES" / "report.po"
KEYWORDS = {"_": None, "ngettext": (1, 2), "N_": None}
CLASSES = ["COVID-19", "NORMAL", "OTHER_INFECTION"]


def source_messages() -> dict[str, tuple[str, ...]]:
    """Every message in the code and templates now, as `make messages` extracts it:
    msgid -> (singular, plural) or (msgid,)."""
    mapping = [("report/**.py", "python"), ("templates/**.j2", "jinja2")]
    options = {"templates/**.j2": {"extensions": "jinja2.ext.i18n"}}
    found = {}
    for _, _, message, _, _ in extract_from_dir(PROJECT_ROOT, mapping, options, KEYWORDS):
        forms = message if isinstance(message, tuple) else (message,)
        found[forms[0]] = forms
    return found


def catalog():
    with CATALOG.open("rb") as po:
        return read_po(po, locale="pt_BR")


def test_every_message_of_the_code_and_templates_has_a_portuguese_translation():
    translated = catalog()
    missing = []
    for msgid, forms in source_messages().items():
        entry = translated.get(forms if len(forms) > 1 else msgid)
        if entry is None:
            entry = translated.get(msgid)
        strings = entry.string if entry is not None else None
        strings = strings if isinstance(strings, tuple) else (strings,)
        if entry is None or entry.fuzzy or not all(strings):
            missing.append(msgid)
    assert not missing, f"{len(missing)} messages lack a translation (make messages, then " \
                        f"translate report/locales/pt_BR): {missing[:10]}"


def placeholders(text: str) -> set[str]:
    return set(re.findall(r"%\((\w+)\)s", text))


def test_translations_keep_every_placeholder():
    for entry in catalog():
        if not entry.id:
            continue
        ids = entry.id if isinstance(entry.id, tuple) else (entry.id,)
        strings = entry.string if isinstance(entry.string, tuple) else (entry.string,)
        wanted = set().union(*(placeholders(form) for form in ids))
        for string in strings:
            # A singular form may say "one image" instead of "%(count)s images".
            assert wanted - {"count"} <= placeholders(string) <= wanted, entry.id


def test_numbers_and_plurals_follow_the_language():
    with i18n.use("pt-BR"):
        assert i18n.percent(0.932) == "93,2%"
        assert i18n.decimal(1234.5678) == "1234,568"  # no thousands groups, as in English
        one = i18n.ngettext("%(count)s image", "%(count)s images", 1) % {"count": 1}
        many = i18n.ngettext("%(count)s image", "%(count)s images", 3) % {"count": 3}
    assert (one, many) == ("1 imagem", "3 imagens")
    with i18n.use("en"):
        assert i18n.percent(0.932) == "93.2%"
        assert i18n.ngettext("%(count)s image", "%(count)s images", 1) % {"count": 1} == \
            "1 image"


def english_sentences() -> list[str]:
    """Runs of at least four words of every English message, placeholders cut out: what
    must not appear in a Portuguese report."""
    translated = catalog()
    pieces = []
    for msgid, forms in source_messages().items():
        entry = translated.get(forms if len(forms) > 1 else msgid) or translated.get(msgid)
        if entry is not None and entry.string in (msgid, forms):
            continue  # the same in both languages (a name, a formula)
        for form in forms:
            for piece in re.split(r"%\(\w+\)s|\{\{.*?\}\}|<[^>]+>", form):
                words = piece.split()
                if len(words) >= 4:
                    pieces.append(" ".join(words))
    return pieces


def pdf_text(path) -> str:
    text = " ".join(page.extract_text() or "" for page in PdfReader(path).pages)
    return " ".join(text.split())


@pytest.fixture(scope="module")
def portuguese_audit(tmp_path_factory):
    model = tiny_classifier(TINY_SIZE, "portugues", convs=2, seed=7)
    folder = tmp_path_factory.mktemp("pt")
    audit = report.audit(model, "synthetic:60", split="all", quality="full",
                         class_names=CLASSES, language="pt-BR", output_dir=None)
    return audit, audit.to_pdf(folder / "relatorio.pdf"), audit.to_html(folder / "r.html")


def test_no_english_sentence_is_left_in_the_portuguese_pdf(portuguese_audit):
    _, pdf, _ = portuguese_audit
    text = pdf_text(pdf)
    assert "Não use para fins clínicos" in text or "caráter clínico" in text
    left = [sentence for sentence in english_sentences() if sentence in text]
    assert not left, left[:5]


def test_contracts_stay_english_in_a_portuguese_audit(portuguese_audit):
    audit, _, html = portuguese_audit
    assert "accuracy" in audit.metrics and "faithfulness.deletion_auc" in audit.metrics
    assert "<html lang=\"pt-BR\"" in html.read_text()
    for name in CLASSES:
        assert name in html.read_text()
    header = (audit.artifacts_dir / "predictions.csv").read_text().splitlines()[0]
    assert header.startswith("image_id")  # the file's columns are a contract


@pytest.mark.slow
def test_mlflow_run_with_language_pt_br_writes_a_portuguese_report(registered_store, tmp_path):
    env = {**registered_store, "PATH": f"{sys.executable.rsplit('/', 1)[0]}:/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-m", "mlflow", "run", str(PROJECT_ROOT), "--env-manager", "local",
         "-P", "model_uri=models:/tiny-cxr@champion", "-P", "data=synthetic:30",
         "-P", "language=pt-BR", "-P", f"output_dir={tmp_path}"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Acurácia" in result.stdout
    pdfs = list(tmp_path.rglob("report.pdf"))
    assert len(pdfs) == 1
    text = pdf_text(pdfs[0])
    left = [sentence for sentence in english_sentences() if sentence in text]
    assert not left, left[:5]
    assert 'lang="pt-BR"' in pdfs[0].with_suffix(".html").read_text()


def headings_of(html: str) -> list[str]:
    """Each heading's text, and the heading with its reading note when it has one (a note
    alone under a heading at a page's foot is the same fault)."""
    body = html.split("</head>", 1)[1]
    found = []
    pattern = r"<(h[1-4])[^>]*>(.*?)</\1>\s*(<p class=\"reading\">(.*?)</p>)?"
    for match in re.finditer(pattern, body, re.S):
        heading = " ".join(unescape(re.sub(r"<[^>]+>", "", match[2])).split())
        found.append(heading)
        if match[4]:
            note = " ".join(unescape(re.sub(r"<[^>]+>", "", match[4])).split())
            found.append(f"{heading} {note}")
    return found


def test_no_heading_ends_a_page_of_the_portuguese_pdf(portuguese_audit):
    _, pdf, html = portuguese_audit
    leads = headings_of(html.read_text())
    pages = PdfReader(pdf).pages
    footer = {" ".join(text.split()) for text in (render.DISCLAIMER, render.DISCLAIMER_PT)}
    ending = []
    for number, page in enumerate(pages, start=1):
        # Layout mode reads the page top to bottom; the footer lines are cut off first.
        lines = [" ".join(line.split()) for line in
                 page.extract_text(extraction_mode="layout").splitlines()]
        lines = [re.sub(rf"\s*página {number} de {len(pages)}$", "", line) for line in lines]
        body = " ".join(line for line in lines if line and line not in footer)
        ending += [(number, lead) for lead in leads if body.endswith(lead)]
    assert len(pages) > 3 and leads
    assert not ending, ending


def test_the_comparison_and_methods_reports_speak_portuguese_too(tmp_path):
    champion = tiny_classifier(TINY_SIZE, "campeao", convs=1, seed=8)
    challenger = tiny_classifier(TINY_SIZE, "desafiante", convs=2, seed=9)
    duel = report.compare(champion, challenger, "synthetic:40", split="all", quality="off",
                          class_names=CLASSES, language="pt-BR", output_dir=None)
    ranking = report.rank_methods(champion, "synthetic:20", split="all", sample=4,
                                  class_names=CLASSES, language="pt-BR")
    from report import methods_report

    _, methods_pdf = methods_report.write(ranking, tmp_path / "metodos", language="pt-BR")
    for pdf in (duel.to_pdf(tmp_path / "comparacao.pdf"), methods_pdf):
        text = pdf_text(pdf)
        assert "página 1 de" in text
        left = [sentence for sentence in english_sentences() if sentence in text]
        assert not left, (pdf.name, left[:5])


def test_english_numbers_round_as_python_formats_them_and_are_not_grouped():
    with i18n.use("en"):
        assert i18n.percent(109 / 400) == f"{109 / 400:.1%}" == "27.3%"
        assert i18n.decimal(0.165, 2) == f"{0.165:.2f}"
        assert i18n.number(1234) == "1234"
        assert i18n._("") == ""  # not the catalog's header


def test_predictions_csv_flags_stay_english_while_the_report_shows_them_translated():
    from report.checks import _shortcut_flags

    with i18n.use("pt-BR"):
        flags = _shortcut_flags(outside_lungs=0.95, border=0.62)
    assert [str(flag) for flag in flags] == [
        "shortcut: 62% of the salient map in the image border",
        "shortcut: 95% of the salient map outside the lungs"]
    assert all(flag.shown.startswith("atalho") for flag in flags)


def test_an_unknown_language_is_a_one_line_option_error():
    with pytest.raises(report.OptionError, match="language"), i18n.use("fr"):
        pass
