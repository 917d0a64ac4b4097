"""The built book in a real browser: headless Chromium opens every chapter from a local server.

The book is built once per session at the smoke profile from the notebooks that
tests/test_notebooks.py executed (nothing runs twice), served on 127.0.0.1, and each page is
loaded with JavaScript on. Checks: every chapter renders with its figures, nothing is requested
from a CDN, the heatmap explorer's widgets render (html-manager, served locally) and so does its
pre-rendered view.
"""

from __future__ import annotations

import functools
import http.server
import re
import shutil
import subprocess
import threading
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlparse

import pytest

from aaclip_book import build as book
from test_notebooks import execute_smoke_notebooks

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium (make browser)"),
]
EXPLORER = "notebooks/06_heatmap_explorer.html"


@pytest.fixture(scope="session")
def site(tmp_path_factory, smoke_world):
    """(html folder, base URL, requested paths) of the smoke book, served for the whole session."""
    base = tmp_path_factory.getbasetemp()
    run = execute_smoke_notebooks(base / "smoke-book", smoke_world)
    failed = [name for name, outcome in run.outcomes.items() if outcome != "passed"]
    if failed:
        pytest.fail(f"cannot render the book: notebooks failed under nbmake: {', '.join(failed)}")
    result = book.build_book("smoke", parameters=run.parameters, out=base / "smoke-site", executed=run.folder, progress=False)
    requested: list[tuple[str, int]] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(result.html), **kwargs)

        def log_request(self, code="-", size="-"):
            requested.append((urlparse(self.path).path, int(code) if str(code).isdigit() else 0))

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield result.html, f"http://127.0.0.1:{server.server_address[1]}/", requested
    server.shutdown()


def chromium(url: str, profile: Path, *extra: str) -> str:
    command = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={profile}", "--virtual-time-budget=15000", *extra, url,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120).stdout


@functools.cache
def dom(url: str, profile: Path) -> str:
    return chromium(url, profile, "--dump-dom")


class Tags(HTMLParser):
    """Every tag with its attributes, in document order."""

    def __init__(self, text: str):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def chapters(html: Path) -> list[str]:
    pages = ["book/intro.html", "book/method.html", "book/protocol.html", "book/reproduce.html",
             "book/references.html", "book/benchmarks.html", "book/build_record.html"]
    return pages + [f"notebooks/{name}.html" for name in book.NOTEBOOKS]


def test_every_chapter_renders_with_its_figures(site, tmp_path):
    html, url, requested = site
    for page in chapters(html):
        text = dom(url + page, tmp_path / "chromium")
        assert "<article" in text and "bd-article" in text, f"{page}: no rendered article"
        assert "Traceback" not in text, f"{page}: shows a Python traceback"
        images = [attrs for tag, attrs in Tags(text).tags if tag == "img" and "logo" not in attrs.get("class", "")]
        for attrs in images:
            src = attrs.get("src", "")
            # data: URIs are embedded figures; blob: URLs are images a widget view drew in the browser
            embedded = src.startswith(("data:image/", "blob:"))
            assert embedded or (html / Path(page).parent / src).resolve().is_file(), f"{page}: missing {src}"
        if page.startswith("notebooks/") or page == "book/method.html":
            figures = [a for a in images if "_images/" in a.get("src", "") or a.get("src", "").startswith(("data:", "blob:"))]
            assert figures, f"{page}: no figure rendered"
    missing = sorted({path for path, code in requested if code >= 400 and not path.endswith("favicon.ico")})
    assert not missing, f"the browser asked for files the book does not have: {missing}"


def test_no_page_loads_anything_from_another_host(site):
    html, _, _ = site
    for page in html.rglob("*.html"):
        for tag, attrs in Tags(page.read_text(errors="replace")).tags:
            source = attrs.get("src") if tag in ("script", "img", "iframe") else attrs.get("href") if tag == "link" else None
            if source and re.match(r"(https?:)?//", source):
                host = urlparse(source if not source.startswith("//") else "http:" + source).hostname
                assert host in ("127.0.0.1", "localhost"), f"{page.relative_to(html)}: <{tag}> loads {source}"


PIXELS = """(el) => {  // a picture's pixels as a data URL: a canvas as drawn, an <img> as loaded
  if (el.tagName === "CANVAS") return el.toDataURL();
  const c = document.createElement("canvas"); c.width = el.naturalWidth; c.height = el.naturalHeight;
  c.getContext("2d").drawImage(el, 0, 0); return c.toDataURL(); }"""
VISIBLE = "(el) => el.offsetParent !== null"


@pytest.fixture(scope="module")
def explorer_page(site, tmp_path_factory):
    from cdp import Page

    html, url, _ = site
    page = Page(CHROMIUM, url + EXPLORER, tmp_path_factory.mktemp("cdp"), height=3000,
                helpers=f"window.pixels = {PIXELS}; window.visible = {VISIBLE};")
    yield page
    page.close()


def static_state(page) -> dict:
    import json

    page.wait_for("!!(document.querySelector('.aaclip-explorer') && document.querySelector('.aaclip-explorer').dataset.state)",
                  what="the static view to draw")
    return json.loads(page.evaluate("document.querySelector('.aaclip-explorer').dataset.state"))


def static_change(page, role: str, value, event: str) -> None:
    """Set a control of the static view and wait until the view has drawn again."""
    before = page.evaluate("document.querySelector('.aaclip-explorer').dataset.rendered")
    page.evaluate(f"(() => {{ const c = document.querySelector('.aaclip-explorer [data-role=\"{role}\"]'); "
                  f"c.value = {value!r}; c.dispatchEvent(new Event('{event}')); return true; }})()")
    page.wait_for(f"document.querySelector('.aaclip-explorer').dataset.rendered !== {before!r}", what=f"redraw after {role}")


def static_picture(page) -> str:
    return page.evaluate("pixels(document.querySelector('.aaclip-explorer [data-role=picture]'))")


def test_the_static_view_changes_with_class_image_and_threshold(explorer_page):
    page = explorer_page
    first = static_state(page)
    picture = static_picture(page)
    static_change(page, "class", "1", "change")
    assert static_state(page)["cls"] != first["cls"]
    assert static_picture(page) != picture, "another class shows the same picture"
    picture = static_picture(page)
    static_change(page, "image", "1", "input")
    assert static_state(page)["image"] != first["image"] or static_picture(page) != picture
    assert static_picture(page) != picture, "moving the image slider left the picture unchanged"
    picture, state = static_picture(page), static_state(page)
    lower = max(0.0, state["threshold"] - 0.3)
    static_change(page, "threshold", str(lower), "input")
    assert static_state(page)["threshold"] == pytest.approx(lower, abs=1e-3)
    assert static_picture(page) != picture, "the threshold slider did not move the predicted outline"
    assert page.evaluate("document.querySelector('.aaclip-explorer [data-role=\"colour-bar\"]').width") > 0


def test_the_static_views_pixel_scores_are_the_librarys(explorer_page, site):
    """The page's precision, recall and IoU at its threshold equal aaclip.explore's for the same image."""
    import json

    import numpy as np

    from aaclip import explore

    page = explorer_page
    static_change(page, "class", "0", "change")
    static_change(page, "image", "0", "input")
    state = static_state(page)
    data = json.loads(page.evaluate("document.querySelector('script[id$=\"-data\"]').textContent"))
    cls_data = next(c for c in data["classes"] if c["title"] == state["cls"])
    entry = next(im for im in cls_data["images"] if im["name"] == state["image"])
    cls = explore.ExploredClass(
        dataset="", class_name="", domain=cls_data["domain"], n_levels=cls_data["levels"], n_images=0,
        raw_range=cls_data["raw_range"], level_range=cls_data["level_range"], image_threshold={}, pixel_threshold={},
        images=[])  # fmt: skip
    grids = {}
    for method, q in entry["grids"].items():  # the page's own uint16 grids, decoded as explore.js does
        import base64

        raw = np.frombuffer(base64.b64decode(q["data"]), "<u2").reshape(len(q["lo"]), q["g"], q["g"]) / 65535
        grids[method] = (np.asarray(q["lo"])[:, None, None] + raw * (np.subtract(q["hi"], q["lo"]))[:, None, None]).astype(np.float32)
    from PIL import Image
    import io

    mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(entry["mask"].split(",")[1]))).convert("L")) > 127
    image = explore.ExploredImage("", entry["label"], np.zeros((*mask.shape, 3), np.uint8), mask, grids, entry["score"])
    fused, _ = explore.shown_maps(cls, image, "AA-CLIP", "scored", state["mode"])
    expected = explore.pixel_scores(fused >= state["threshold"], mask)
    for name in ("precision", "recall", "iou"):
        shown = state[name]
        assert (shown is None) == (expected[name] != expected[name]), name
        if shown is not None:
            assert shown == pytest.approx(expected[name], abs=0.02), name


def loaded_pictures(page) -> list[str]:
    """The picture and its outline, once both are loaded: a slider swaps them one after the other."""
    page.wait_for(f"{loaded_images('.aaclip-picture img')}.length === 2", what="the picture and its outline")
    return visible_pixels(page, ".aaclip-picture img")


def visible_pixels(page, selector: str) -> list[str]:
    return page.evaluate(f"{loaded_images(selector)}.map(pixels)")


def visible_elements(selector: str) -> str:
    """JavaScript: the widget view's visible elements matching `selector`."""
    return f"[...document.querySelectorAll('.aaclip-explorer-widget {selector}')].filter(visible)"


def loaded_images(selector: str) -> str:
    """JavaScript: those of them that have finished loading."""
    return f"{visible_elements(selector)}.filter((i) => i.complete && i.naturalWidth)"


def press(page, label: str, key: str = "ArrowRight") -> None:
    """A real key press on the handle of the visible widget slider labelled `label`."""
    found = page.evaluate(
        f"(() => {{ const s = {visible_elements('.widget-slider')}"
        f".find((el) => (el.querySelector('.widget-label') || {{}}).textContent === {label!r});"
        " if (!s) return false; s.querySelector('.noUi-handle').focus(); return true; })()")
    assert found, f"no visible slider labelled {label!r} in the widget view"
    code = {"ArrowRight": 39, "ArrowLeft": 37}[key]
    for kind in ("keyDown", "keyUp"):
        page.call("Input.dispatchKeyEvent", type=kind, key=key, code=key, windowsVirtualKeyCode=code)


def test_the_widget_view_changes_with_class_image_and_threshold_without_a_kernel(explorer_page):
    page = explorer_page
    page.wait_for("!!document.querySelector('.aaclip-explorer-widget .aaclip-picture img')", what="the widget view")
    page.wait_for(f"{visible_elements('.aaclip-picture img')}.every((i) => i.complete && i.naturalWidth)",
                  what="the widget pictures to load")
    pictures = visible_pixels(page, ".aaclip-picture img")
    assert len(pictures) == 2, "the picture and its outline"
    bars = visible_pixels(page, ".aaclip-colour-bar img")
    assert len(bars) == 1, "one colour bar is shown"
    page.evaluate("(() => { const s = document.querySelector('.aaclip-explorer-widget .widget-dropdown select');"
                  " s.selectedIndex = 1; s.dispatchEvent(new Event('change')); return true; })()")
    page.wait_for(f"JSON.stringify({visible_elements('.aaclip-picture img')}.map(pixels)) !== {json_string(pictures)}",
                  what="another class's pictures")
    pictures = loaded_pictures(page)
    maps = visible_pixels(page, ".aaclip-maps img")
    press(page, "image")
    page.wait_for(f"JSON.stringify({visible_elements('.aaclip-maps img')}.map(pixels)) !== {json_string(maps)}",
                  what="the next image's maps")
    picture, outline = loaded_pictures(page)
    assert picture != pictures[0], "the image slider left the picture unchanged"
    press(page, "pixel thr.", "ArrowLeft")
    page.wait_for(f"{visible_elements('.aaclip-picture img')}.map(pixels)[1] !== {json_string(outline)}",
                  what="the outline at a lower threshold")


def json_string(value) -> str:
    import json

    return json.dumps(json.dumps(value))


def test_the_explorer_page_fits_its_budget_and_both_views_are_saved_as_pictures(site, explorer_page):
    html, _, _ = site
    size = (html / EXPLORER).stat().st_size
    print(f"\nexplorer page: {size / 1e6:.2f} MB")
    assert size <= 5_000_000, f"{EXPLORER} is {size / 1e6:.2f} MB, over the 5 MB budget"
    out = book.ROOT / "book" / "_build"  # for a human look, not committed
    out.mkdir(parents=True, exist_ok=True)
    for name, selector in (("explorer-widget.png", ".aaclip-explorer-widget"), ("explorer-static.png", ".aaclip-explorer")):
        shot = explorer_page.screenshot(out / name, selector)
        assert shot.stat().st_size > 20_000
