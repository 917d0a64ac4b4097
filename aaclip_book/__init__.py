"""The research book's code: the notebooks' runtime, one module per chapter's question, and the build."""
