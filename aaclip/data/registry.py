"""The datasets of book:protocol-datasets, by name: classes, domain, prompt names, expected sizes.

Names are case-insensitive and ignore `-`, `_` and spaces, so `mvtec-ad`, `MVTec_AD` and
`mvtecad` all mean MVTec. Each dataset lives in `<data_root>/<folder>` (the folder names of
the reference implementation) with its metadata `full-shot.jsonl` and `<k>-shot.jsonl`.

Any other dataset is a prepared folder `<data_root>/<name>` described by the `dataset.json`
beside its metadata (name, domain, prompt names, whether it has masks): `aaclip prepare folder`
writes one for a user's own data, and a data generator writes the same file for what it makes.
Pass `data_root` to `get_dataset` to find them.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from aaclip.errors import AAClipError

DOMAINS = ("industrial", "medical")
CUSTOM_INFO_FILE = "dataset.json"


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    folder: str
    domain: str  # industrial | medical: picks the blur kernel and the image-score rule (book:method-scoring)
    classes: tuple[str, ...]
    prompt_names: dict[str, str]  # class -> descriptive name used in the prompts (book:method-anchors)
    expected: dict[str, tuple[int, int]] | None  # class -> (normal, anomalous) test images
    layout: str  # which converter reads the original tree (aaclip.data.converters)
    has_masks: bool
    aliases: tuple[str, ...] = field(default=())
    made_by: str = ""  # how the metadata is (re)made, for messages: 'aaclip prepare <name>' when empty


# Per-class test-split sizes (normal, anomalous), counted from the reference file lists.
MVTEC_EXPECTED = {
    "bottle": (20, 63), "cable": (58, 92), "capsule": (23, 109), "carpet": (28, 89),
    "grid": (21, 57), "hazelnut": (40, 70), "leather": (32, 92), "metal_nut": (22, 93),
    "pill": (26, 141), "screw": (41, 119), "tile": (33, 84), "toothbrush": (12, 30),
    "transistor": (60, 40), "wood": (19, 60), "zipper": (32, 119),
}  # fmt: skip
VISA_EXPECTED = {
    "candle": (100, 100), "capsules": (60, 100), "cashew": (50, 100), "chewinggum": (50, 100),
    "fryum": (50, 100), "macaroni1": (100, 100), "macaroni2": (100, 100), "pcb1": (100, 100),
    "pcb2": (100, 100), "pcb3": (101, 100), "pcb4": (101, 100), "pipe_fryum": (50, 100),
}  # fmt: skip
BTAD_EXPECTED = {"01": (21, 49), "02": (30, 200), "03": (400, 41)}
MPDD_EXPECTED = {
    "bracket_black": (32, 47), "bracket_brown": (26, 51), "bracket_white": (30, 30),
    "connector": (30, 14), "metal_plate": (26, 71), "tubes": (32, 69),
}  # fmt: skip

MVTEC_PROMPTS = {
    "bottle": "dark bottle",
    "cable": "top view of three cables",
    "capsule": "black and orange capsule",
    "carpet": "gray carpet",
    "grid": "metal or plastic mesh",
    "hazelnut": "single brown hazelnut",
    "leather": "brown leather",
    "metal_nut": "metal nut which has four notched edges",
    "pill": "oval white pill with small red speckles and the letters 'FF' engraved",
    "screw": "screw",
    "tile": "speckled tile surface",
    "toothbrush": "toothbrush head",
    "transistor": "a three-legged transistor placed vertically",
    "wood": "wood surface",
    "zipper": "a black zipper",
}
VISA_PROMPTS = {
    "candle": "candle",
    "capsules": "capsules",
    "cashew": "cashew nut",
    "chewinggum": "chewing gum",
    "fryum": "wheel-shaped fryum snack",
    "macaroni1": "orange macaroni",
    "macaroni2": "scattered yellow macaroni",
    "pcb1": "dual ultrasonic distance sensor pcb module",
    "pcb2": "integrated circuits board",
    "pcb3": "infrared sensor pcb module",
    "pcb4": "battery charging pcb module",
    "pipe_fryum": "pipe-shaped fryum",
}
# MPDD and BTAD: the reference code's own phrases (its class-name constants, Apache-2.0), with which
# the published MPDD and BTAD numbers were produced (book:protocol-prompt-names).
MPDD_PROMPTS = {
    "connector": "metal clamps with black adjustment knobs",
    "tubes": "scattered metal objects",
    "metal_plate": "blue rectangular metal plate with a notch on one side",
    "bracket_white": "white, elongated triangular metal bracket with a smooth, matte finish",
    "bracket_brown": "brown L-shaped metal bracket with smooth, glossy finish and multiple mounting holes along its arms",
    "bracket_black": "black ornamental metal bracket with spiral design attached to a rectangular frame",
}
BTAD_PROMPTS = {
    "01": "Bright concentric rings in neon yellow and blue tones against a dark blue background, resembling a "
          "stylized wave or energy field radiating outward.",
    "02": "vertical fabric lines in warm, dusty pink and beige tones",
    "03": "oval concentric circular rings in gradient shades of blue and white",
}


def _one_class(name, folder, domain, prompt, expected, layout, aliases) -> DatasetInfo:
    return DatasetInfo(name, folder, domain, (name,), {name: prompt}, {name: expected}, layout, True, aliases)


def _many(name, folder, expected, prompts, layout, aliases) -> DatasetInfo:
    return DatasetInfo(name, folder, "industrial", tuple(expected), prompts, expected, layout, True, aliases)


SCAN, POLYP = "scan", "colon endoscopy image"
DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        _many("MVTec", "MVTec", MVTEC_EXPECTED, MVTEC_PROMPTS, "mvtec", ("mvtec-ad",)),
        _many("VisA", "VisA", VISA_EXPECTED, VISA_PROMPTS, "visa", ()),
        _many("BTAD", "BTAD", BTAD_EXPECTED, BTAD_PROMPTS, "btad", ()),
        _many("MPDD", "MPDD", MPDD_EXPECTED, MPDD_PROMPTS, "mvtec", ()),
        _one_class("Brain", "Brain", "medical", SCAN, (640, 3075), "bmad", ("brainmri", "brain-mri")),
        _one_class("Liver", "Liver", "medical", SCAN, (833, 660), "bmad", ("liverct", "liver-ct")),
        _one_class("Retina", "Retina", "medical", SCAN, (1041, 764), "bmad", ("resc", "retina-resc")),
        _one_class("ClinicDB", "Colon_clinicDB", "medical", POLYP, (0, 612), "polyp", ("cvc-clinicdb",)),
        _one_class("ColonDB", "Colon_colonDB", "medical", POLYP, (0, 380), "polyp", ("cvc-colondb",)),
        _one_class("Kvasir", "Colon_Kvasir", "medical", POLYP, (0, 1000), "polyp", ("kvasir-seg",)),
        _one_class("CVC-300", "Colon_cvc300", "medical", POLYP, (0, 60), "polyp", ()),
    )
}


def dataset_names() -> list[str]:
    """The registered names: the 11 datasets of book:protocol-datasets."""
    return list(DATASETS)


def get_dataset(name: str, data_root: str | os.PathLike | None = None) -> DatasetInfo:
    """The dataset called `name` (case-insensitive, aliases; also the folder name).

    With `data_root`, a name the registry does not know may be a user's own dataset
    prepared by `aaclip prepare folder` into `<data_root>/<name>` (found by its dataset.json).
    """
    key = _key(name)
    if key in _ALIASES:
        return DATASETS[_ALIASES[key]]
    if data_root is not None and (Path(data_root) / name / CUSTOM_INFO_FILE).is_file():
        return read_custom_info(Path(data_root) / name / CUSTOM_INFO_FILE)
    where = f" (nor a prepared folder {Path(data_root) / name})" if data_root is not None else ""
    raise AAClipError(
        f"unknown dataset {name!r}{where}; choose one of {', '.join(dataset_names())}, or a prepared folder "
        f"(one with {CUSTOM_INFO_FILE}, e.g. from 'aaclip prepare folder') under the data root"
    )


def dataset_root(data_root: str | os.PathLike, name: str) -> Path:
    return Path(data_root) / get_dataset(name, data_root).folder


def metadata_path(data_root: str | os.PathLike, name: str, shot: int = -1) -> Path:
    """`<data_root>/<folder>/full-shot.jsonl` (shot -1) or `<k>-shot.jsonl`."""
    return dataset_root(data_root, name) / metadata_filename(shot)


def metadata_filename(shot: int = -1) -> str:
    if shot == -1:
        return "full-shot.jsonl"
    if isinstance(shot, bool) or not isinstance(shot, int) or shot < 2 or shot % 2:
        raise AAClipError(f"shot={shot!r}: use -1 (full) or an even k >= 2 (half normal, half anomalous)")
    return f"{shot}-shot.jsonl"


def custom_info(
    name: str, prompt_names: dict[str, str], domain: str = "industrial", has_masks: bool = True, folder: str = "",
    made_by: str = "aaclip prepare folder",
) -> DatasetInfo:
    """Registry entry of a prepared folder (no expected sizes); `made_by` is the command that remakes it."""
    if domain not in DOMAINS:
        raise AAClipError(f"domain {domain!r}: choose one of {', '.join(DOMAINS)}")
    prompts = dict(prompt_names)
    return DatasetInfo(name, folder or name, domain, tuple(prompts), prompts, None, "folder", has_masks, made_by=made_by)


def custom_info_json(info: DatasetInfo) -> dict:
    """What `dataset.json` records, for `read_custom_info`."""
    return {
        "name": info.name, "domain": info.domain, "has_masks": info.has_masks,
        "prompt_names": info.prompt_names, "made_by": info.made_by,
    }  # fmt: skip


def write_custom_info(folder: str | os.PathLike, info: DatasetInfo) -> Path:
    """Write `<folder>/dataset.json`, which makes the folder a dataset `get_dataset` finds."""
    from aaclip.io import write_json

    return write_json(Path(folder) / CUSTOM_INFO_FILE, custom_info_json(info))


def read_custom_info(path: Path) -> DatasetInfo:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        has_masks = bool(data["has_masks"])
        made_by = str(data.get("made_by", "aaclip prepare folder"))
        return custom_info(data["name"], data["prompt_names"], data["domain"], has_masks, path.parent.name, made_by)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as err:
        raise AAClipError(f"{path}: not a dataset description ({CUSTOM_INFO_FILE}) ({err!r})") from err


# ---------------------------------------------------------------------------- internals
def _key(name: str) -> str:
    return re.sub(r"[-_\s]", "", str(name).lower())


def _alias_table() -> dict[str, str]:
    table = {}
    for info in DATASETS.values():
        for alias in (info.name, info.folder, *info.aliases):
            table[_key(alias)] = info.name
    return table


_ALIASES = _alias_table()
