"""Every chapter runs end to end at the smoke profile: `pytest --nbmake` on papermill-prepared copies.

The copies are made with `papermill --prepare-only -p profile smoke` plus an absolute data_root
(the session's smoke world from conftest.py, built once for the whole suite; nbmake runs each
notebook in its own folder) and executed once per test session with nbmake's `--overwrite`;
tests/test_book_browser.py renders those executed copies instead of running them a second time.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import pytest

from aaclip_book import build as book

TIMEOUT_S = 900  # per notebook; the whole smoke book takes a few minutes on 2 cores


@dataclass
class SmokeRun:
    folder: Path  # the executed notebooks (nbmake --overwrite wrote their outputs in place)
    outcomes: dict[str, str]  # notebook name -> "passed" or the failure text
    parameters: dict


@functools.cache
def execute_smoke_notebooks(base: Path, data_root: Path) -> SmokeRun:
    """Prepare smoke copies of every notebook in `base` and run them all with nbmake, once per session."""
    import papermill

    folder = base / "notebooks"
    folder.mkdir(parents=True, exist_ok=True)
    parameters = {"runtime.data_root": str(data_root), "seeds": "111,0"}  # two seeds: the spread code runs, at half the cost
    _, injected = book.resolve_parameters("smoke", parameters)
    for name in book.NOTEBOOKS:
        papermill.execute_notebook(
            str(book.ROOT / "notebooks" / f"{name}.ipynb"), str(folder / f"{name}.ipynb"),
            parameters=injected, prepare_only=True, kernel_name=book.KERNEL, progress_bar=False,
        )
    report = base / "nbmake.xml"
    command = [
        sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbmake", "--overwrite",
        f"--nbmake-timeout={TIMEOUT_S}", f"--junitxml={report}", *[str(folder / f"{n}.ipynb") for n in book.NOTEBOOKS],
    ]
    run = subprocess.run(command, cwd=base, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    (base / "nbmake.log").write_text(run.stdout + run.stderr)
    outcomes = {name: f"nbmake did not report it (exit {run.returncode}):\n{run.stdout[-3000:]}" for name in book.NOTEBOOKS}
    if report.is_file():
        for case in ET.parse(report).getroot().iter("testcase"):
            name = Path(case.get("file") or case.get("name")).stem
            problem = case.find("failure") if case.find("failure") is not None else case.find("error")
            outcomes[name] = "passed" if problem is None else (problem.get("message", "") + "\n" + (problem.text or ""))[-4000:]
    return SmokeRun(folder, outcomes, parameters)


@pytest.fixture(scope="session")
def smoke_notebooks(tmp_path_factory, smoke_world) -> SmokeRun:
    return execute_smoke_notebooks(tmp_path_factory.getbasetemp() / "smoke-book", smoke_world)


@pytest.mark.slow
@pytest.mark.parametrize("name", book.NOTEBOOKS)
def test_notebook_runs_at_the_smoke_profile(smoke_notebooks, name):
    assert smoke_notebooks.outcomes[name] == "passed", f"{name}.ipynb failed under nbmake:\n{smoke_notebooks.outcomes[name]}"
