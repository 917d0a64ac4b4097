"""`aaclip book`: execute the notebooks with papermill and build the HTML book."""

from __future__ import annotations

import argparse


def add_parsers(subparsers) -> None:
    from aaclip_book import build

    parser = subparsers.add_parser(
        "book", help="execute the notebooks (papermill) and build the HTML book (Jupyter Book)",
        description=build.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--profile", default="miniature", help="miniature (default), smoke, paper, or a YAML file")
    parser.add_argument(
        "-p", "--parameter", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
        help="a Config field for every notebook as group.field, e.g. -p train.seed 3 -p eval.datasets MVTec,BTAD, "
        "or the training seeds behind the seed-spread claims, -p seeds 111,0,1 (repeatable)",
    )
    parser.add_argument("--out", default=None, help="build folder (default book/_build; the HTML goes to OUT/html)")
    parser.add_argument("--notebooks", nargs="+", default=None, metavar="NB", help="only these chapters, e.g. 00 06")
    parser.add_argument("--executed", default=None, metavar="DIR", help="render already executed notebooks from DIR")
    parser.add_argument("--no-progress", action="store_true", help="no per-cell progress bars")
    parser.set_defaults(func=run_book)


def run_book(args) -> int:
    from aaclip_book.build import BookError, build_book, format_timings

    parameters = {}
    for key, value in args.parameter:
        if key in parameters:
            raise BookError(f"parameter {key!r} given twice")
        parameters[key] = value
    result = build_book(
        profile=args.profile, parameters=parameters, out=args.out, notebooks=args.notebooks,
        executed=args.executed, progress=not args.no_progress,
    )
    if result.timings:
        print("execution time per notebook:\n" + format_timings(result.timings))
    print(f"book built in {result.seconds:.1f} s: {result.html / 'index.html'}")
    return 0
