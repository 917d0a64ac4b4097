"""The `aaclip` command. Each concept module adds its own subcommands, so the CLI holds no logic."""

from __future__ import annotations

import argparse
import importlib
import sys

from aaclip import __version__
from aaclip.errors import AAClipError

# Modules that contribute subcommands, each with `add_parsers(subparsers)`; they import heavy
# libraries (torch, open_clip) inside their command functions so that `aaclip --help` is instant.
COMMAND_MODULES = (
    "aaclip.data.cli",  # prepare, shots
    "aaclip.miniature.cli",  # miniature
    "aaclip.commands",  # train, test, predict, describe
    "aaclip.book",  # book
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aaclip", description=__doc__)
    parser.add_argument("--version", action="version", version=f"aaclip {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        importlib.import_module(module).add_parsers(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except AAClipError as err:  # expected, explained failures: no traceback
        print(f"aaclip {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
