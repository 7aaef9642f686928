"""gallery.html: escaping of hostile recipe text, and the page itself in headless Chromium."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from _outputs_fixture import make_folder, plan_jobs

from seedream_pipe.outputs import open_output, write_gallery
from seedream_pipe.outputs.gallery import GALLERY_CELL, json_for_script

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCRIPT = "<script>alert(1)</script>"
ATTR = '"><img src=x onerror=alert(2)>'
HOSTILE_SUBJECTS = {"cat": f"a cat {SCRIPT}", ATTR: f"{ATTR} tea house"}


@pytest.fixture
def hostile(tmp_path: Path) -> Path:
    """A sweep whose labels, prompts and error text try to break out of the HTML."""
    make_folder(tmp_path, jobs=plan_jobs(subjects=HOSTILE_SUBJECTS, prompt_prefix="</script><!-- "))
    write_gallery(open_output(tmp_path))
    return tmp_path / "gallery.html"


def embedded_data(html: str) -> dict[str, Any]:
    match = re.search(
        r'<script type="application/json" id="gallery-data">(.*?)</script>', html, re.S
    )
    assert match, "the data block is missing"
    data: dict[str, Any] = json.loads(match.group(1))
    return data


def inline_handlers(html: str) -> list[str]:
    """The on* attributes of every element in the page."""
    found: list[str] = []

    class Collect(HTMLParser):
        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            found.extend(f"{tag} {name}" for name, _ in attrs if name.startswith("on"))

    Collect().feed(html)
    return found


def test_recipe_text_is_escaped_everywhere(hostile: Path) -> None:
    html = hostile.read_text(encoding="utf-8")
    assert SCRIPT not in html
    assert "<img src=x" not in html
    assert "<!-- " not in html
    assert html.count("</script>") == 2  # the data block and the page's own script, nothing else
    assert "&lt;img src=x onerror=alert(2)&gt;" in html  # shown as text, in labels and filters
    # and no element carries an inline event handler (onerror=, onsubmit=, ...): the page's one
    # script attaches its listeners, so nothing in the markup is ever run as code
    assert inline_handlers(html) == []
    data = embedded_data(html)
    # the JSON block holds the exact text, recovered intact
    assert data["jobs"]["j001"]["prompt"] == f"</script><!-- a cat {SCRIPT}, soft watercolor"
    assert data["jobs"]["j005"]["axes"]["subject"] == ATTR


def test_bidi_marks_are_shown_as_text_not_obeyed(tmp_path: Path) -> None:
    # "\u202egnp.exe" shows as "exe.png": in labels, prompts and the viewer's data alike
    make_folder(tmp_path, jobs=plan_jobs(subjects={"cat \u202egnp.exe": "a cat"}, prompt_prefix="\u2066x\u2069 "))
    write_gallery(open_output(tmp_path))
    html = (tmp_path / "gallery.html").read_text(encoding="utf-8")
    assert not any(mark in html for mark in "\u202e\u2066\u2069")
    assert "cat \\u202egnp.exe" in html  # the label, as text
    data = embedded_data(html)
    assert data["jobs"]["j001"]["prompt"].startswith("\\u2066x\\u2069 ")  # the viewer shows it so


def test_json_for_script_escapes_what_could_end_the_element() -> None:
    text = str(json_for_script({"a": "</script><!--&\u2028"}))
    assert "<" not in text and ">" not in text and "&" not in text and "\u2028" not in text
    assert json.loads(text) == {"a": "</script><!--&\u2028"}


def test_the_page_is_self_contained_with_relative_image_paths(hostile: Path) -> None:
    html = hostile.read_text(encoding="utf-8")
    sources = re.findall(r'<img src="([^"]+)"', html)
    assert len(sources) == 5  # the five done jobs
    assert all(src.startswith("thumbs/") for src in sources)
    assert not re.search(r'(src|href)="(https?:)?//', html)
    assert "default-src 'none'" in html  # and the browser is told so


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"{CHROMIUM} is missing: the gallery test needs Debian's chromium "
            "(apt-get install -y chromium; .ci/run installs it)"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


def test_gallery_in_chromium_loads_filters_and_enlarges(hostile: Path, browser: Any) -> None:
    page = browser.new_page(viewport={"width": 1200, "height": 1000})
    dialogs: list[str] = []
    errors: list[str] = []
    requests: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("request", lambda request: requests.append(request.url))
    page.goto(hostile.as_uri())
    page.wait_for_load_state("load")

    # every image in the grid loaded from the folder
    loaded = page.evaluate("Array.from(document.images).map(i => [i.complete, i.naturalWidth])")
    assert len(loaded) == 5 and all(done and width > 0 for done, width in loaded)
    assert all(url.startswith("file://") for url in requests)
    assert page.locator("#count").text_content() == "8 of 8 shown"

    # a filter hides the cells of the label unticked, and only those
    cat_figures = page.locator('figure.job[data-job="j001"], figure.job[data-job="j004"]')
    page.get_by_label("cat", exact=True).uncheck()
    assert cat_figures.nth(0).is_hidden() and cat_figures.nth(1).is_hidden()
    assert page.locator('figure.job[data-job="j005"]').is_visible()
    assert page.locator("#count").text_content() == "4 of 8 shown"
    page.locator('#filters input[data-axis="status"][value="failed"]').uncheck()
    assert page.locator("#count").text_content() == "4 of 8 shown"  # the failed job was a cat
    page.locator("#reset").click()
    assert page.locator("#count").text_content() == "8 of 8 shown"

    # clicking enlarges: the full image, the prompt as text and the job's timings
    page.locator('figure.job[data-job="j001"]').click()
    assert page.locator("#viewer").is_visible()
    assert page.locator("#viewer-image").get_attribute("src") == (
        "images/0001_j001_cat-watercolor-1-1.png"
    )
    page.wait_for_function("document.getElementById('viewer-image').naturalWidth > 0")
    prompt = page.locator("#viewer-prompt").text_content()
    assert prompt == f"</script><!-- a cat {SCRIPT}, soft watercolor"
    facts = page.locator("#viewer-facts").inner_text()
    assert "latency" in facts and "12.00 s" in facts and "queue" in facts
    page.locator("#viewer-close").click()
    assert page.locator("#viewer").is_hidden()

    # a failed job shows its reason in the grid and in the viewer
    failed = page.locator('figure.job[data-job="j003"]')
    assert "content policy: the prompt was rejected" in failed.inner_text()
    failed.click()
    assert page.locator("#viewer-error").text_content() == "content policy: the prompt was rejected"

    # nothing hostile ran
    assert dialogs == [] and errors == []
    page.close()


def test_labels_a_browser_rewrites_in_an_attribute_still_filter(tmp_path: Path, browser: Any) -> None:
    # The boxes' value attributes held the labels, which the browser rewrites (CR -> LF, NUL ->
    # U+FFFD): with every box ticked these cells were hidden ("1 of 3 shown") for good.
    subjects = {"alpha\r\nbeta": "alpha", "gamma\rdelta": "gamma", "plain": "plain", "nul\x00here": "nul"}  # label: value
    page = _open(browser, _sweep(tmp_path, subjects, {"photo": "photo"}), DESKTOP)
    assert page.locator("#count").text_content() == "4 of 4 shown"
    assert page.evaluate("Array.from(document.querySelectorAll('figure.job')).every(f => !f.hidden)")
    boxes = page.locator('#filters input[data-axis="subject"]')
    boxes.nth(1).uncheck()  # gamma\rdelta
    assert page.locator("#count").text_content() == "3 of 4 shown"
    hidden = page.evaluate("Array.from(document.querySelectorAll('figure.job')).filter(f => f.hidden)"
                           ".map(f => f.title)")
    assert len(hidden) == 1 and "gamma" in hidden[0]
    page.close()


@pytest.mark.parametrize("names", [("status", "style"), ("subject", "__proto__")], ids=["status", "proto"])
def test_an_axis_named_as_the_pages_own_keys_still_filters(
    tmp_path: Path, browser: Any, names: tuple[str, str]
) -> None:
    # An axis named "status" had its boxes read as the status filter's: no job's status group
    # was "draft", so every cell was hidden ("0 of 4 shown") for good. One named "__proto__"
    # wrote its ticked labels onto every object, so unticking the same label of another axis
    # hid nothing.
    first, second = names
    jobs = [
        dataclasses.replace(
            job,
            axes={first: job.axes["subject"], second: job.axes["style"], "resolution": job.axes["resolution"]},
            values={first: job.values["subject"], second: job.values["style"], "resolution": job.values["resolution"]},
        )
        for job in plan_jobs(subjects={"draft": "a", "final": "b"}, styles={"draft": "c", "ink": "d"}, resolutions=ONE_RESOLUTION)
    ]
    make_folder(tmp_path, jobs=jobs, states={}, recipe_meta={"name": "sweep", "sheet": {}})
    write_gallery(open_output(tmp_path))
    page = _open(browser, tmp_path / "gallery.html", DESKTOP)
    assert page.locator("#count").text_content() == "4 of 4 shown"
    page.locator(f'#filters input[data-axis="{first}"][data-label="0"]').uncheck()  # its "draft"
    assert page.locator("#count").text_content() == "2 of 4 shown"
    hidden = page.evaluate("Array.from(document.querySelectorAll('figure.job')).filter(f => f.hidden).map(f => f.dataset.job)")
    assert hidden == ["j001", "j002"]  # the jobs whose first axis reads "draft"
    page.locator('#filters input[data-axis="status"][value="done"]').uncheck()
    assert page.locator("#count").text_content() == "0 of 4 shown"
    page.close()


def test_the_filter_bar_never_covers_the_grid_for_good(tmp_path: Path, browser: Any) -> None:
    # 40 labels made a sticky bar 975 px tall on a 844 px phone: after any scroll the screen
    # showed nothing but checkboxes.
    subjects = {f"a ceramic teapot variant {i:02d}": f"a ceramic teapot variant {i:02d}" for i in range(40)}
    gallery = _sweep(tmp_path, subjects, {"ink": "ink", "photo": "photo"})
    page = _open(browser, gallery, PHONE)
    page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
    assert page.evaluate("document.getElementById('filters').getBoundingClientRect().bottom") <= 0
    page.close()
    page = _open(browser, gallery, DESKTOP)  # sticky, but never more than 40% of the window
    page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
    bar = page.evaluate("(r => [r.top, r.height])(document.getElementById('filters').getBoundingClientRect())")
    assert bar[0] == 0 and bar[1] <= 0.4 * DESKTOP["height"] + 1
    page.close()


def test_the_corner_names_the_row_axes_as_the_sheets_does(tmp_path: Path, browser: Any) -> None:
    page = _open(browser, _sweep(tmp_path, {"a": "a", "b": "b"}, {"ink": "ink", "photo": "photo"}), DESKTOP)
    names = page.evaluate("Array.from(document.querySelectorAll('thead th.axis'), th => th.textContent.trim())")
    assert names == ["style", "subject"]
    page.close()


def test_a_gallery_of_a_moved_folder_still_finds_its_images(tmp_path: Path, browser: Any) -> None:
    make_folder(tmp_path / "a", states={})
    write_gallery(open_output(tmp_path / "a"))
    shutil.move(tmp_path / "a", tmp_path / "b")
    page = browser.new_page()
    page.goto((tmp_path / "b" / "gallery.html").as_uri())
    page.wait_for_load_state("load")
    widths = page.evaluate("Array.from(document.images).map(i => i.naturalWidth)")
    assert len(widths) == 8 and min(widths) > 0
    page.close()


@pytest.mark.parametrize(
    ("settings", "sections", "header_rows"),
    [
        # (a row of the row axes' names under the column headers, when there are row axes)
        ({}, 0, 2),  # subject > style down the side, resolution across
        ({"page_by": "subject"}, 2, 2),  # a section per subject
        ({"rows": ["subject", "style", "resolution"], "cols": []}, 0, 1),  # one column
        ({"rows": [], "cols": ["subject", "resolution"]}, 0, 2),  # one row, nested columns
    ],
)
def test_every_layout_shows_every_job_once(
    tmp_path: Path, settings: dict[str, Any], sections: int, header_rows: int
) -> None:
    from seedream_pipe.outputs.gallery import render_gallery

    make_folder(tmp_path, recipe_meta={"name": "sweep", "sheet": settings})
    html = render_gallery(open_output(tmp_path))
    jobs = re.findall(r'<figure class="job [a-z_ ]+" data-job="(j\d+)"', html)
    assert sorted(jobs) == [f"j{i:03d}" for i in range(1, 9)]
    assert html.count("<h2>") == sections
    assert html.count("<section>") == max(1, sections)
    first_thead = html[html.index("<thead>") : html.index("</thead>")]
    assert first_thead.count("<tr") == header_rows


# Layout in a real browser. Labels as long as the reviewer's recipes: row labels of several
# words, ten columns, and a column label far wider than a cell.
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1366, "height": 900}
ONE_RESOLUTION = {"1K": "1024x1024 (1:1)"}
TEN_COLOURS = (
    "red",
    "orange",
    "yellow",
    "green",
    "blue",
    "indigo",
    "violet",
    "black",
    "white",
    "grey",
)
LONG_STYLE = (
    "extremely detailed photorealistic rendering with shallow depth of field and bokeh, "
    "35mm film grain"
)
LONG_SCENE = (
    "a very long scene description about a lighthouse standing on a rocky coast during a "
    "violent storm with waves crashing"
)
LONG_WORD = "Supercalifragilisticexpialidociousantidisestablishmentarianism"


def _sweep(root: Path, subjects: dict[str, str], styles: dict[str, str]) -> Path:
    """A finished sweep, subject down the side and style across; its gallery's path."""
    jobs = plan_jobs(subjects=subjects, styles=styles, resolutions=ONE_RESOLUTION)
    make_folder(root, jobs=jobs, states={}, recipe_meta={"name": "sweep", "sheet": {}})
    write_gallery(open_output(root))
    return root / "gallery.html"


@pytest.fixture
def wide(tmp_path: Path) -> Path:
    """2 subjects x 10 colours: wider than a desktop screen."""
    subjects = {"portrait of an old fisherman": "a fisherman", "bowl of fruit": "fruit"}
    return _sweep(tmp_path, subjects, {colour: colour for colour in TEN_COLOURS})


@pytest.fixture
def long_labels(tmp_path: Path) -> Path:
    subjects = {LONG_SCENE: "a lighthouse", "short": "short", LONG_WORD: "a word"}
    return _sweep(tmp_path, subjects, {LONG_STYLE: "photo", "ink": "ink"})


def _open(browser: Any, gallery: Path, viewport: dict[str, int]) -> Any:
    page = browser.new_page(viewport=viewport, is_mobile=viewport["width"] < 800)
    page.goto(gallery.as_uri())
    page.wait_for_load_state("load")
    return page


def _boxes(page: Any, selector: str) -> list[dict[str, float]]:
    boxes: list[dict[str, float]] = page.evaluate(
        """(selector) => Array.from(document.querySelectorAll(selector), (e) => {
             const r = e.getBoundingClientRect();
             return {left: r.left, right: r.right, width: r.width, height: r.height};
           })""",
        selector,
    )
    return boxes


# How many of an element's words the browser broke across two lines.
BROKEN_WORDS = """(element) => {
  const text = element.firstChild && element.firstChild.nodeType === 3
    ? element.firstChild : element.querySelector("*").firstChild;
  let broken = [], at = 0;
  for (const word of text.data.split(" ")) {
    const range = document.createRange();
    range.setStart(text, at);
    range.setEnd(text, at + word.length);
    const lines = new Set(Array.from(range.getClientRects(), (r) => Math.round(r.top)));
    if (lines.size > 1) broken.push(word);
    at += word.length + 1;
  }
  return broken;
}"""


@pytest.mark.parametrize("viewport", [PHONE, DESKTOP], ids=["phone", "desktop"])
def test_row_headers_keep_their_width_and_the_grid_scrolls(
    wide: Path, browser: Any, viewport: dict[str, int]
) -> None:
    page = _open(browser, wide, viewport)
    cell = _boxes(page, "figure.job")[0]
    # the row headers and the corner above them stay wide enough for a word of a label
    for box in _boxes(page, "th.rowhead") + _boxes(page, "th.axis"):
        assert box["width"] >= 100
    # so no word is cut in two and a row is as tall as its images
    for header in page.locator("th.rowhead").element_handles():
        assert header.evaluate(BROKEN_WORDS) == []
    for row in _boxes(page, "tbody tr"):
        assert row["height"] <= cell["height"] + 1
    # the grid scrolls sideways inside the page; the page itself does not
    assert page.evaluate("document.documentElement.scrollWidth") == viewport["width"]
    assert page.evaluate("(m => m.scrollWidth > m.clientWidth)(document.querySelector('main'))")
    page.close()


@pytest.mark.parametrize("viewport", [PHONE, DESKTOP], ids=["phone", "desktop"])
def test_a_long_column_label_wraps_within_its_column(
    long_labels: Path, browser: Any, viewport: dict[str, int]
) -> None:
    page = _open(browser, long_labels, viewport)
    cell = _boxes(page, "figure.job")[0]
    header = page.locator("thead th.span").first
    assert header.text_content().strip() == LONG_STYLE  # all of it is in the page
    assert header.get_attribute("title") == LONG_STYLE  # and shown on hover
    box = header.bounding_box()
    assert box["width"] <= cell["width"] + 1  # no wider than the images below it
    assert box["height"] <= 4 * 20 + 10  # a few lines at most
    # its column is as wide as the others
    widths = {round(b["width"]) for b in _boxes(page, "thead th.span")}
    assert widths == {round(cell["width"])}
    page.close()


def test_an_image_the_browser_cannot_show_becomes_a_placeholder(
    tmp_path: Path, browser: Any
) -> None:
    folder = make_folder(tmp_path, states={})
    folder.thumb(1).write_bytes(b"not an image")  # a corrupt thumbnail, its image fine
    folder.thumb(2).write_bytes(b"not an image")  # both corrupt
    folder.image(2).write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    write_gallery(open_output(tmp_path))
    folder.thumb(4).unlink()  # gone after the gallery was written
    page = browser.new_page()
    page.goto((tmp_path / "gallery.html").as_uri())
    page.wait_for_load_state("load")

    for job_id, shown in (
        ("j001", "thumbs/0001"),
        ("j002", "thumbs/0002"),
        ("j004", "thumbs/0004"),
    ):
        figure = page.locator(f'figure.job[data-job="{job_id}"]')
        assert figure.locator("img").count() == 0  # no broken-image glyph
        text = figure.inner_text()
        assert "IMAGE UNREADABLE" in text and shown in text
    widths = page.evaluate("Array.from(document.images).map(i => i.naturalWidth)")
    assert len(widths) == 5 and min(widths) > 0  # the other images are untouched

    # the viewer shows the full image when only the thumbnail is bad, else the same placeholder
    page.locator('figure.job[data-job="j001"]').click()
    page.wait_for_function("document.getElementById('viewer-image').naturalWidth > 0")
    page.locator("#viewer-next").click()
    page.wait_for_selector("#viewer-picture .placeholder")
    assert page.locator("#viewer-image").count() == 0
    note = page.locator("#viewer-picture").inner_text()
    assert "IMAGE UNREADABLE" in note and "images/0002" in note
    page.close()


# For each filter label: its box, its fieldset's, and whether its text is cut with an ellipsis.
FILTER_LABELS = """() => Array.from(document.querySelectorAll("#filters fieldset label"), (label) => {
  const text = Array.from(label.querySelectorAll("*")).find((e) => e.tagName !== "INPUT");
  const style = text && getComputedStyle(text);
  return {
    title: label.title,
    right: label.getBoundingClientRect().right,
    fieldset: label.closest("fieldset").getBoundingClientRect().right,
    cut: !!text && text.scrollWidth > text.clientWidth,
    ellipsis: !!style && style.textOverflow === "ellipsis" && style.display !== "inline",
  };
})"""


@pytest.mark.parametrize("viewport", [PHONE, DESKTOP], ids=["phone", "desktop"])
def test_long_filter_labels_end_in_an_ellipsis_within_the_screen(
    long_labels: Path, browser: Any, viewport: dict[str, int]
) -> None:
    page = _open(browser, long_labels, viewport)
    # only the grid scrolls sideways: the filters fit the screen
    assert page.evaluate("document.documentElement.scrollWidth") == viewport["width"]
    for box in _boxes(page, "#filters fieldset"):
        assert box["right"] <= viewport["width"]
    labels = {label["title"]: label for label in page.evaluate(FILTER_LABELS)}
    ends: dict[float, float] = {}
    for label in labels.values():
        assert label["right"] <= label["fieldset"]
        ends[label["fieldset"]] = max(ends.get(label["fieldset"], 0), label["right"])
    # and a fieldset is as wide as its labels need, no wider (its padding and a margin aside)
    assert all(fieldset - end <= 30 for fieldset, end in ends.items())
    # a label too long for the line is cut with an ellipsis, its whole text on hover
    for long in (LONG_SCENE, LONG_STYLE, LONG_WORD):
        assert labels[long]["cut"] and labels[long]["ellipsis"]
    assert not labels["short"]["cut"]
    page.close()


@pytest.fixture
def excluded_with_repeats(tmp_path: Path) -> Path:
    """subject > style x resolution, two repeats, tea/photo at 16:9 excluded from the plan."""
    jobs = [
        job
        for job in plan_jobs(repeats=2)
        if (job.axes["subject"], job.axes["style"], job.axes["resolution"]) != ("tea", "photo", "16:9")
    ]
    make_folder(tmp_path, jobs=jobs, states={}, recipe_meta={"name": "sweep", "sheet": {}})
    write_gallery(open_output(tmp_path))
    return tmp_path / "gallery.html"


@pytest.mark.parametrize("viewport", [PHONE, DESKTOP], ids=["phone", "desktop"])
def test_an_excluded_combination_fills_its_whole_cell(
    excluded_with_repeats: Path, browser: Any, viewport: dict[str, int]
) -> None:
    page = _open(browser, excluded_with_repeats, viewport)
    (none,) = _boxes(page, "td.nojob .none")
    (column,) = _boxes(page, "td.nojob")
    slots = _boxes(page, "td:not(.nojob) .slots")
    assert {round(s["width"]) for s in slots} == {round(column["width"])}  # two repeats a cell
    # "no job" spans the cell, both repeat slots, as on the contact sheet
    assert round(none["width"]) == round(column["width"])
    assert none["left"] == column["left"]
    page.close()


TWELVE_COLOURS = (*TEN_COLOURS, "pink", "brown")

# Each figure in page order: its job, its box, and the label of the cell it sits in.
WRAPPED_FIGURES = """() => Array.from(document.querySelectorAll("figure.job"), (figure) => {
  const r = figure.getBoundingClientRect();
  const label = figure.closest(".cell").querySelector(".cell-label");
  const l = label.getBoundingClientRect();
  return {job: figure.dataset.job, top: Math.round(r.top), left: Math.round(r.left),
          label: label.textContent.trim(), title: label.title,
          labelBottom: l.bottom, labelLeft: Math.round(l.left), labelWidth: l.width, width: r.width};
})"""


def _single_axis(
    root: Path,
    settings: dict[str, Any],
    repeats: int = 1,
    resolutions: dict[str, str] = ONE_RESOLUTION,
) -> Path:
    """12 colours, one style and one resolution: a single axis on the sheet."""
    jobs = plan_jobs(
        subjects={colour: colour for colour in TWELVE_COLOURS},
        styles={"photo": "photo"},
        resolutions=resolutions,
        repeats=repeats,
    )
    make_folder(root, jobs=jobs, states={}, recipe_meta={"name": "tall", "sheet": settings})
    write_gallery(open_output(root))
    return root / "gallery.html"


@pytest.mark.parametrize(("repeats", "across"), [(1, 4), (2, 3)])
def test_a_single_axis_wraps_into_a_labelled_grid_in_reading_order(
    tmp_path: Path, browser: Any, repeats: int, across: int
) -> None:
    page = _open(browser, _single_axis(tmp_path, {}, repeats), DESKTOP)
    figures = page.evaluate(WRAPPED_FIGURES)
    assert len(figures) == 12 * repeats
    # about sqrt(N) cells across, as on the sheet (fewer with two repeats a cell)
    lefts = sorted({f["left"] for f in figures})
    assert len(lefts) == across * repeats
    assert len({f["top"] for f in figures}) == -(-12 // across)
    # read left to right, then down, in plan order, each image under its own label
    assert sorted(figures, key=lambda f: (f["top"], f["left"])) == figures
    labels = [f["label"] for f in figures]
    assert labels == [colour for colour in TWELVE_COLOURS for _ in range(repeats)]
    for figure in figures:
        assert figure["title"] == figure["label"]
        assert figure["labelBottom"] <= figure["top"]
        assert figure["left"] - figure["labelLeft"] in {0, round(figure["width"]) + 4}
        assert figure["labelWidth"] >= repeats * figure["width"]
    assert page.locator("th").count() == 0  # no header bands
    page.close()


def test_a_wrapped_grid_filters_and_steps_in_reading_order(tmp_path: Path, browser: Any) -> None:
    page = _open(browser, _single_axis(tmp_path, {}), DESKTOP)
    page.get_by_label("green", exact=True).uncheck()
    assert page.locator("#count").text_content() == "11 of 12 shown"
    assert page.locator('figure.job[data-job="j004"]').is_hidden()
    # from yellow, the last visible of the first row, → goes to blue, the first of the next
    page.locator('figure.job[data-job="j003"]').click()
    assert page.locator("#viewer-title").text_content().startswith("#3 · yellow")
    page.keyboard.press("ArrowRight")
    assert page.locator("#viewer-title").text_content().startswith("#5 · blue")
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("ArrowLeft")
    assert page.locator("#viewer-title").text_content().startswith("#2 · orange")
    page.close()


def test_a_wrapped_grid_fits_a_phone(tmp_path: Path, browser: Any) -> None:
    page = _open(browser, _single_axis(tmp_path, {}), PHONE)
    figures = page.evaluate(WRAPPED_FIGURES)
    assert sorted(figures, key=lambda f: (f["top"], f["left"])) == figures
    assert [f["label"] for f in figures] == list(TWELVE_COLOURS)
    # fewer cells across on a narrow screen: neither the page nor the grid scrolls sideways
    assert page.evaluate("document.documentElement.scrollWidth") == PHONE["width"]
    assert page.evaluate("(m => m.scrollWidth <= m.clientWidth)(document.querySelector('main'))")
    page.close()


# Each figure of a wrapped grid: its cell's label, its box, and how its picture is fitted in it.
REPEAT_FIGURES = """() => Array.from(document.querySelectorAll("figure.job"), (figure) => {
  const r = figure.getBoundingClientRect();
  const img = figure.querySelector("img"), i = img.getBoundingClientRect();
  return {label: figure.closest(".cell").querySelector(".cell-label").textContent.trim(),
          left: r.left, right: r.right, top: r.top, width: r.width, height: r.height,
          inside: i.left >= r.left - 0.5 && i.right <= r.right + 0.5 && i.top >= r.top - 0.5
                  && i.bottom <= r.bottom + 0.5,
          boxRatio: i.width / i.height, imageRatio: img.naturalWidth / img.naturalHeight,
          fit: getComputedStyle(img).objectFit};
})"""


@pytest.mark.parametrize("viewport", [PHONE, DESKTOP], ids=["phone", "desktop"])
def test_a_wrapped_cell_of_two_repeats_fits_a_phone(
    tmp_path: Path, browser: Any, viewport: dict[str, int]
) -> None:
    # two repeats side by side are 404 px, wider than a phone: the cell scrolled sideways
    gallery = _single_axis(tmp_path, {}, repeats=2, resolutions={"16:9": "2560x1440 (16:9)"})
    page = _open(browser, gallery, viewport)
    page.wait_for_function("Array.from(document.images).every((i) => i.naturalWidth > 0)")
    assert page.evaluate("document.documentElement.scrollWidth") == viewport["width"]
    assert page.evaluate("(m => m.scrollWidth <= m.clientWidth)(document.querySelector('main'))")
    figures = page.evaluate(REPEAT_FIGURES)
    assert len(figures) == 24
    for first, second in zip(figures[::2], figures[1::2], strict=True):
        # a cell's repeats stay side by side under its label, within the screen
        assert first["label"] == second["label"]
        assert first["top"] == second["top"] and first["right"] < second["left"]
        assert second["right"] <= viewport["width"]
    for figure in figures:
        # each a square box, its picture inside it at its own aspect ratio
        assert abs(figure["width"] - figure["height"]) < 1
        assert figure["inside"]
        assert figure["fit"] == "contain" or (abs(figure["boxRatio"] - figure["imageRatio"]) < 0.05)
    # at full size on a desktop, smaller on a phone but still big enough to see
    sizes = {round(figure["width"]) for figure in figures}
    if viewport is DESKTOP:
        assert sizes == {GALLERY_CELL}
    else:
        assert len(sizes) == 1 and 150 <= sizes.pop() < GALLERY_CELL
    page.close()


# Each row, column and cell label as laid out (width null), then made each width in turn: its
# lines as laid out (spaces left out), and the widths at which a line of it starts with
# punctuation or a letter of it lies outside its box (unless the label cuts it with an ellipsis,
# as a row label does a word too long for its header).
LABEL_BREAKS = r"""(widths) => Array.from(document.querySelectorAll("th .label, .cell-label > span"), (label) => {
  const bad = [];
  const cuts = getComputedStyle(label).textOverflow === "ellipsis";
  let natural = null;
  for (const width of widths) {
    if (width !== null) {
      Object.assign(label.style, {width: width + "px", minWidth: "0", maxWidth: "none", flex: "none"});
    }
    const edge = label.getBoundingClientRect();
    const lines = [], walker = document.createTreeWalker(label, NodeFilter.SHOW_TEXT);
    let outside = false;
    for (let text = walker.nextNode(); text; text = walker.nextNode()) {
      for (let i = 0; i < text.data.length; i++) {
        if (text.data[i] === " ") continue;
        const range = document.createRange();
        range.setStart(text, i);
        range.setEnd(text, i + 1);
        const box = Array.from(range.getClientRects()).find((r) => r.width > 0);
        if (!box) continue;
        outside ||= box.left < edge.left - 0.5 || box.right > edge.right + 0.5;
        const top = Math.round(box.top);
        if (!lines.length || lines[lines.length - 1].top !== top) lines.push({top, text: ""});
        lines[lines.length - 1].text += text.data[i];
      }
    }
    const texts = lines.map((line) => line.text);
    if (width === null) natural = texts;
    if ((outside && !cuts) || texts.slice(1).some((line) => /^[,.;:!?)\]、。]/.test(line))) {
      bad.push({width, lines: texts, outside});
    }
  }
  label.removeAttribute("style");
  return {label: label.textContent, natural, bad};
})"""
PUNCTUATED_LABELS = (
    "photorealistic, cinematic, dramatic",
    f"{LONG_WORD}, bright",
    "low mist; soft dawn light",
    "neon (rainy street)!",
    "写真、夜景。東京",
    "red, bold",
)


@pytest.mark.parametrize(
    "settings",
    [{"rows": ["subject"]}, {"rows": [], "cols": ["subject"]}, {}],
    ids=["rows", "columns", "wrapped"],
)
def test_a_label_never_starts_a_line_with_punctuation(
    tmp_path: Path, browser: Any, settings: dict[str, Any]
) -> None:
    # a word too long for the line breaks anywhere (overflow-wrap), and broke right before its
    # comma when it filled the line to just there: "photorealistic" / ", cinematic,"
    jobs = plan_jobs(
        subjects={label: label for label in PUNCTUATED_LABELS},
        styles={"photo": "photo"},
        resolutions=ONE_RESOLUTION,
    )
    make_folder(tmp_path, jobs=jobs, states={}, recipe_meta={"name": "commas", "sheet": settings})
    write_gallery(open_output(tmp_path))
    page = _open(browser, tmp_path / "gallery.html", PHONE)
    labels = {
        label["label"]: label for label in page.evaluate(LABEL_BREAKS, [None, *range(30, 241)])
    }
    assert sorted(labels) == sorted(PUNCTUATED_LABELS)
    # at the width the layout gives it, and at any other, a label breaks at its spaces or inside
    # a word too long for the line (a row label cuts that word with an ellipsis instead), never
    # before the punctuation that ends a word, and never overflows
    assert [label for label in labels.values() if label["bad"]] == []
    # and a short one is on one line, as before
    assert labels["red, bold"]["natural"] == ["red,bold"]
    page.close()


def test_a_named_single_axis_keeps_its_labelled_column(tmp_path: Path) -> None:
    html = _single_axis(tmp_path, {"rows": ["subject"]}).read_text(encoding="utf-8")
    assert html.count('<th class="rowhead') == 12
    assert "cell-label" not in html.split("</style>")[1]


# Each figure's band (an image file no longer on disk as downloaded), against its figure's box.
BANDS = """() => Object.fromEntries(Array.from(document.querySelectorAll("figure.job"), (figure) => {
  const band = figure.querySelector(".band");
  if (!band) return [figure.dataset.job, null];
  const f = figure.getBoundingClientRect(), b = band.getBoundingClientRect();
  const img = figure.querySelector("img");
  return [figure.dataset.job, {text: band.textContent.trim(), visible: b.height > 0,
    bottom: b.bottom - f.bottom, left: b.left - f.left, right: b.right - f.right,
    loaded: !!img && img.naturalWidth > 0}];
}))"""


def test_an_image_file_no_longer_on_disk_as_downloaded_is_marked(
    tmp_path: Path, browser: Any
) -> None:
    folder = make_folder(tmp_path, states={})
    folder.image(1).unlink()  # deleted, its thumbnail left
    with folder.image(2).open("ab") as changed:  # overwritten at another size
        changed.write(b"\0" * 100)
    folder.image(4).unlink()  # deleted with its thumbnail: nothing to show
    folder.thumb(4).unlink()
    write_gallery(open_output(tmp_path))
    page = _open(browser, tmp_path / "gallery.html", DESKTOP)

    bands = page.evaluate(BANDS)
    # the thumbnail still shows what the job made, banded across its foot as on the sheet
    for job_id, text in (("j001", "IMAGE MISSING"), ("j002", "IMAGE CHANGED")):
        band = bands[job_id]
        assert band is not None and band["text"] == text and band["visible"] and band["loaded"]
        assert band["bottom"] == 0 and band["left"] == 0 and band["right"] == 0
    assert bands["j003"] is None and bands["j005"] is None
    # nothing at all left: the placeholder says so, as before
    assert bands["j004"] is None
    assert "IMAGE MISSING" in page.locator('figure.job[data-job="j004"]').inner_text()

    # the viewer shows the thumbnail of a deleted image (not a broken one) and says why
    page.locator('figure.job[data-job="j001"]').click()
    assert page.locator("#viewer-image").get_attribute("src").startswith("thumbs/0001")
    page.wait_for_function("document.getElementById('viewer-image').naturalWidth > 0")
    notice = page.locator("#viewer-notice")
    assert notice.is_visible()
    assert "IMAGE MISSING" in notice.inner_text() and "images/0001" in notice.inner_text()
    assert "IMAGE MISSING" in page.locator("#viewer-picture").inner_text()
    # a changed file: shown as it is on disk, said to differ from the one downloaded
    page.keyboard.press("ArrowRight")
    assert page.locator("#viewer-image").get_attribute("src").startswith("images/0002")
    assert "IMAGE CHANGED" in notice.inner_text() and "images/0002" in notice.inner_text()
    assert "IMAGE CHANGED" in page.locator("#viewer-picture").inner_text()
    # an image on disk as downloaded: no notice
    page.keyboard.press("ArrowRight")
    assert notice.is_hidden()
    assert page.locator("#viewer-picture .band").count() == 0
    page.close()


@pytest.mark.parametrize("viewport", [PHONE, DESKTOP], ids=["phone", "desktop"])
def test_a_long_row_label_is_cut_to_its_row(
    long_labels: Path, browser: Any, viewport: dict[str, int]
) -> None:
    page = _open(browser, long_labels, viewport)
    cell = _boxes(page, "figure.job")[0]
    # a row is as tall as its images, however long its label
    for row in _boxes(page, "tbody tr"):
        assert row["height"] <= cell["height"] + 1
    header = page.locator("th.rowhead").first
    assert header.text_content().strip() == LONG_SCENE  # all of it is in the page
    assert header.get_attribute("title") == LONG_SCENE  # and shown on hover
    # cut with an ellipsis after a few lines
    label = header.locator(".label")
    assert label.evaluate("(e) => e.scrollHeight > e.clientHeight")
    assert label.evaluate("(e) => getComputedStyle(e).webkitLineClamp") in {"5", "6"}
    page.close()


# Each row label as laid out: the places where a line ends inside a word (a letter or digit
# either side, no space or hyphen between), the words with a letter outside its box, and whether
# the label cuts what overflows with an ellipsis.
ROW_LABEL_LINES = r"""() => Array.from(document.querySelectorAll("th.rowhead .label"), (label) => {
  const edge = label.getBoundingClientRect(), style = getComputedStyle(label);
  const chars = [], walker = document.createTreeWalker(label, NodeFilter.SHOW_TEXT);
  for (let text = walker.nextNode(); text; text = walker.nextNode()) {
    for (let i = 0; i < text.data.length; i++) {
      const range = document.createRange();
      range.setStart(text, i);
      range.setEnd(text, i + 1);
      const box = Array.from(range.getClientRects()).find((r) => r.width > 0);
      chars.push({ch: text.data[i], top: box ? Math.round(box.top) : null,
                  outside: !!box && box.right > edge.right + 0.5});
    }
  }
  const word = /[\p{L}\p{N}\p{M}]/u, text = chars.map((c) => c.ch).join("");
  const inside = [], cut = new Set();
  chars.forEach((c, i) => {
    const before = chars[i - 1];
    if (before && word.test(before.ch) && word.test(c.ch) && before.top !== null && c.top !== null
        && before.top !== c.top) {
      inside.push(text.slice(Math.max(0, i - 8), i) + "|" + text.slice(i, i + 8));
    }
    if (c.outside) cut.add(text.slice(text.lastIndexOf(" ", i) + 1).split(" ")[0]);
  });
  return {label: text, width: label.closest("th").getBoundingClientRect().width, inside,
          cut: Array.from(cut), ellipsis: style.textOverflow === "ellipsis" && style.overflowX === "hidden"};
})"""
COMPOUND = "Donaudampfschifffahrtsgesellschaftskapitän"
URLISH = "https://example.com/very/long/path/to/reference-image.png"
NIGHT_SKY = "Himmelbeleuchtung"  # in bold, wider than 9em and narrower than 14em


@pytest.mark.parametrize("viewport", [PHONE, DESKTOP], ids=["phone", "desktop"])
def test_a_row_label_breaks_between_words_and_cuts_a_long_one_with_an_ellipsis(
    tmp_path: Path, browser: Any, viewport: dict[str, int]
) -> None:
    # overflow-wrap: anywhere broke "Nachthimmelbe" / "leuchtung" in a 9em header, although a
    # label was said to break between words, not in them
    subjects = [COMPOUND, URLISH, NIGHT_SKY, f"portrait of a {COMPOUND} at dawn", "a rocky coast"]
    gallery = _sweep(tmp_path, {label: label for label in subjects}, {"ink": "ink", "photo": "photo"})
    page = _open(browser, gallery, viewport)
    labels = {label["label"]: label for label in page.evaluate(ROW_LABEL_LINES)}
    assert sorted(labels) == sorted(subjects)
    # no line ends inside a word
    assert {name: label["inside"] for name, label in labels.items() if label["inside"]} == {}
    # a word too long for its header is cut, with an ellipsis, and only such a word
    for label in labels.values():
        assert label["cut"] == [] or label["ellipsis"]
        assert set(label["cut"]) <= {COMPOUND, URLISH, NIGHT_SKY}
    assert labels[COMPOUND]["cut"] == [COMPOUND]
    assert labels[f"portrait of a {COMPOUND} at dawn"]["cut"] == [COMPOUND]
    em = 14  # the page's font size
    widths = [label["width"] for label in labels.values()]
    if viewport is DESKTOP:
        # a word wider than 9em widens its header, up to 14em, and stays whole
        assert labels[NIGHT_SKY]["cut"] == []
        assert 9 * em < max(widths) <= 14 * em + 12 + 1
    else:
        # on a phone the header stays about as narrow as before: the images are what it shows
        assert max(widths) <= 0.3 * PHONE["width"] + 12 + 1
    assert min(widths) >= 8 * em
    page.close()


# Each wrapped cell shown: its label and where it is.
WRAPPED_PLACES = """() => Array.from(document.querySelectorAll(".wrapped .cell"))
  .filter((cell) => cell.getClientRects().length)
  .map((cell) => { const r = cell.getBoundingClientRect();
                   return [cell.querySelector(".cell-label").textContent.trim(), r.left, r.top, r.width, r.height]; })"""


# Before any filter: which rows each row header is beside and which columns each column header
# is over (kept on the element, as a filter may move it).
MARK_GRID = """() => document.querySelectorAll("table.sheet").forEach((table) => {
  const rows = Array.from(table.querySelectorAll("tbody > tr"));
  const cells = Array.from(rows[0].querySelectorAll("td"));
  const inside = (a, b, lo, hi) => a[lo] >= b[lo] - 1 && a[hi] <= b[hi] + 1;
  table.querySelectorAll("th.rowhead").forEach((th) => {
    const box = th.getBoundingClientRect();
    th._rows = rows.flatMap((tr, r) => inside(tr.getBoundingClientRect(), box, "top", "bottom") ? [r] : []);
  });
  table.querySelectorAll("thead th.span").forEach((th) => {
    const box = th.getBoundingClientRect();
    th._cols = cells.flatMap((td, c) => inside(td.getBoundingClientRect(), box, "left", "right") ? [c] : []);
  });
})"""
# After a filter: what in the grid differs from an unfiltered grid of the rows and columns left.
GRID_FAULTS = """() => {
  const faults = [], shown = (e) => e.getClientRects().length > 0;
  for (const table of document.querySelectorAll("table.sheet")) {
    const rows = Array.from(table.querySelectorAll("tbody > tr"));
    const pictures = (tds) => tds.flatMap((td) => Array.from(td.querySelectorAll("figure.job")))
      .filter(shown).map((f) => f.getBoundingClientRect());
    const cellsOf = (tr) => Array.from(tr.querySelectorAll("td"));
    if (!pictures(rows.flatMap(cellsOf)).length) {
      if (shown(table.closest("section"))) faults.push("a section with no picture left is shown");
      continue;
    }
    rows.forEach((tr, r) => {
      if (!pictures(cellsOf(tr)).length && tr.getBoundingClientRect().height > 0) {
        faults.push(`row ${r}, no picture left, is ${tr.getBoundingClientRect().height} px tall`);
      }
    });
    const check = (th, tds, lo, hi) => {
      const left = pictures(tds), box = th.getBoundingClientRect(), name = th.title;
      if (!left.length) {
        if (shown(th)) faults.push(`the header "${name}" of no picture left is shown`);
        return;
      }
      const from = Math.min(...left.map((f) => f[lo])), to = Math.max(...left.map((f) => f[hi]));
      if (!shown(th) || Math.abs(box[lo] - from) > 1 || Math.abs(box[hi] - to) > 1) {
        faults.push(`the header "${name}" spans ${box[lo]}-${box[hi]}, its pictures ${from}-${to}`);
      }
    };
    table.querySelectorAll("th.rowhead").forEach((th) => check(th, th._rows.flatMap((r) => cellsOf(rows[r])), "top", "bottom"));
    table.querySelectorAll("thead th.span").forEach((th) => check(th, rows.flatMap((tr) => th._cols.map((c) => cellsOf(tr)[c])), "left", "right"));
    // the rows and columns left follow one another, and end the table, as in an unfiltered
    // grid: one border-spacing apart, no empty band between or after them
    const spacing = parseFloat(getComputedStyle(table).borderSpacing), t = table.getBoundingClientRect();
    const apart = (boxes, lo, hi, end, what) => boxes.forEach((box, i) => {
      const next = i + 1 < boxes.length ? boxes[i + 1][lo] : end;
      if (Math.abs(next - box[hi] - spacing) > 1) faults.push(`${next - box[hi]} px after ${what} ${i}`);
    });
    const left = rows.filter(shown);
    apart(left.map((tr) => tr.getBoundingClientRect()), "top", "bottom", t.bottom, "row");
    left.forEach((tr) => apart(cellsOf(tr).filter(shown).map((td) => td.getBoundingClientRect()),
                               "left", "right", t.right, "column"));
  }
  return faults;
}"""


@pytest.mark.parametrize("viewport", [PHONE, DESKTOP], ids=["phone", "desktop"])
@pytest.mark.parametrize(
    ("settings", "untick"),
    [
        ({}, "watercolor"),  # an inner row axis: the outer headers' own rows go
        ({}, "cat"),  # an outer row axis: a whole band of rows, its headers with it
        ({}, "16:9"),  # a column
        ({}, "done"),  # a status: the rows and columns left without a picture
        ({"page_by": "subject"}, "cat"),  # a section
        ({"rows": [], "cols": ["subject", "resolution"]}, "cat"),  # one row: an outer column band
    ],
    ids=["inner-row", "outer-row", "column", "status", "section", "outer-column"],
)
def test_a_filtered_grid_reads_as_one_of_fewer_rows_and_columns(
    tmp_path: Path, browser: Any, viewport: dict[str, int], settings: dict[str, Any], untick: str
) -> None:
    # A filter hid a row's pictures but not the row: its headers stayed beside an empty band (a
    # row header's label kept it as tall as a line or two), and an unticked column squeezed its
    # label to a letter a line
    make_folder(tmp_path, recipe_meta={"name": "sweep", "sheet": settings})
    write_gallery(open_output(tmp_path))
    page = _open(browser, tmp_path / "gallery.html", viewport)
    page.evaluate(MARK_GRID)
    page.get_by_label(untick, exact=True).uncheck()
    assert page.evaluate(GRID_FAULTS) == []
    if "page_by" in settings:
        assert page.locator("section h2").evaluate_all("(hs) => hs.filter((h) => h.getClientRects().length)"
                                                      ".map((h) => h.textContent)") == ["subject: tea"]
    # and "show all" gives the whole grid back
    page.locator("#reset").click()
    assert page.evaluate(GRID_FAULTS) == []
    assert page.evaluate("document.querySelectorAll('[hidden]:not(dialog *)').length") == 0
    page.close()


@pytest.mark.parametrize("viewport", [PHONE, DESKTOP], ids=["phone", "desktop"])
def test_a_filtered_wrapped_grid_closes_up(tmp_path: Path, browser: Any, viewport: dict[str, int]) -> None:
    # a wrapped cell whose pictures a filter hid kept its label, and a hole in the grid
    page = _open(browser, _single_axis(tmp_path, {}), viewport)
    places = page.evaluate(WRAPPED_PLACES)
    for colour in ("orange", "blue"):
        page.get_by_label(colour, exact=True).uncheck()
    left = [colour for colour in TWELVE_COLOURS if colour not in ("orange", "blue")]
    # the cells left, in reading order, where the first ten of an unfiltered grid are
    assert page.evaluate(WRAPPED_PLACES) == [[label, *place[1:]] for label, place in zip(left, places, strict=False)]
    page.locator("#reset").click()
    assert page.evaluate(WRAPPED_PLACES) == places
    page.close()


@pytest.mark.parametrize("viewport", [PHONE, DESKTOP], ids=["phone", "desktop"])
def test_the_viewer_opens_at_its_top_with_the_picture_in_view(
    tmp_path: Path, browser: Any, viewport: dict[str, int]
) -> None:
    # on a phone the stacked viewer is taller than the screen: showModal focused its first
    # button, at the bottom, and scrolled the picture out of view
    make_folder(tmp_path, states={})
    write_gallery(open_output(tmp_path))
    page = _open(browser, tmp_path / "gallery.html", viewport)
    for _ in range(2):  # opened, and opened again after a step
        page.locator("figure.job").first.click()
        page.wait_for_function("document.getElementById('viewer-image').naturalWidth > 0")
        top = page.evaluate(
            "() => document.getElementById('viewer-picture').getBoundingClientRect().top"
            " - document.getElementById('viewer').getBoundingClientRect().top"
        )
        assert top == 0
        page.keyboard.press("ArrowRight")
        page.keyboard.press("Escape")
    page.close()


def test_closing_the_viewer_leaves_the_grid_at_the_cell_last_shown(tmp_path: Path, browser: Any) -> None:
    # the browser gave focus back to the cell the viewer was opened from: after ←/→ through
    # the grid the page sat at the first picture, and Tab went on from there
    sweep = _sweep(tmp_path, {"fox": "a fox", "owl": "an owl"}, {c: c for c in TEN_COLOURS})
    page = _open(browser, sweep, DESKTOP)
    for close in ("Escape", "#viewer-close"):
        page.locator("figure.job").first.click()
        for _ in range(13):
            page.keyboard.press("ArrowRight")
        assert page.locator("#viewer-title").text_content() == "#14 · owl · green · 1K"
        page.keyboard.press("Escape") if close == "Escape" else page.locator(close).click()
        # (focus moves when the dialog's close event comes, a task after)
        page.wait_for_function(
            """() => {
                 const f = document.activeElement, r = f.getBoundingClientRect();
                 return f.getAttribute("data-job") === "j014" && r.left >= 0 && r.top >= 0
                   && r.right <= innerWidth && r.bottom <= innerHeight;
               }""",
            timeout=2000,
        )
    page.close()


def test_without_javascript_the_grid_is_shown_without_controls_that_do_nothing(
    hostile: Path, browser: Any
) -> None:
    # a browser or previewer that blocks scripts showed the filters, which did nothing when
    # ticked, and "click an image to enlarge it", which did nothing either
    layout = "rows: subject › style · columns: resolution"
    for scripts in (False, True):
        context = browser.new_context(java_script_enabled=scripts)
        page = context.new_page()
        page.goto(hostile.as_uri())
        page.wait_for_load_state("load")
        assert page.locator("#filters").is_visible() is scripts
        hint = " · click an image to enlarge it" if scripts else ""
        assert page.locator("p.layout").inner_text() == layout + hint
        assert page.locator("figure.job img").count() == 5
        assert all(page.locator("figure.job img").nth(i).is_visible() for i in range(5))
        context.close()


@pytest.mark.parametrize("viewport", [PHONE, DESKTOP], ids=["phone", "desktop"])
def test_a_cell_tab_reaches_is_not_behind_the_filter_bar(
    tmp_path: Path, browser: Any, viewport: dict[str, int]
) -> None:
    # Shift+Tab up the grid scrolled each cell to the window's top edge, behind the bar that
    # stays there on a wide window: most of the focused cell (all of it, under a tall bar) hidden
    subjects = {f"subject {n}": f"a subject {n}" for n in range(8)}
    page = _open(browser, _sweep(tmp_path, subjects, {"red": "red", "blue": "blue"}), viewport)
    page.locator("figure.job").last.focus()
    start = page.evaluate("scrollY")
    for _ in range(12):
        page.keyboard.press("Shift+Tab")
        top, bar = page.evaluate(
            """() => [document.activeElement.getBoundingClientRect().top,
                      document.getElementById("filters").getBoundingClientRect().bottom]"""
        )
        assert top >= (bar if viewport is DESKTOP else 0) - 1
    assert page.evaluate("scrollY") < start  # it did scroll up the grid
    page.close()
