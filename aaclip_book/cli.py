"""`aaclip book`: execute the notebooks and build the HTML book."""

from aaclip_book.build import add_parsers

__all__ = ["add_parsers"]
