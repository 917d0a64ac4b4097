"""The book's build time per notebook, as recorded by the last `aaclip book` (`make book`) run.

    python -m benchmarks.book_build --json benchmarks/results/book_build.json

`aaclip_book.build.build_book` writes `book/_build/timings.json` (profile, papermill parameters,
seconds per executed notebook, total seconds including the HTML build) after a successful
build. This script only reads it: building the book inside `make bench` would take longer
than the whole benchmark budget. No file (or a build that rendered pre-executed notebooks,
which records no times) is reported as "not built".
"""

from __future__ import annotations

import datetime
import json
import time
from pathlib import Path

from benchmarks import harness

TIMINGS = harness.ROOT / "book" / "_build" / "timings.json"


def main(argv=None) -> dict:
    p = harness.parser(__doc__)
    p.add_argument("--timings", type=Path, default=TIMINGS, help=f"the build's timings file (default {TIMINGS.relative_to(harness.ROOT)})")
    args = p.parse_args(argv)
    started = time.perf_counter()
    device = harness.setup_device(args, uses_torch=False)
    info = harness.machine(device)
    return harness.write_results(args.json, "book_build", info, started, argv, results=read_timings(args.timings), targets=[])


def read_timings(path: Path) -> dict:
    shown = _shown(path)
    if not path.is_file():
        return {"built": False, "why": f"no {shown}: run `make book` first", "timings_file": shown}
    try:
        record = json.loads(path.read_text())
        notebooks = {str(k): float(v) for k, v in record["notebooks"].items()}
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        from aaclip.errors import AAClipError

        raise AAClipError(f"{shown}: not a timings file written by aaclip book ({err})") from err
    if not notebooks:
        return {"built": False, "why": f"{shown}: the last build rendered pre-executed notebooks (no times)", "timings_file": shown}
    modified = datetime.datetime.fromtimestamp(path.stat().st_mtime, datetime.timezone.utc)
    return {
        "built": True,
        "timings_file": shown,
        "built_at": modified.strftime("%Y-%m-%d %H:%M UTC"),
        "profile": record.get("profile"),
        "parameters": record.get("parameters", {}),
        "notebooks": notebooks,
        "notebooks_total_s": sum(notebooks.values()),
        "total_s": record.get("total_seconds"),
    }


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(harness.ROOT))
    except ValueError:
        return str(path)


if __name__ == "__main__":
    harness.main_guard(main)
