"""Placeholder until its issue lands."""


def add_parsers(subparsers):
    pass
