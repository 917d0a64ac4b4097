"""The book runner (aaclip.book): parameters reach the notebooks, bad ones fail early, failures keep the old book."""

import ast
import json
import shutil

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from aaclip import book
from aaclip.cli import main
from aaclip.config import Config

NOTEBOOK_DIR = book.ROOT / "notebooks"


def read(name):
    return nbformat.read(str(NOTEBOOK_DIR / f"{name}.ipynb"), as_version=4)


def parameters_cell(nb):
    return next(cell for cell in nb.cells if cell.cell_type == "code")


def config_cell(nb):
    return next(cell for cell in nb.cells if cell.cell_type == "code" and "notebook_config(" in cell.source)


@pytest.mark.parametrize("name", book.NOTEBOOKS)
def test_every_notebook_is_committed_clean_with_the_shared_parameters_cell(name):
    raw = json.loads((NOTEBOOK_DIR / f"{name}.ipynb").read_text())["cells"]
    ids = [cell.get("id") for cell in raw]
    assert None not in ids and len(set(ids)) == len(ids), f"{name}: every cell needs its own id (nbformat 4.5)"
    nb = read(name)
    cells = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert all(not cell.outputs and cell.execution_count is None for cell in cells), f"{name}: commit without outputs"
    first = parameters_cell(nb)
    assert "parameters" in first.metadata.get("tags", []), f"{name}: first code cell must be tagged 'parameters'"
    assigned = {
        node.targets[0].id: ast.literal_eval(node.value)
        for node in ast.parse(first.source).body
        if isinstance(node, ast.Assign)
    }
    assert assigned == {"profile": "miniature", **{p: None for p in book.NOTEBOOK_PARAMETERS}, "overrides": {}}
    # the config comes from the library, from exactly these names
    assert all(f"{p}={p}" in config_cell(nb).source for p in [*book.NOTEBOOK_PARAMETERS, "overrides"])


def test_notebook_config_reads_none_as_the_profile_value_and_separates_runs():
    smoke = Config.load("smoke")
    cfg = book.notebook_config("smoke", seed=None, shot=None, overrides={})
    assert (cfg.seed, cfg.image_size, cfg.data_root) == (smoke.seed, smoke.image_size, smoke.data_root)
    other = book.notebook_config("smoke", seed=3)
    assert other.seed == 3 and other.save_path != cfg.save_path  # a changed setting never reuses a run
    assert book.notebook_config("smoke", overrides={"normalize": "inductive"}).save_path == cfg.save_path
    assert book.notebook_config("smoke", save_path="mine").save_path == "mine"


def tiny_book(root, cells):
    """A copy of the book's sources whose only chapter is a small 00_miniature.ipynb made of `cells`."""
    root.mkdir(parents=True)
    for item in ("_config.yml", "_toc.yml", "package-lock.json"):
        shutil.copy2(book.ROOT / item, root / item)
    shutil.copytree(book.ROOT / "book", root / "book", ignore=shutil.ignore_patterns("_build"))
    (root / "notebooks").mkdir()
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(root / "notebooks" / "00_miniature.ipynb"))
    return root


def real_head():
    """The first cells every chapter starts with: the parameters cell and the config line (not ensure_data)."""
    nb = read("00_miniature")
    setup = config_cell(nb).source
    config_only = setup[: setup.index(")", setup.index("notebook_config(")) + 1]
    return [new_markdown_cell("# A chapter"), new_code_cell(parameters_cell(nb).source, metadata={"tags": ["parameters"]}),
            new_code_cell(config_only)]


def test_papermill_parameters_reach_the_notebook_config(tmp_path):
    (tmp_path / "nb").mkdir()
    nb = new_notebook(cells=[*real_head(), new_code_cell("print('seen', cfg.profile, cfg.seed, cfg.stage2_epochs, cfg.test_datasets)")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(tmp_path / "nb" / "00_miniature.ipynb"))
    _, injected = book.resolve_parameters("smoke", {"seed": "3", "stage2_epochs": "2", "test_datasets": "mini-scan"})
    book.execute_notebooks(["00_miniature"], tmp_path / "nb", tmp_path / "out", injected, cwd=book.ROOT, progress=False)
    executed = nbformat.read(str(tmp_path / "out" / "00_miniature.ipynb"), as_version=4)
    printed = "".join(o.get("text", "") for cell in executed.cells if cell.cell_type == "code" for o in cell.outputs)
    assert "seen smoke 3 2 ['mini-scan']" in printed
    source = nbformat.read(str(tmp_path / "nb" / "00_miniature.ipynb"), as_version=4)
    assert all(not c.get("outputs") for c in source.cells), "the source notebook must stay clean"


@pytest.mark.parametrize(
    "flags, named",
    [
        (["-p", "sed", "3"], "'sed'"),  # unknown name: named, with the valid names listed
        (["-p", "seed", "three"], "'seed' expects an integer"),
        (["-p", "adapter_weight", "heavy"], "'adapter_weight' expects a number"),
        (["-p", "seed", "1", "-p", "seed", "2"], "'seed' given twice"),
        (["--profile", "nonexistent"], "unknown profile 'nonexistent'"),
        (["--notebooks", "09"], "unknown notebook '09'"),
    ],
)
def test_bad_parameters_fail_clearly_before_anything_runs(tmp_path, capsys, flags, named):
    out = tmp_path / "out"
    assert main(["book", "--profile", "smoke", *flags, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert named in err and "Traceback" not in err
    assert not out.exists(), "nothing may be created when the parameters are wrong"


def test_a_failing_cell_is_named_and_the_previous_book_stays(tmp_path):
    root = tiny_book(tmp_path / "src", [
        new_markdown_cell("# Broken"),
        new_code_cell("x = 1"),
        new_code_cell("# the failing cell\ny = x / 0"),
        new_code_cell("print('never runs')"),
    ])
    out = tmp_path / "build"
    (out / "html").mkdir(parents=True)
    (out / "html" / "index.html").write_text("previous book")
    with pytest.raises(book.BookError) as failure:
        book.build_book("smoke", out=out, notebooks=["00"], root=root, progress=False)
    message = str(failure.value)
    assert "notebooks/00_miniature.ipynb, cell 3" in message  # counted in the source notebook, from 1
    assert "# the failing cell" in message and "ZeroDivisionError" in message
    assert (out / "html" / "index.html").read_text() == "previous book"
    assert not list(out.glob(".staging-*")), "the staging copy is moved aside, not left behind"
    assert (out / "last-failed" / "notebooks" / "00_miniature.ipynb").is_file()  # kept for inspection


@pytest.mark.slow
def test_a_build_replaces_the_book_only_when_sphinx_passes_with_warnings_as_errors(tmp_path):
    cells = [new_markdown_cell("# A chapter"), new_code_cell("print(6 * 7)")]
    root = tiny_book(tmp_path / "src", cells)
    out = tmp_path / "build"
    (out / "html").mkdir(parents=True)
    (out / "html" / "index.html").write_text("previous book")

    result = book.build_book("smoke", out=out, notebooks=["00"], root=root, progress=False)
    chapter = (out / "html" / "notebooks" / "00_miniature.html").read_text()
    assert "42" in chapter and (out / "html" / "_static" / "widgets" / "embed-amd.js").is_file()
    assert set(result.timings) == {"00_miniature"}
    assert json.loads((out / "timings.json").read_text())["notebooks"]["00_miniature"] == result.timings["00_miniature"]

    # a dangling cross-reference is only a Sphinx warning, and -W makes it fatal
    (root / "book" / "intro.md").write_text((root / "book" / "intro.md").read_text() + "\nSee {doc}`no_such_page`.\n")
    with pytest.raises(book.BookError, match="no_such_page"):
        book.build_book("smoke", out=out, notebooks=["00"], root=root, progress=False)
    assert (out / "html" / "notebooks" / "00_miniature.html").read_text() == chapter  # the previous book, intact
