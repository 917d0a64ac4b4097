"""The `aaclip` command. Each package adds its own subcommands, so the CLI holds no logic.

A package contributes commands through the `aaclip.commands` entry-point group (pyproject.toml):
each entry names a module with `add_parsers(subparsers)`, which imports heavy libraries (torch,
open_clip) inside its command functions so that `aaclip --help` is instant. This module does not
know the packages that use it.
"""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import entry_points

from aaclip import __version__
from aaclip.errors import AAClipError

COMMAND_GROUP = "aaclip.commands"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aaclip", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"aaclip {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for entry in sorted(entry_points(group=COMMAND_GROUP), key=lambda e: e.name):
        entry.load().add_parsers(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt as err:  # training says where it stands and how to resume
        print(f"aaclip {args.command}: {err or 'interrupted'}", file=sys.stderr)
        return 130
    except AAClipError as err:  # expected, explained failures: no traceback
        print(f"aaclip {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
