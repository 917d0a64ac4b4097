"""Datasets (book:protocol-datasets): metadata files, the registry, converters from original layouts,
few-shot subsets and the torch Dataset. Submodules are imported where needed, so that
`aaclip --help` does not pull in torch."""
