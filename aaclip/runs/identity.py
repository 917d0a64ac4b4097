"""The run identity: what makes two training runs the same experiment.

    identity = run_identity(cfg)     # a dict: stored in every checkpoint, compared on resume
    digest = identity_digest(identity)

It is the config's training groups (`aaclip.config.IDENTITY_GROUPS`: model, train, stage1,
stage2) with the backbone's location replaced by its content, plus the content of the training
data: the metadata file and every image and mask it names. So moving the data or the weights
keeps the identity, while redrawing an image under the same path, rebuilding the backbone or
changing any training setting makes another run. Evaluation and runtime settings never enter it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from aaclip.errors import AAClipError
from aaclip.io import sha256_file


def run_identity(cfg) -> dict:
    """The identity of the run `cfg` trains (see the module docstring)."""
    from aaclip.backbone import resolve_weights

    identity = cfg.identity_part()
    weights = resolve_weights(cfg.model.backbone, cfg.model.pretrained, cfg.runtime.data_root)
    identity["model"]["pretrained"] = {"kind": weights.kind, "sha256": weights.sha256 or weights.location}
    identity["train_data"] = data_digest(cfg.runtime.data_root, cfg.train.dataset, cfg.train.shot)
    return identity


def data_digest(data_root, dataset: str, shot: int = -1) -> dict:
    """The metadata file's name and one sha256 over its bytes and every image and mask it names."""
    from aaclip.data.metadata import read_metadata
    from aaclip.data.registry import metadata_path

    meta_file = Path(metadata_path(data_root, dataset, shot))
    if not meta_file.is_file():
        raise AAClipError(
            f"no metadata {meta_file} for dataset {dataset!r} shot {shot}; prepare the dataset "
            f"(aaclip prepare, aaclip shots, or the generator that made it) or fix the data root"
        )
    digest = hashlib.sha256(meta_file.read_bytes())
    root = meta_file.parent
    for record in read_metadata(meta_file):
        for key in ("image_path", "mask_path"):
            if record.get(key):
                path = root / record[key]
                digest.update(sha256_file(path).encode() if path.is_file() else b"<missing>")
    return {"dataset": dataset, "metadata": meta_file.name, "sha256": digest.hexdigest()}


def identity_digest(identity: dict, length: int = 10) -> str:
    """A short name for an identity (the book's run folders)."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:length]


def differences(stored: dict, current: dict, depth: int = 2, prefix: str = "") -> list[str]:
    """'key: stored there, current now' for every leaf that differs (down to `depth` levels)."""
    lines = []
    for key in sorted(set(stored) | set(current)):
        a, b = stored.get(key), current.get(key)
        if a == b:
            continue
        if depth > 1 and isinstance(a, dict) and isinstance(b, dict):
            lines += differences(a, b, depth - 1, f"{prefix}{key}.")
        else:
            lines.append(f"{prefix}{key}: {a!r} there, {b!r} now")
    return lines
