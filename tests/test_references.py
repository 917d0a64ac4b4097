"""The specification lives in the book: every reference in code, tests and notebooks names one of its labels,
and no layer looks up: the method knows nothing of the miniature world or the book."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = sorted((REPO / "book").glob("*.md"))
LABEL = re.compile(r"^\((?P<label>[a-z][a-z0-9-]*)\)=\s*$", re.M)
CODE_REFERENCE = re.compile(r"\bbook:([a-z][a-z0-9-]*)")
PAGE_REFERENCE = re.compile(r"\{ref\}`([a-z][a-z0-9-]*)`")
CODE_FOLDERS = ("aaclip", "aaclip_book", "aaclip_miniature", "benchmarks", "tests", "tools")


def labels() -> set[str]:
    return {m.group("label") for page in PAGES for m in LABEL.finditer(page.read_text())}


def sources() -> dict[Path, str]:
    """Every Python file and notebook of the project, and the book's pages, as text."""
    files = [p for folder in CODE_FOLDERS for p in (REPO / folder).rglob("*.py")]
    files += sorted((REPO / "notebooks").glob("*.ipynb")) + PAGES + [REPO / "README.md"]
    texts = {}
    for path in files:
        text = path.read_text()
        if path.suffix == ".ipynb":  # the cells, not the JSON around them
            text = "\n".join("".join(cell["source"]) for cell in json.loads(text)["cells"])
        texts[path] = text
    return texts


def test_the_method_and_protocol_pages_label_their_sections():
    found = labels()
    for label in ("method-backbone", "method-adapters", "method-anchors", "method-stage1", "method-stage2",
                  "method-scoring", "method-normalisation", "protocol-datasets", "protocol-metrics",
                  "protocol-deviations"):
        assert label in found, f"book/: no section labelled ({label})="


def test_every_reference_names_a_labelled_section():
    found, dangling = labels(), []
    for path, text in sources().items():
        for pattern in (CODE_REFERENCE, PAGE_REFERENCE):
            dangling += [f"{path.relative_to(REPO)}: {m.group(0)}" for m in pattern.finditer(text) if m.group(1) not in found]
    assert not dangling, "references to sections the book does not label:\n" + "\n".join(dangling)


def test_nothing_cites_a_specification_file_a_clone_does_not_have():
    word = "SP" + "EC"  # spelled apart, so that this test does not find itself
    cited = [str(path.relative_to(REPO)) for path, text in sources().items() if re.search(rf"\b{word}\b", text)]
    assert not cited, f"these cite {word!r}, a file the repository does not hold: {cited}"


@pytest.mark.parametrize("package", ["aaclip"])
def test_the_method_does_not_import_or_name_the_world_or_the_book(package):
    """Layers look down only: aaclip (method, data, runs) never reaches up to the miniature or the book."""
    offenders = []
    for path in (REPO / package).rglob("*.py"):
        text = path.read_text()
        if re.search(r"\baaclip_(miniature|book)\b", text):
            offenders.append(str(path.relative_to(REPO)))
    assert not offenders, f"the method names a package above it: {offenders}"


def test_only_the_books_runtime_imports_the_miniature_outside_its_own_package():
    """The miniature is a package of its own; the book's set-up is the one place that builds its world."""
    importing = []
    for folder in ("aaclip", "aaclip_book", "benchmarks"):
        for path in (REPO / folder).rglob("*.py"):
            if re.search(r"^\s*(from|import)\s+aaclip_miniature\b", path.read_text(), re.M):
                importing.append(str(path.relative_to(REPO)))
    assert importing == ["aaclip_book/runtime.py"], importing
