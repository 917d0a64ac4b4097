"""The research book's build: run the notebooks with papermill, then render them with Jupyter Book.

`aaclip book --profile miniature` (what `make book` runs) does, in order:

1. resolves the parameters with `Config.load(profile, params)`, so that an unknown name or a
   wrong type fails before anything runs;
2. copies the book sources (`_config.yml`, `_toc.yml`, `book/`, `notebooks/`) into a staging
   folder beside the output and executes the notebooks there with papermill, in dependency order
   (00 -> 06): the committed notebooks never receive outputs;
3. stops at the first failing cell, naming the notebook and the cell;
4. hides the parameter cells (ours and papermill's injected one: the build record lists the
   parameters), fetches the pinned widget and MathJax JavaScript (package-lock.json) so that the
   book renders offline, runs `jupyter-book build -W` (warnings are errors) on the staging copy,
   and only then swaps the new HTML in for the old: a failed run leaves the previous complete book
   in place.

Every notebook's `parameters` cell holds `profile`, `parameters` (Config fields as
{"group.field": value}) and `seeds`, and its set-up cell passes them to `aaclip_book.runtime`, so
the `-p` flags here, papermill's and the CLI's flags all mean the same `Config` fields.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from aaclip_book.runtime import DEFAULT_SEEDS, BookError

ROOT = Path(__file__).resolve().parent.parent  # the source checkout holding the book

# Dependency order: 00 builds the world; 02/03 share one training run; 06 explores saved predictions.
NOTEBOOKS = (
    "00_miniature",
    "01_anomaly_unawareness",
    "02_stage1_text_anchors",
    "03_stage2_patch_alignment",
    "04_results",
    "05_ablations",
    "06_heatmap_explorer",
)
# Names every notebook's `parameters` cell defines (None = the profile's value); any other Config
# field travels in the `overrides` dict, so `-p stage2_epochs 3` reaches every chapter as well.
NOTEBOOK_PARAMETERS = ("device", "data_root", "train_dataset", "test_datasets", "shot", "seed", "save_path")
BOOK_SOURCES = ("_config.yml", "_toc.yml", "book")
BENCHMARK_TABLE = Path("benchmarks/results/table.md")
ASSET_DIR = "_assets"  # staging folder listed in _config.yml's html_static_path
EXTRA_DIR = "_extra"  # staging folder listed in _config.yml's html_extra_path (copied as is to the HTML root)
# The widget bundle's stylesheet asks for its icon fonts at these paths relative to the page (its
# webpack public path); the chapters all live in notebooks/, so the fonts are served there too.
WIDGET_FONT_DIRS = ("notebooks/@jupyter-widgets/html-manager/dist", "notebooks/@jupyter-widgets")
FONT_SUFFIXES = (".woff2", ".woff", ".ttf", ".eot", ".svg")
# npm package -> (files inside the package tarball, folder under _static); versions come from package-lock.json.
STATIC_ASSETS = {
    "requirejs": (("require.js",), "widgets"),
    "@jupyter-widgets/html-manager": (
        ("dist/embed-amd.js", "dist/*.woff2", "dist/*.woff", "dist/*.ttf", "dist/*.eot", "dist/*.svg"),
        "widgets",
    ),
    "mathjax": (("es5/tex-mml-chtml.js", "es5/output/chtml/fonts/woff-v2/*", "es5/a11y/*", "es5/ui/*", "es5/input/tex/extensions/*"), "mathjax"),
}
KERNEL = "python3"


# The names every notebook's parameters cell defines; `-p KEY VALUE` with any other KEY is a Config field.
NOTEBOOK_PARAMETERS = {"profile": "miniature", "parameters": {}, "seeds": list(DEFAULT_SEEDS)}
HIDDEN_TAGS = ("parameters", "injected-parameters")  # cells the rendered pages leave out


# --------------------------------------------------------------------------- parameters
def resolve_parameters(profile: str, params: dict) -> tuple[object, dict]:
    """Check -p values against Config (names and types) and put them as the notebooks take them.

    `params` maps "group.field" (or "seeds") to a value; returns (cfg, papermill parameters).
    Raises ConfigError naming the bad key before anything runs.
    """
    from aaclip.config import Config, coerce

    params = dict(params)
    if "profile" in params or "parameters" in params:
        raise BookError("choose the profile with --profile, and give Config fields one by one: -p group.field VALUE")
    seeds = coerce("seeds", params.pop("seeds"), list[int]) if "seeds" in params else list(DEFAULT_SEEDS)
    if not seeds:
        raise BookError("seeds: give at least one training seed")
    cfg = Config.load(profile, params)  # every key and type checked
    cfg.check_training()  # the chapters train: a config that trains nothing fails here, before any chapter
    flat = cfg.flat()
    return cfg, {"profile": profile, "parameters": {key: flat[key] for key in params}, "seeds": seeds}


def select_notebooks(names=None) -> list[str]:
    """Accept '03', '03_stage2_patch_alignment' or a file name; keep the dependency order."""
    if not names:
        return list(NOTEBOOKS)
    chosen = set()
    for name in names:
        stem = Path(name).stem
        matches = [nb for nb in NOTEBOOKS if nb == stem or nb.split("_", 1)[0] == stem]
        if not matches:
            raise BookError(f"unknown notebook {name!r}; choose from {', '.join(NOTEBOOKS)}")
        chosen.update(matches)
    return [nb for nb in NOTEBOOKS if nb in chosen]


# --------------------------------------------------------------------------- execution
def execute_notebooks(names, source_dir, dest_dir, parameters, cwd=ROOT, progress=True) -> dict[str, float]:
    """Run each notebook with papermill into dest_dir; return seconds per notebook.

    Stops at the first error with BookError naming the notebook, the cell and the exception.
    """
    import papermill
    from papermill.exceptions import PapermillExecutionError

    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    timings = {}
    for i, name in enumerate(names, 1):
        source, target = Path(source_dir) / f"{name}.ipynb", dest_dir / f"{name}.ipynb"
        if not source.is_file():
            raise BookError(f"{source}: notebook not found")
        print(f"[{i}/{len(names)}] {name}.ipynb", flush=True)
        start = time.perf_counter()
        try:
            papermill.execute_notebook(
                str(source), str(target), parameters=parameters, kernel_name=KERNEL,
                cwd=str(cwd), progress_bar=progress, request_save_on_cell_execute=True,
            )
        except PapermillExecutionError as err:
            raise BookError(describe_failure(source, target, err)) from None
        timings[name] = round(time.perf_counter() - start, 1)
        print(f"    {name}.ipynb: {timings[name]:.1f} s", flush=True)
    return timings


def describe_failure(source: Path, executed: Path, err) -> str:
    """'notebooks/03_x.ipynb, cell 7 (In [5]): ValueError: ...' with the cell's first line.

    The cell number counts the source notebook's cells from 1 (markdown included), so papermill's
    injected parameters cell is not counted.
    """
    import nbformat

    cells = nbformat.read(str(executed), as_version=4).cells if executed.exists() else []
    injected_before = sum(
        1 for cell in cells[: err.cell_index] if "injected-parameters" in cell.get("metadata", {}).get("tags", [])
    )
    number = err.cell_index - injected_before + 1
    first_line = next((line for line in err.source.splitlines() if line.strip()), "")
    shown = Path("notebooks") / source.name if source.parent.name == "notebooks" else source
    return (
        f"{shown}, cell {number} (In [{err.exec_count}]) `{first_line.strip()}`: {err.ename}: {err.evalue}\n"
        f"    the executed copy with the full traceback: {executed}"
    )


# --------------------------------------------------------------------------- offline JavaScript
def lockfile_versions(lockfile: Path = ROOT / "package-lock.json") -> dict[str, dict]:
    """{package: {"version", "integrity"}} for the packages the book serves, from package-lock.json."""
    try:
        packages = json.loads(lockfile.read_text())["packages"]
    except (OSError, ValueError, KeyError) as err:
        raise BookError(f"{lockfile}: cannot read the pinned JavaScript versions ({err})") from None
    pins = {}
    for name in STATIC_ASSETS:
        entry = packages.get(f"node_modules/{name}")
        if not entry or "integrity" not in entry:
            raise BookError(f"{lockfile}: no pinned version of {name}; run `npm install --package-lock-only`")
        pins[name] = {"version": entry["version"], "integrity": entry["integrity"]}
    return pins


def cache_dir() -> Path:
    """Where npm tarballs are kept between builds: $AACLIP_CACHE, else ~/.cache/aaclip (outside git)."""
    default = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "aaclip"
    return Path(os.environ.get("AACLIP_CACHE") or default) / "npm"


def fetch_package(name: str, version: str, integrity: str, cache: Path | None = None) -> Path:
    """The package tarball from the cache, else `npm pack` from the registry; checked against the lock."""
    cache = Path(cache or cache_dir())
    tarball = cache / f"{name.replace('@', '').replace('/', '-')}-{version}.tgz"
    if not (tarball.is_file() and integrity_of(tarball) == integrity):
        npm = shutil.which("npm")
        if npm is None:
            raise BookError(
                f"npm is needed once to fetch {name}@{version} (the widget/MathJax JavaScript the book serves "
                f"offline): install Node.js (Debian: apt-get install npm) or put the tarball in {cache}"
            )
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            run = subprocess.run(
                [npm, "pack", f"{name}@{version}", "--pack-destination", tmp, "--silent"],
                capture_output=True, text=True,
            )
            packed = list(Path(tmp).glob("*.tgz"))
            if run.returncode != 0 or len(packed) != 1:
                raise BookError(f"npm pack {name}@{version} failed: {run.stderr.strip() or run.stdout.strip()}")
            if integrity_of(packed[0]) != integrity:
                raise BookError(f"{name}@{version}: the downloaded tarball does not match package-lock.json's integrity")
            os.replace(packed[0], tarball)
    return tarball


def integrity_of(path: Path) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(path.read_bytes()).digest()).decode()


def install_static_assets(dest: Path, cache: Path | None = None, lockfile: Path = ROOT / "package-lock.json") -> list[Path]:
    """Unpack the pinned JavaScript into dest/<widgets|mathjax>/; returns the files written."""
    import fnmatch

    written = []
    for name, pin in lockfile_versions(lockfile).items():
        patterns, folder = STATIC_ASSETS[name]
        with tarfile.open(fetch_package(name, pin["version"], pin["integrity"], cache)) as tar:
            for member in tar.getmembers():
                inner = member.name.split("/", 1)[1] if "/" in member.name else member.name  # drop "package/"
                if not member.isfile() or not any(fnmatch.fnmatch(inner, p) for p in patterns):
                    continue
                keep = inner.split("/", 1)[1] if inner.startswith(("dist/", "es5/")) else inner
                target = dest / folder / keep
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(tar.extractfile(member).read())
                written.append(target)
    return written


# --------------------------------------------------------------------------- the build
@dataclass
class BuildResult:
    html: Path
    timings: dict[str, float]
    seconds: float


def build_book(
    profile: str = "miniature",
    parameters: dict | None = None,
    out: str | Path | None = None,
    notebooks=None,
    executed: str | Path | None = None,
    progress: bool = True,
    root: str | Path = ROOT,
) -> BuildResult:
    """Execute the notebooks and build the HTML book into `out/html` (default book/_build/html).

    `executed`: a folder of already executed notebooks (e.g. nbmake's `--overwrite` copies, or the
    `out/executed` a previous build keeps) to render instead of running papermill. The previous `out/html` is replaced only when everything succeeded.
    `root`: the checkout holding the book sources (notebooks run with it as working directory).
    """
    started = time.perf_counter()
    parameters = dict(parameters or {})
    cfg, injected = resolve_parameters(profile, parameters)  # fails before anything runs
    names = select_notebooks(notebooks)
    root = Path(root).resolve()
    out = Path(out) if out is not None else root / "book" / "_build"
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=out))
    try:
        stage_sources(root, staging, names)
        if executed is None:
            timings = execute_notebooks(names, root / "notebooks", staging / "notebooks", injected, root, progress)
        else:
            timings = copy_executed(names, Path(executed), staging / "notebooks")
        for name in names:
            hide_parameter_cells(staging / "notebooks" / f"{name}.ipynb")
        write_build_record(staging / "book" / "build_record.md", cfg, injected, timings)
        fonts = [p for p in install_static_assets(staging / ASSET_DIR, lockfile=root / "package-lock.json")
                 if p.parent.name == "widgets" and p.suffix in FONT_SUFFIXES]
        for folder in WIDGET_FONT_DIRS:
            (staging / EXTRA_DIR / folder).mkdir(parents=True, exist_ok=True)
            for font in fonts:
                shutil.copy2(font, staging / EXTRA_DIR / folder / font.name)
        run_jupyter_book(staging)
        html = swap_in(staging / "_build" / "html", out / "html")
        swap_in(staging / "notebooks", out / "executed")  # the executed notebooks, for `--executed` and inspection
    except BaseException as err:
        failed = out / "last-failed"
        shutil.rmtree(failed, ignore_errors=True)
        os.replace(staging, failed)  # kept for inspection: executed notebooks and the sphinx log
        print(f"the previous book is unchanged; the failed build is kept in {failed}", file=sys.stderr)
        if isinstance(err, BookError):  # point at the kept copy, not the staging folder that no longer exists
            raise BookError(str(err).replace(str(staging), str(failed))) from None
        raise
    shutil.rmtree(staging, ignore_errors=True)
    from aaclip.io import write_json

    seconds = round(time.perf_counter() - started, 1)
    write_json(out / "timings.json", {"profile": profile, "parameters": injected, "notebooks": timings, "total_seconds": seconds})
    return BuildResult(html=html, timings=timings, seconds=seconds)


def stage_sources(root: Path, staging: Path, names: list[str]) -> None:
    """Copy the book's pages and config; trim the toc to the chosen notebooks; add the benchmark table."""
    import yaml

    for item in BOOK_SOURCES:
        source = root / item
        if source.is_dir():
            shutil.copytree(source, staging / item, ignore=shutil.ignore_patterns("_build", ".ipynb_checkpoints"))
        else:
            shutil.copy2(source, staging / item)
    toc = yaml.safe_load((staging / "_toc.yml").read_text())
    skipped = {f"notebooks/{nb}" for nb in NOTEBOOKS if nb not in names}
    for part in toc.get("parts", []):
        part["chapters"] = [ch for ch in part["chapters"] if ch["file"] not in skipped]
    toc["parts"] = [part for part in toc.get("parts", []) if part["chapters"]]
    (staging / "_toc.yml").write_text(yaml.safe_dump(toc, sort_keys=False))
    table = root / BENCHMARK_TABLE
    page = staging / "book" / "benchmarks.md"
    if table.is_file():
        shutil.copytree(table.parent, staging / BENCHMARK_TABLE.parent, dirs_exist_ok=True)
        page.write_text(page.read_text() + f"\n```{{include}} ../{BENCHMARK_TABLE.as_posix()}\n```\n")
    else:
        page.write_text(page.read_text() + "\n*No benchmark table yet: `make bench` writes "
                        f"`{BENCHMARK_TABLE.as_posix()}`, and the next book build includes it here.*\n")


def hide_parameter_cells(path: Path) -> None:
    """Tag the parameter cells `remove-cell`, so each page shows its set-up once, not the parameters twice."""
    import nbformat

    notebook = nbformat.read(str(path), as_version=4)
    for cell in notebook.cells:
        tags = cell.get("metadata", {}).get("tags", [])
        if any(tag in tags for tag in HIDDEN_TAGS) and "remove-cell" not in tags:
            cell.setdefault("metadata", {})["tags"] = [*tags, "remove-cell"]
    nbformat.write(notebook, str(path))


def copy_executed(names, executed: Path, dest: Path) -> dict[str, float]:
    dest.mkdir(parents=True, exist_ok=True)
    for name in names:
        source = executed / f"{name}.ipynb"
        if not source.is_file():
            raise BookError(f"{source}: no executed copy of {name}.ipynb")
        shutil.copy2(source, dest / source.name)
    return {}


def write_build_record(path: Path, cfg, injected: dict, timings: dict[str, float]) -> None:
    """The appendix page that says how this copy of the book was made (profile, parameters, time)."""
    import yaml

    import aaclip

    lines = [
        "# Build record\n",
        "This copy of the book was built by `aaclip book` on "
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC with aaclip {aaclip.__version__}, "
        f"Python {platform.python_version()} on {platform.machine()} ({os.cpu_count()} CPU cores).\n",
        f"Papermill parameters: `{json.dumps(injected)}`.\n",
    ]
    if timings:
        lines += ["| notebook | execution time (s) |", "| --- | ---: |"]
        lines += [f"| {name} | {seconds:.1f} |" for name, seconds in timings.items()]
        lines.append(f"| **total** | **{sum(timings.values()):.1f}** |\n")
    else:
        lines.append("The notebooks were executed beforehand (e.g. by `pytest --nbmake`), so no times were recorded.\n")
    lines += ["The resolved configuration every chapter started from:\n", "```yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False).strip(), "```\n"]
    path.write_text("\n".join(lines))


def run_jupyter_book(source: Path) -> None:
    """`jupyter-book build -W`; on failure raise BookError with the warnings and the log's tail."""
    command = [sys.executable, "-c", "from jupyter_book.cli.main import main; main()", "build", str(source), "-W", "--keep-going", "--builder", "html"]
    print("jupyter-book build -W ...", flush=True)
    run = subprocess.run(command, capture_output=True, text=True, cwd=source)
    log = re.sub(r"\x1b\[[0-9;]*m", "", run.stdout + run.stderr)  # no terminal colours in messages
    (source / "jupyter-book.log").write_text(log)
    if run.returncode != 0 or not (source / "_build" / "html" / "index.html").is_file():
        problems = [line for line in log.splitlines() if "WARNING" in line or "ERROR" in line]
        shown = "\n".join(problems[:20]) or "\n".join(log.splitlines()[-20:])
        raise BookError(f"jupyter-book build -W failed:\n{shown}")


def swap_in(new: Path, target: Path) -> Path:
    """Replace the folder `target` with `new` by two renames; the old tree is deleted only after the swap."""
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)
    return target


def format_timings(timings: dict[str, float]) -> str:
    width = max((len(name) for name in timings), default=8)
    rows = [f"  {name:<{width}}  {seconds:7.1f} s" for name, seconds in timings.items()]
    rows.append(f"  {'total':<{width}}  {sum(timings.values()):7.1f} s")
    return "\n".join(rows)
