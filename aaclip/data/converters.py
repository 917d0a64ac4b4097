"""Converters from each original dataset layout (book:protocol-datasets) to `full-shot.jsonl`.

One reader per layout, each returning the test split as (origin, record) pairs:

- `mvtec` (MVTec-AD, MPDD): `<class>/test/<good|defect>/*`, masks `<class>/ground_truth/<defect>/<name>_mask.png`
- `btad`: `<0x>/test/<ok|ko>/*`, masks `<0x>/ground_truth/ko/<name>.<png|bmp>` (same stem as the image)
- `visa`: `split_csv/1cls.csv` (object, split, label, image, mask); rows with `split == test`
- `bmad` (Brain, Liver, Retina): `test/good/img`, `test/Ungood/img`, masks `test/Ungood/label` (same name)
- `polyp` (ClinicDB, ColonDB, Kvasir, CVC-300): `images/*` (all anomalous), masks `masks/` (same stem)
- `folder` (a user's own data): `<root>/<class>/test/good` + defect folders, or a single class as
  `<root>/test/good` or `<root>/good` + defect folders; masks optional in `ground_truth/<defect>/`
  as `<name>_mask.*` or `<name>.*`, but then for every defect image.

`prepare_dataset` runs the reader, decodes every file once (readable, mask size = image size),
compares the per-class counts with the registry's expected sizes and only then writes the metadata.
A dataset whose classes come one folder each (MVTec-AD is distributed one archive per class) is
converted with the classes that are present, the others named in a warning (`strict`: an error).
A user's folder must give every class normal and anomalous images (image metrics need both), and
mask-like folders that the layout does not read are named, so that no mask is dropped silently.
"""

from __future__ import annotations

import csv
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from aaclip.data.metadata import IMAGE_SUFFIXES, MetadataError, check_records, count_labels, write_metadata
from aaclip.data.registry import DatasetInfo, custom_info, get_dataset, metadata_filename, write_custom_info
from aaclip.errors import AAClipError

VISA_CSV = Path("split_csv") / "1cls.csv"
VISA_COLUMNS = ("object", "split", "label", "image", "mask")
VISA_LABELS = {"normal": 0, "anomaly": 1}


class LayoutError(MetadataError):
    """An original dataset tree that does not have its layout: every problem, each naming a path."""


class CountMismatchWarning(UserWarning):
    """The converted split differs from the expected test-split sizes."""


@dataclass
class Conversion:
    entries: list[tuple[str, dict]]  # (origin for messages, record)
    skipped: list[str] = field(default_factory=list)  # folders or rows left out, said why


@dataclass
class PrepareResult:
    info: DatasetInfo
    path: Path  # the metadata file written
    records: list[dict]
    counts: dict[str, tuple[int, int]]  # class -> (normal, anomalous)
    mismatches: list[str]  # differences from the expected sizes (empty when all agree)


def prepare_dataset(
    name: str,
    root: str | os.PathLike,
    out: str | os.PathLike | None = None,
    strict: bool = False,
    dataset_name: str | None = None,
    domain: str = "industrial",
    progress: bool = False,
    allow_one_label: bool = False,
) -> PrepareResult:
    """Convert the original tree at `root` and write `<out>/full-shot.jsonl` (out defaults to root).

    `name` is a registered dataset or `folder` (then `dataset_name`, default the root's folder
    name, and `domain` describe the user's data, recorded in `dataset.json`). Count differences
    and classes left out warn (`CountMismatchWarning`), or raise with `strict`. A user's class
    with only normal or only anomalous images is an error unless `allow_one_label`. Nothing is
    written on any error. Paths in the metadata are relative to `root`; when `out` is elsewhere
    they are absolute.
    """
    root = Path(root)
    if not root.is_dir():
        raise AAClipError(f"dataset root not found: {root}")
    info, conversion = convert(name, root, dataset_name, domain)
    problems = check_records(conversion.entries, root, masks_required=info.has_masks, progress=progress, decode=True)
    if problems:
        raise LayoutError(problems, f"{info.name} tree {root}")
    records = [record for _, record in conversion.entries]
    counts = count_labels(records)
    if info.layout == "folder" and not allow_one_label:
        _refuse_one_label(info, root, counts)
    mismatches = conversion.skipped + compare_counts(info, counts)
    _report_mismatches(info, root, mismatches, strict)
    path = _write(Path(out) if out is not None else root, root, info, records)
    return PrepareResult(info, path, records, counts, mismatches)


def convert(name: str, root: Path, dataset_name: str | None = None, domain: str = "industrial"):
    """(DatasetInfo, Conversion) of the tree at `root`: a registered dataset's layout, or `folder`."""
    if name.lower() == "folder":
        return convert_folder(root, dataset_name or root.resolve().name, domain)
    info = get_dataset(name)
    return info, converter(info.layout)(root, info)


def converter(layout: str):
    """The reader of a registry layout."""
    if layout not in CONVERTERS:
        raise AAClipError(f"layout {layout!r} has no converter (a prepared folder's metadata is written by its maker)")
    return CONVERTERS[layout]


def compare_counts(info: DatasetInfo, counts: dict[str, tuple[int, int]]) -> list[str]:
    """One line per class whose (normal, anomalous) count differs from the expected one."""
    if info.expected is None:
        return []
    lines = []
    for name, expected in info.expected.items():
        found = counts.get(name, (0, 0))
        if found != tuple(expected):
            lines.append(
                f"class {name!r}: {found[0]} normal / {found[1]} anomalous, expected {expected[0]} / {expected[1]}"
            )
    return lines


def _report_mismatches(info: DatasetInfo, root: Path, mismatches: list[str], strict: bool) -> None:
    if mismatches and strict:
        raise AAClipError(f"{info.name} at {root} differs from the expected test split:\n  " + "\n  ".join(mismatches))
    if mismatches:
        warnings.warn(f"{info.name} at {root}: " + "; ".join(mismatches), CountMismatchWarning, stacklevel=3)


def _write(out: Path, root: Path, info: DatasetInfo, records: list[dict]) -> Path:
    """The metadata (and a user dataset's dataset.json); absolute paths when `out` is not the root."""
    if out.resolve() != root.resolve():
        records = [_absolute(record, root.resolve()) for record in records]
    path = write_metadata(out / metadata_filename(-1), records)
    if info.layout == "folder":
        write_custom_info(out, info)
    return path


# ---------------------------------------------------------------------------- layouts
def convert_mvtec(root: Path, info: DatasetInfo) -> Conversion:
    """MVTec-AD and MPDD: `<class>/test/<good|defect>`, masks `<class>/ground_truth/<defect>/<name>_mask.*`."""
    return _per_class_trees(root, info, normal="good", mask_stems=lambda stem: [f"{stem}_mask"])


def convert_btad(root: Path, info: DatasetInfo) -> Conversion:
    """BTAD: `<0x>/test/<ok|ko>`, masks `<0x>/ground_truth/ko/<name>.*` (png or bmp)."""
    return _per_class_trees(root, info, normal="ok", mask_stems=lambda stem: [stem])


def convert_visa(root: Path, info: DatasetInfo) -> Conversion:
    """VisA: the rows of `split_csv/1cls.csv` whose split is `test`."""
    path = root / VISA_CSV
    if not path.is_file():
        raise LayoutError([f"{path}: file not found"], f"{info.name} tree {root}")
    entries, problems, unknown, absent = [], [], {}, {}
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in VISA_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise LayoutError([f"{path}:1: missing column(s) {', '.join(missing)}"], f"{info.name} tree {root}")
        for row in reader:
            origin = f"{path}:{reader.line_num}"
            record, problem = _visa_row(row)
            if problem:
                problems.append(f"{origin}: {problem}")
            elif record is None:
                continue  # a train row
            elif record["class_name"] not in info.classes:
                unknown[record["class_name"]] = unknown.get(record["class_name"], 0) + 1
            elif not (root / record["class_name"]).is_dir():
                absent[record["class_name"]] = absent.get(record["class_name"], 0) + 1
            else:
                entries.append((origin, record))
    _raise_if(problems, info, root)
    skipped = [
        f"{path}: object {obj!r} ({n} test rows) is not a {info.name} class: skipped"
        for obj, n in unknown.items()
    ]
    if absent:
        skipped.append(f"{len(absent)} classes of {path.name} have no folder under {root}, left out: {', '.join(absent)}")
    if not entries and not problems:
        problems.append(f"{path}: no test row of a class whose folder is under {root}")
    _raise_if(problems, info, root)
    return Conversion(entries, skipped)


def convert_bmad(root: Path, info: DatasetInfo) -> Conversion:
    """BMAD (Brain, Liver, Retina): `test/good/img`, `test/Ungood/img` with masks in `test/Ungood/label`."""
    (class_name,) = info.classes
    problems: list[str] = []
    normal = _entries(root, _required_images(root / "test" / "good" / "img", problems), 0, class_name)
    anomalous = _masked_entries(
        root, root / "test" / "Ungood" / "img", root / "test" / "Ungood" / "label", class_name, lambda s: [s], problems
    )
    _raise_if(problems, info, root)
    return Conversion(normal + anomalous)


def convert_polyp(root: Path, info: DatasetInfo) -> Conversion:
    """Polyp sets: every image in `images/` is anomalous, its mask in `masks/` has the same stem."""
    (class_name,) = info.classes
    problems: list[str] = []
    entries = _masked_entries(root, root / "images", root / "masks", class_name, lambda s: [s], problems)
    _raise_if(problems, info, root)
    return Conversion(entries)


def convert_folder(root: Path, name: str, domain: str = "industrial") -> tuple[DatasetInfo, Conversion]:
    """A user's own MVTec-style data; masks optional, but all or none of the defect images have one."""
    _refuse_registered_name(name)
    problems: list[str] = []
    entries = []
    for class_name, test_dir, mask_dir in _folder_classes(root, name):
        entries += _defect_tree(root, test_dir, mask_dir, class_name, "good", _folder_mask_stems, False, problems)
    _raise_if(problems, name, root)
    anomalous = [(origin, r) for origin, r in entries if r["label"] == 1]
    unmasked = [origin for origin, r in anomalous if "mask_path" not in r]
    if unmasked and len(unmasked) < len(anomalous):
        problems = [f"{origin}: no mask in ground_truth/ although other defect images have one" for origin in unmasked]
        raise LayoutError(problems, f"{name} tree {root}")
    classes = sorted({r["class_name"] for _, r in entries})
    has_masks = bool(anomalous) and not unmasked
    info = custom_info(name, {c: c.replace("_", " ") for c in classes}, domain, has_masks,
                       made_by=f"aaclip prepare folder --root {root}")
    used = {(root / r["mask_path"]).parent.resolve() for _, r in entries if "mask_path" in r}
    return info, Conversion(entries, unused_mask_folders(root, used))


MASK_FOLDER_NAMES = {"mask", "masks", "gt", "ground_truth", "groundtruth", "label", "labels", "annotation",
                     "annotations", "segmentation", "segmentations"}


def unused_mask_folders(root: Path, used: set[Path]) -> list[str]:
    """Folders whose name says masks but from which no mask was read: said, never silently dropped."""
    lines = []
    for folder in sorted(p for p in root.rglob("*") if p.is_dir() and p.name.lower() in MASK_FOLDER_NAMES):
        inside = [d for d in used if d == folder.resolve() or folder.resolve() in d.parents]
        if not inside and any(_images(folder) or [q for q in folder.rglob("*") if q.suffix.lower() in IMAGE_SUFFIXES]):
            lines.append(f"folder {folder} looks like masks but none was read from it: masks belong in "
                         "<class>/ground_truth/<defect>/<name>_mask.png (or <name>.png)")
    return lines


def _refuse_one_label(info: DatasetInfo, root: Path, counts: dict[str, tuple[int, int]]) -> None:
    """Image metrics need normal and anomalous images in every class: say which class lacks which."""
    lacking = [f"class {c!r}: {n} normal and {a} anomalous images" for c, (n, a) in counts.items() if not (n and a)]
    if lacking:
        raise LayoutError(
            [*lacking, "image AUROC, AP and F1 need both kinds: add images to good/ or a defect folder, or pass "
             "--allow-one-label to keep such classes (their image metrics are then undefined)"],
            f"{info.name} tree {root}",
        )


CONVERTERS = {
    "mvtec": convert_mvtec,
    "btad": convert_btad,
    "visa": convert_visa,
    "bmad": convert_bmad,
    "polyp": convert_polyp,
}


# ---------------------------------------------------------------------------- tree helpers
def _per_class_trees(root: Path, info: DatasetInfo, normal: str, mask_stems) -> Conversion:
    """One folder per class; the classes present are converted and the missing ones named."""
    problems: list[str] = []
    entries, missing = [], []
    for class_name in info.classes:
        class_dir = root / class_name
        if not class_dir.is_dir():
            missing.append(class_name)
            continue
        test_dir, mask_dir = class_dir / "test", class_dir / "ground_truth"
        entries += _defect_tree(root, test_dir, mask_dir, class_name, normal, mask_stems, True, problems)
    if len(missing) == len(info.classes):
        problems.append(f"no {info.name} class folder under {root} (expected some of {', '.join(info.classes)})")
    _raise_if(problems, info, root)
    extra = [d.name for d in _subdirs(root) if d.name not in info.classes and (d / "test").is_dir()]
    skipped = [f"folder {root / d!s} is not a {info.name} class: skipped" for d in extra]
    if missing:
        skipped.append(f"{len(missing)} of {len(info.classes)} classes not under {root}, left out: {', '.join(missing)}")
    return Conversion(entries, skipped)


def _defect_tree(root, test_dir, mask_dir, class_name, normal, mask_stems, masks_required, problems) -> list:
    """`test_dir/<normal>` holds normal images, every other subfolder one defect type."""
    if not (test_dir / normal).is_dir():
        problems.append(f"folder not found: {test_dir / normal}")
        return []
    entries = _entries(root, _images(test_dir / normal), 0, class_name)
    for defect_dir in _subdirs(test_dir):
        if defect_dir.name == normal or defect_dir == mask_dir:
            continue
        if not masks_required and defect_dir.name.lower() in MASK_FOLDER_NAMES:
            continue  # a user's masks in the wrong place are not a defect type: `unused_mask_folders` says so
        if masks_required or (mask_dir / defect_dir.name).is_dir():
            entries += _masked_entries(root, defect_dir, mask_dir / defect_dir.name, class_name, mask_stems, problems)
        else:
            entries += _entries(root, _images(defect_dir), 1, class_name)
    return entries


def _masked_entries(root, image_dir, mask_dir, class_name, mask_stems, problems) -> list:
    """Anomalous images of `image_dir`, each with the mask of `mask_dir` whose stem matches."""
    images = _required_images(image_dir, problems)
    if images and not mask_dir.is_dir():
        problems.append(f"mask folder not found: {mask_dir} (needed by {len(images)} images in {image_dir})")
        return []
    masks = {path.stem: path for path in _images(mask_dir)} if images else {}
    entries = []
    for image in images:
        mask = next((masks[s] for s in mask_stems(image.stem) if s in masks), None)
        if mask is None:
            looked_for = " or ".join(mask_stems(image.stem))
            problems.append(f"{image}: mask not found in {mask_dir} (looked for {looked_for}.*)")
        else:
            entries.append(_entry(root, image, 1, class_name, mask))
    return entries


def _folder_classes(root: Path, name: str) -> list[tuple[str, Path, Path]]:
    """(class, test folder, mask folder) for each class of a user's tree."""
    if (root / "good").is_dir():
        return [(name, root, root / "ground_truth")]
    if (root / "test" / "good").is_dir():
        return [(name, root / "test", root / "ground_truth")]
    classes = [d for d in _subdirs(root) if (d / "test" / "good").is_dir()]
    if not classes:
        raise LayoutError(
            [f"{root}: no good/ folder: expected {root}/good, {root}/test/good or {root}/<class>/test/good"],
            f"{name} tree {root}",
        )
    return [(d.name, d / "test", d / "ground_truth") for d in classes]


def _folder_mask_stems(stem: str) -> list[str]:
    return [f"{stem}_mask", stem]


def _visa_row(row: dict) -> tuple[dict | None, str | None]:
    """(record, None) for a test row, (None, None) for a train row, (None, problem) for a bad row."""
    if None in row or any(row.get(c) is None for c in VISA_COLUMNS):
        return None, f"expected {len(VISA_COLUMNS)} fields ({', '.join(VISA_COLUMNS)})"
    split, label = row["split"].strip(), row["label"].strip()
    if split not in ("train", "test"):
        return None, f"split must be train or test, got {split!r}"
    if label not in VISA_LABELS:
        return None, f"label must be normal or anomaly, got {label!r}"
    if not row["image"].strip() or not row["object"].strip():
        return None, "empty object or image"
    if VISA_LABELS[label] == 1 and not row["mask"].strip():
        return None, "anomalous image without a mask"
    if split == "train":
        return None, None
    record = {"image_path": row["image"].strip(), "label": VISA_LABELS[label], "class_name": row["object"].strip()}
    if label == "anomaly":
        record["mask_path"] = row["mask"].strip()
    return record, None


def _entries(root: Path, images: list[Path], label: int, class_name: str) -> list:
    return [_entry(root, image, label, class_name) for image in images]


def _entry(root: Path, image: Path, label: int, class_name: str, mask: Path | None = None) -> tuple[str, dict]:
    record = {"image_path": image.relative_to(root).as_posix(), "label": label, "class_name": class_name}
    if mask is not None:
        record["mask_path"] = mask.relative_to(root).as_posix()
    return str(image), record


def _required_images(folder: Path, problems: list[str]) -> list[Path]:
    if not folder.is_dir():
        problems.append(f"folder not found: {folder}")
        return []
    return _images(folder)


def _images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def _subdirs(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _raise_if(problems: list[str], info: DatasetInfo | str, root: Path) -> None:
    if problems:
        name = info if isinstance(info, str) else info.name
        raise LayoutError(problems, f"{name} tree {root}")


def _refuse_registered_name(name: str) -> None:
    try:
        registered = get_dataset(name)
    except AAClipError:
        return
    raise AAClipError(f"{name!r} is the registered dataset {registered.name}; give your data another --name")


def _absolute(record: dict, root: Path) -> dict:
    out = {**record, "image_path": (root / record["image_path"]).as_posix()}
    if "mask_path" in record:
        out["mask_path"] = (root / record["mask_path"]).as_posix()
    return out
