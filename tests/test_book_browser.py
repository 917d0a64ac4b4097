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


def test_the_explorer_widgets_and_its_static_view_render(site, tmp_path):
    html, url, _ = site
    text = dom(url + EXPLORER, tmp_path / "chromium")
    # html-manager turned the saved widget state into live controls (classes of @jupyter-widgets/controls)
    for widget_class in ("widget-dropdown", "widget-slider", "widget-image", "widget-checkbox"):
        assert widget_class in text, f"the widget view did not render ({widget_class} missing)"
    # the pre-rendered view ran its script: it drew on its canvas and wrote a caption
    explorer = re.search(r'<div class="aaclip-explorer"[^>]*>', text)
    assert explorer and 'data-rendered="true"' in explorer.group(0), "the pre-rendered explorer did not draw"
    assert re.search(r'data-role="caption"[^>]*>[^<]*image score', text)

    shot = tmp_path / "explorer.png"
    chromium(url + EXPLORER, tmp_path / "chromium-shot", f"--screenshot={shot}", "--window-size=1280,2600")
    assert shot.is_file() and shot.stat().st_size > 20_000
    saved = book.ROOT / "book" / "_build" / "explorer-screenshot.png"  # for a human look, not committed
    saved.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(shot, saved)
