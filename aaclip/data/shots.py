"""Few-shot subsets (book:protocol-datasets): k images per class, k/2 normal and k/2 anomalous, drawn with a seed.

Sampling: classes sorted by name, each class's images sorted by path, then per class and label
`numpy.random.default_rng(seed).permutation` keeps its first k/2. The draw therefore depends
only on the seed and the file's content (not its line order), and for one seed the sets are
nested: the 2-shot images are among the 16-shot ones, which are among the 64-shot ones.
A class with fewer than k/2 images of a label is an error (no sampling with replacement):
every such class is named, and nothing is written.

Each `<k>-shot.jsonl` gets a sidecar `<k>-shot.json` with the seed, k, the SHA-256 of the
source file and the per-class counts.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from aaclip.data.metadata import count_labels, validate_metadata, write_metadata
from aaclip.data.registry import get_dataset, metadata_filename, metadata_path
from aaclip.errors import AAClipError
from aaclip.io import sha256_file, write_json

SAMPLER = "numpy default_rng(seed); sorted classes, label 0 then 1: permutation of path-sorted images, first k/2"


def sample_shots(records: list[dict], k: int, seed: int) -> list[dict]:
    """k records per class, half of each label; raises naming every class that has too few."""
    metadata_filename(k)  # validates k: an even number >= 2
    by_class = _group(records)
    short = [
        f"class {name!r} has {len(images)} {kind} image(s), {k}-shot needs {k // 2}"
        for name, labels in by_class.items()
        for kind, images in zip(("normal", "anomalous"), labels)
        if len(images) < k // 2
    ]
    if short:
        raise AAClipError(f"cannot draw {k}-shot (half normal, half anomalous):\n  " + "\n  ".join(short))
    rng = np.random.default_rng(seed)
    chosen = []
    for labels in by_class.values():
        for images in labels:
            order = rng.permutation(len(images))
            chosen += [images[i] for i in sorted(order[: k // 2])]
    return chosen


def write_shots(
    source: str | os.PathLike, ks: list[int], seed: int, masks_required: bool = True, progress: bool = False
) -> dict[int, Path]:
    """Validate `source` (a full-shot.jsonl), then write `<k>-shot.jsonl` + `.json` beside it for each k."""
    source = Path(source)
    records = validate_metadata(source, source.parent, masks_required=masks_required, progress=progress)
    digest = sha256_file(source)
    subsets = {k: sample_shots(records, k, seed) for k in ks}  # all drawn before anything is written
    paths = {}
    for k, subset in subsets.items():
        paths[k] = write_metadata(source.parent / metadata_filename(k), subset)
        write_json(paths[k].with_suffix(".json"), _sidecar(source, digest, k, seed, subset))
    return paths


def make_shots(
    data_root: str | os.PathLike, name: str, ks: list[int], seed: int, progress: bool = False
) -> dict[int, Path]:
    """`aaclip shots`: sample from `<data_root>/<folder>/full-shot.jsonl` of dataset `name`."""
    info = get_dataset(name, data_root)
    source = metadata_path(data_root, name)
    if not source.is_file():
        raise AAClipError(f"{source} not found: run 'aaclip prepare {name} --root {source.parent}' first")
    return write_shots(source, ks, seed, masks_required=info.has_masks, progress=progress)


def stale_shots(data_root: str | os.PathLike, name: str, ks: list[int], seed: int) -> list[int]:
    """The ks (full shot, -1, excluded) whose k-shot file is missing, or was drawn with another seed or
    from another `full-shot.jsonl` (the dataset was rebuilt since: the subset may name images that
    no longer exist); `make_shots` redraws them."""
    digest = sha256_file(metadata_path(data_root, name))

    def current(k: int) -> bool:
        sidecar = metadata_path(data_root, name, k).with_suffix(".json")
        info = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
        return info.get("source_sha256") == digest and info.get("seed") == seed

    return [k for k in ks if k != -1 and not current(k)]


def _group(records: list[dict]) -> dict[str, tuple[list[dict], list[dict]]]:
    """class -> (normal records, anomalous records), classes and images sorted for a stable draw."""
    by_class: dict[str, tuple[list[dict], list[dict]]] = {}
    for record in sorted(records, key=lambda r: (r["class_name"], r["image_path"])):
        by_class.setdefault(record["class_name"], ([], []))[int(record["label"])].append(record)
    return by_class


def _sidecar(source: Path, digest: str, k: int, seed: int, subset: list[dict]) -> dict:
    return {
        "k": k,
        "seed": seed,
        "source": source.name,
        "source_sha256": digest,
        "sampler": SAMPLER,
        "numpy": np.__version__,
        "n_images": len(subset),
        "counts": count_labels(subset),
    }
