"""Dataset metadata (book:protocol-metadata): one JSON object per line, paths relative to the dataset root.

    {"image_path": "bottle/test/broken_large/000.png", "label": 1, "class_name": "bottle",
     "mask_path": "bottle/ground_truth/broken_large/000_mask.png"}

`mask_path` is absent (or empty) for normal images. Validation collects every problem
before anything runs and raises them together, each as `origin: message`, where the origin
is `file:line` for a metadata file (or the source of a record a converter built).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from aaclip.errors import AAClipError
from aaclip.io import write_text

REQUIRED_KEYS = ("image_path", "label", "class_name")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")  # what a folder of images may hold


class MetadataError(AAClipError):
    """Metadata that cannot be used as it stands; `problems` lists each one."""

    def __init__(self, problems: list[str], what: str = "metadata"):
        self.problems = list(problems)
        count = f"{len(self.problems)} problem{'s' if len(self.problems) != 1 else ''}"
        super().__init__(f"{count} in {what}:\n" + "\n".join(f"  {p}" for p in self.problems))


def read_metadata(path: str | os.PathLike) -> list[dict]:
    """Parse a metadata file into normalised records (labels as int); no file-system checks."""
    entries, problems = _parse(Path(path))
    if problems:
        raise MetadataError(problems, str(path))
    return [record for _, record in entries]


def write_metadata(path: str | os.PathLike, records: list[dict]) -> Path:
    """Write records atomically in the book:protocol-metadata key order; `mask_path` only where there is one."""
    lines = [json.dumps(_ordered(record)) for record in records]
    return write_text(path, "".join(line + "\n" for line in lines))


def validate_metadata(
    path: str | os.PathLike,
    root: str | os.PathLike | None = None,
    masks_required: bool = True,
    progress: bool = False,
) -> list[dict]:
    """Read `path` and check it against the files under `root` (default: the file's folder).

    Checks: JSON per line, required keys, labels 0/1, an anomalous image has a mask when
    `masks_required`, every path exists and is an image, image and mask sizes agree.
    Raises one `MetadataError` listing every problem; returns the normalised records.
    """
    path = Path(path)
    root = Path(root) if root is not None else path.parent
    entries, problems = _parse(path)
    if not entries and not problems:
        problems.append(f"{path}: no records")
    problems += check_records(entries, root, masks_required, progress)
    if problems:
        raise MetadataError(problems, str(path))
    return [record for _, record in entries]


def check_records(
    entries: list[tuple[str, dict]], root: Path, masks_required: bool = True, progress: bool = False,
    decode: bool = False,
) -> list[str]:
    """Problems of (origin, record) pairs against the files under `root`; [] when all is well.

    Headers are read always; with `decode` every image and mask is decoded in full too, so that a
    truncated file is found here and not after a model has loaded (`aaclip prepare` does this once).
    """
    problems = []
    first_seen: dict[str, str] = {}
    desc = "decoding images" if decode else "checking files"
    for origin, record in tqdm(entries, desc=desc, unit="image", disable=not progress):
        image = record["image_path"]
        if image in first_seen:
            problems.append(f"{origin}: duplicate image_path {image!r} (first at {first_seen[image]})")
        first_seen.setdefault(image, origin)
        problems += [f"{origin}: {message}" for message in _file_problems(record, root, masks_required, decode)]
    return problems


def count_labels(records: list[dict]) -> dict[str, tuple[int, int]]:
    """class -> (normal, anomalous) image counts."""
    counts: dict[str, list[int]] = {}
    for record in records:
        counts.setdefault(record["class_name"], [0, 0])[int(record["label"])] += 1
    return {name: (normal, anomalous) for name, (normal, anomalous) in counts.items()}


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file header, without decoding pixels."""
    with Image.open(path) as image:
        return image.size


# ---------------------------------------------------------------------------- internals
def _parse(path: Path) -> tuple[list[tuple[str, dict]], list[str]]:
    if path.is_dir():
        raise MetadataError([f"{path}: a folder, not a metadata file (one JSON object per line)"], str(path))
    if not path.is_file():
        raise MetadataError([f"{path}: file not found"], str(path))
    entries, problems = [], []
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            origin = f"{path}:{number}"
            record, record_problems = _parse_line(raw)
            problems += [f"{origin}: {message}" for message in record_problems]
            if record is not None:
                entries.append((origin, record))
    return entries, problems


def _parse_line(line: bytes) -> tuple[dict | None, list[str]]:
    try:
        raw = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError:
        return None, ["not UTF-8 text"]
    except json.JSONDecodeError as err:
        return None, [f"not valid JSON ({err.msg})"]
    if not isinstance(raw, dict):
        return None, ["not a JSON object"]
    problems = [f"missing key {key!r}" for key in REQUIRED_KEYS if key not in raw]
    if problems:
        return None, problems
    record = {"image_path": raw["image_path"], "label": raw["label"], "class_name": raw["class_name"]}
    if raw.get("mask_path"):
        record["mask_path"] = raw["mask_path"]
    for key in ("image_path", "class_name", "mask_path"):
        if key in record and (not isinstance(record[key], str) or not record[key]):
            problems.append(f"{key} must be a non-empty string, got {record[key]!r}")
    label = raw["label"]
    # The reference files write 0.0/1.0; anything else is a mistake, not a label.
    if isinstance(label, bool) or label not in (0, 1):
        problems.append(f"label must be 0 or 1, got {label!r}")
    else:
        record["label"] = int(label)
    return (None if problems else record), problems


def _file_problems(record: dict, root: Path, masks_required: bool, decode: bool = False) -> list[str]:
    image_size_, problems = _readable_size(root, record["image_path"], "image", decode)
    mask = record.get("mask_path")
    if mask is None:
        if record["label"] == 1 and masks_required:
            problems.append(f"anomalous image {record['image_path']!r} has no mask_path")
        return problems
    mask_size, mask_problems = _readable_size(root, mask, "mask", decode)
    problems += mask_problems
    if image_size_ and mask_size and image_size_ != mask_size:
        problems.append(
            f"mask {mask!r} is {_wxh(mask_size)} but image {record['image_path']!r} is {_wxh(image_size_)}"
        )
    return problems


def _readable_size(root: Path, rel: str, kind: str, decode: bool = False) -> tuple[tuple[int, int] | None, list[str]]:
    path = root / rel
    if not path.is_file():
        return None, [f"{kind} not found: {path}"]
    try:
        if decode:
            with Image.open(path) as image:
                image.load()  # every pixel: a truncated file fails here
                return image.size, []
        return image_size(path), []
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        return None, [f"{kind} is not a readable image: {path} ({err.__class__.__name__}: {err})"]


def _ordered(record: dict) -> dict:
    out = {"image_path": record["image_path"], "label": int(record["label"]), "class_name": record["class_name"]}
    if record.get("mask_path"):
        out["mask_path"] = record["mask_path"]
    return out


def _wxh(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"
