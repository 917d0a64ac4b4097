"""The research book's code: the notebooks' runtime, one module per chapter's question, and the build.

    from aaclip_book import setup
    book = setup(profile, parameters, seeds)   # every chapter's set-up cell
"""

from aaclip_book.runtime import setup

__all__ = ["setup"]
