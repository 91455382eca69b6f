"""The report as a person sees it: in the MLflow UI of a real `mlflow server`, in Chromium.

A server with proxied artifacts (`--serve-artifacts --artifacts-destination`) on a free
loopback port; the CLI trains, registers and reports against it over HTTP; Playwright drives
Debian's Chromium (never a downloaded browser) through the run page's artifact viewer.

Screenshots go to test-output/ui/ (gitignored); docs/ui-report-*.png are copies of two of them.
"""

from __future__ import annotations

import re
import shutil
import warnings
from pathlib import Path

import pytest

from tests.integration.servers import (
    CHROMIUM,
    INSTALL_HINT,
    PROJECT_ROOT,
    base_env,
    forget_local_report,
    run_id_of,
    run_report,
    start_mlflow_server,
    temp_dir,
)

pytestmark = pytest.mark.slow

SHOTS = PROJECT_ROOT / "test-output" / "ui"
DISCLAIMER = "Not for clinical use"
HOSTILE_CLASS = "<script>"
HOSTILE_FILE = "<img src=x onerror=alert(1)>.png"
CANARY = "cxr-console-canary"
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync"]

# Console errors of the MLflow UI itself, unrelated to the report, and why they are ignored.
IGNORED_CONSOLE_ERRORS = [
    # The UI asks who is logged in (a basic-auth app endpoint); this server runs without the
    # auth app, so it answers 404. Every MLflow 3.17 page logs it, with or without a report.
    (re.compile(r"Failed to load resource: .*404"), re.compile(r"/mlflow/users/current$")),
]


def chromium_path() -> str | None:
    if Path(CHROMIUM).is_file():
        return CHROMIUM
    return shutil.which("chromium") or shutil.which("chromium-browser")


# --- the server and the runs ----------------------------------------------------------------


@pytest.fixture(scope="module")
def browser_needs():
    """Skip before any server starts or model trains when the browser cannot run."""
    executable = chromium_path()
    if executable is None:
        pytest.skip(f"Chromium not found at {CHROMIUM} or on PATH; {INSTALL_HINT}")
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright not installed; pip install -e '.[test]'")
    return executable, sync_api


@pytest.fixture(scope="module")
def ui_server(browser_needs):
    with temp_dir("cxr-ui-") as folder:
        (folder / "artifacts").mkdir()
        service, url = start_mlflow_server(f"sqlite:///{folder / 'mlflow.db'}",
                                           folder / "artifacts", folder / "server.log")
        try:
            yield {"url": url, "folder": folder, "service": service}
        finally:
            service.stop()


def make_hostile_folder(root: Path) -> None:
    """Class folders `<script>` and NORMAL; one file named like an HTML injection."""
    from PIL import Image

    from report.data import synthetic

    wanted = {"COVID-19": HOSTILE_CLASS, "NORMAL": "NORMAL"}
    counts = dict.fromkeys(wanted.values(), 0)
    seed = 0
    while min(counts.values()) < 8:
        case = synthetic.generate(seed, size=64)
        seed += 1
        name = wanted.get(synthetic.CLASS_NAMES[case.label])
        if name is None or counts[name] >= 8:
            continue
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        file = HOSTILE_FILE if name == HOSTILE_CLASS and counts[name] == 0 else \
            f"img{counts[name]}.png"
        Image.fromarray(case.image).save(folder / file)
        counts[name] += 1


@pytest.fixture(scope="module")
def runs(ui_server):
    """A report of `ui-cxr` on synthetic data, and one of `ui-hostile` on the hostile folder."""
    from mlflow.tracking import MlflowClient

    url, folder = ui_server["url"], ui_server["folder"]
    env = base_env(MLFLOW_TRACKING_URI=url, MLFLOW_EXPERIMENT_NAME="ui-tests")
    run_report(["train", "--data", "synthetic:45", "--epochs", "1", "--image-size", "64",
                "--model-name", "ui-cxr"], env, folder)
    plain = run_id_of(run_report(["explain", "--model-uri", "models:/ui-cxr@champion",
                                  "--data", "synthetic:45"], env, folder))
    hostile_data = folder / "hostile"
    make_hostile_folder(hostile_data)
    run_report(["train", "--data", str(hostile_data), "--epochs", "1", "--image-size", "64",
                "--model-name", "ui-hostile"], env, folder)
    hostile = run_id_of(run_report(["explain", "--model-uri", "models:/ui-hostile@champion",
                                    "--data", str(hostile_data), "--split", "all"],
                                   env, folder))
    client = MlflowClient(tracking_uri=url)
    try:
        yield {"url": url, "client": client, "folder": folder,
               "plain": (client.get_run(plain).info.experiment_id, plain),
               "hostile": (client.get_run(hostile).info.experiment_id, hostile)}
    finally:
        forget_local_report(plain)
        forget_local_report(hostile)


# --- the browser ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser(browser_needs):
    executable, sync_api = browser_needs
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=LAUNCH_ARGS)
        try:
            yield browser
        finally:
            browser.close()


class Watched:
    """A page whose console errors, uncaught exceptions and dialogs are all recorded."""

    def __init__(self, browser):
        self.context = browser.new_context(viewport={"width": 1400, "height": 1000})
        # Keep the MLflow Assistant side panel closed: it would take a third of the width.
        # Init scripts run in every frame: only the UI's own (the report's sandboxed frame has
        # no localStorage, and touching it there would be an error of ours).
        self.context.add_init_script(
            "if (window === window.top) { try {"
            " localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');"
            " localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');"
            " } catch (e) {} }"
        )
        self.page = self.context.new_page()
        self.page.set_default_timeout(60_000)
        self.console: list[tuple[str, str, str]] = []  # (type, text, url)
        self.dialogs: list[str] = []
        self.page.on("console", self._on_console)
        self.page.on("pageerror", lambda error: self.console.append(
            ("pageerror", str(error), "")))
        self.page.on("dialog", self._on_dialog)

    def _on_console(self, message) -> None:
        self.console.append((message.type, message.text, message.location.get("url", "")))

    def _on_dialog(self, dialog) -> None:
        self.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    def errors(self) -> list[tuple[str, str, str]]:
        return [
            entry for entry in self.console
            if entry[0] in ("error", "pageerror") and CANARY not in entry[1]
            and not any(text.search(entry[1]) and where.search(entry[2])
                        for text, where in IGNORED_CONSOLE_ERRORS)
        ]

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def watched(browser):
    page = Watched(browser)
    yield page
    page.close()


def open_artifact(watched: Watched, url: str, run: tuple[str, str], *path: str):
    """The run page's Artifacts tab, then click through the tree as a person would."""
    experiment_id, run_id = run
    page = watched.page
    page.goto(f"{url}/#/experiments/{experiment_id}/runs/{run_id}/artifacts")
    for name in path:
        page.get_by_text(name, exact=True).first.click()
    return page


def html_frame(page):
    handle = page.wait_for_selector("iframe.mlflow-html-iframe, iframe#html")
    frame = handle.content_frame()
    frame.wait_for_load_state("load")
    return frame


def assert_console_reaches_us(watched: Watched, frame) -> None:
    """Prove that an error logged inside the (sandboxed) report frame would be seen."""
    frame.evaluate(f"console.error('{CANARY}')")
    watched.page.wait_for_timeout(300)
    assert any(CANARY in text for _, text, _ in watched.console), watched.console


def shot(page, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / name
    page.screenshot(path=str(path))
    return path


# True when the element's centre is what the page shows there (not covered, not clipped).
SEEN = """e => { const r = e.getBoundingClientRect();
                 const hit = document.elementFromPoint(r.x + r.width / 2, r.y + r.height / 2);
                 return r.width > 0 && r.height > 0 && (hit === e || e.contains(hit)); }"""


def wait_loaded(image) -> int:
    image.wait_for(state="attached")
    image.page.wait_for_function("i => i.complete", arg=image.element_handle())
    return image.evaluate("i => i.naturalWidth")


# --- the tests ------------------------------------------------------------------------------


def test_html_report_renders_in_the_artifact_viewer(runs, watched):
    from playwright.sync_api import expect

    page = open_artifact(watched, runs["url"], runs["plain"], "report", "report.html")
    frame = html_frame(page)
    assert_console_reaches_us(watched, frame)
    frame.wait_for_function(
        "document.images.length > 0 && Array.from(document.images).every(i => i.complete)")
    images = frame.evaluate(
        "Array.from(document.images).map(i => [i.alt || i.src.slice(0, 40), i.naturalWidth])")
    broken = [alt for alt, width in images if width == 0]
    assert not broken, f"{len(broken)} of {len(images)} images did not load: {broken[:10]}"
    expect(frame.get_by_text(DISCLAIMER).first).to_be_visible()
    shot(page, "report-html.png")
    assert not watched.errors(), watched.errors()
    assert not watched.dialogs


def test_pdf_report_renders_in_the_artifact_viewer(runs, watched):
    page = open_artifact(watched, runs["url"], runs["plain"], "report", "report.pdf")
    viewer = page.wait_for_selector("canvas.react-pdf__Page__canvas, canvas, embed, "
                                    "object[type='application/pdf']")
    if viewer.evaluate("e => e.tagName") == "CANVAS":
        # pdf.js draws the page: a blank canvas would mean it did not render.
        page.wait_for_function(
            """c => { const ctx = c.getContext('2d');
                      if (!ctx || c.width === 0) return false;
                      const d = ctx.getImageData(0, 0, c.width, c.height).data;
                      let ink = 0;
                      for (let i = 0; i < d.length; i += 4) if (d[i] < 200) ink++;
                      return ink > 1000; }""", arg=viewer)
    shot(page, "report-pdf.png")
    assert not watched.errors(), watched.errors()


def test_overlay_image_charts_show_on_the_run_page(runs, watched):
    """Overlays logged with mlflow.log_image(key=..., step=...) appear as image charts.

    Keys are read from the run's `images/` artifacts, whatever the product names them. Each
    chart's image must load, and be seen in the chart's full-screen view; where the grid card
    hides it (MLflow lists the run's params above the image, and long params push it out of
    the card), that is reported as a warning.
    """
    from playwright.sync_api import expect

    client, (experiment_id, run_id) = runs["client"], runs["plain"]
    files = [a.path.rsplit("/", 1)[-1] for a in client.list_artifacts(run_id, "images")]
    keys = sorted({m.group(1) for f in files if (m := re.match(r"(.+?)\+step\+\d+\+", f))})
    if not keys:
        pytest.skip("the report run logged no image charts (mlflow.log_image); nothing to show")
    page = watched.page
    page.goto(f"{runs['url']}/#/experiments/{experiment_id}/runs/{run_id}/model-metrics")
    search = page.get_by_placeholder(re.compile("Search metric charts", re.I))
    hidden_in_card = []
    for number, key in enumerate(keys):
        search.fill(key)
        title = page.get_by_text(key, exact=True).first
        expect(title).to_be_visible()
        card = title.locator("xpath=ancestor::*[.//img[contains(@src, 'get-artifact')]][1]")
        image = card.locator("img[src*='get-artifact']").first
        assert wait_loaded(image) > 0, f"image chart {key!r} did not load"
        if not image.evaluate(SEEN):
            hidden_in_card.append(key)
        if number == 0:
            shot(page, "image-charts.png")
        card.locator("[data-component-id='fullscreen_button_chartcard']").click()
        large = page.get_by_role("dialog").locator("img[src*='get-artifact']").first
        assert wait_loaded(large) > 0, f"image chart {key!r} did not load in full screen"
        large.scroll_into_view_if_needed()
        assert large.evaluate(SEEN), f"image chart {key!r} is covered in full screen"
        if number == 0:
            shot(page, "image-chart-full-screen.png")
        page.keyboard.press("Escape")
        expect(page.get_by_role("dialog")).to_have_count(0)
    if hidden_in_card:
        warnings.warn(f"image charts {hidden_in_card} load but are hidden in their grid card "
                      "(the run's params, listed above the image, push it out of the card); "
                      "they show in full screen", stacklevel=1)
    assert not watched.errors(), watched.errors()


def test_hostile_names_show_as_text_and_run_nothing(runs, watched):
    from playwright.sync_api import expect

    url, run = runs["url"], runs["hostile"]
    page = open_artifact(watched, url, run, "report", "report.html")
    frame = html_frame(page)
    assert_console_reaches_us(watched, frame)
    expect(frame.get_by_text(f"true: {HOSTILE_CLASS}").first).to_be_visible()
    injected = frame.evaluate(
        "document.querySelectorAll('script, [onerror], [onload], iframe, object').length")
    assert injected == 0
    shot(page, "hostile-report-html.png")
    grid = frame.locator("section", has_text=f"True class: {HOSTILE_CLASS}").last
    grid.screenshot(path=str(SHOTS / "hostile-report-grid.png"))

    # The file name, verbatim, in the artifact viewer's CSV table.
    page.get_by_text("predictions.csv", exact=True).click()
    expect(page.get_by_text(HOSTILE_FILE).first).to_be_visible()
    shot(page, "hostile-predictions-csv.png")

    # The run's description: the report's note, Markdown that MLflow renders (sanitised).
    experiment_id, run_id = run
    page.goto(f"{url}/#/experiments/{experiment_id}/runs/{run_id}")
    note = page.get_by_test_id("note-editor-preview-content")
    expect(note.get_by_text(DISCLAIMER).first).to_be_visible()
    show_more = page.get_by_text("Show more", exact=True)
    if show_more.count():
        show_more.first.click()
    page.wait_for_timeout(500)
    note_text = note.inner_text()
    shot(page, "hostile-overview.png")

    # The same report outside the UI's sandboxed iframe, where a script could open a dialog.
    local = Path(runs["client"].download_artifacts(run_id, "report/report.html",
                                                   str(runs["folder"])))
    page.goto(local.as_uri())
    expect(page.get_by_text(f"true: {HOSTILE_CLASS}").first).to_be_visible()
    page.wait_for_timeout(500)

    assert watched.dialogs == [], watched.dialogs
    assert not watched.errors(), watched.errors()
    assert HOSTILE_CLASS in note_text, " ".join(note_text.split())[-300:]
