"""The miniature world as data: its datasets, classes, looks and defect kinds (no heavy imports).

Two disjoint industrial worlds play the paper's roles: `mini-aux` is the auxiliary world that
AA-CLIP trains on (VisA's role) and `mini-target` is the zero-shot target (MVTec-AD's role);
`mini-scan` is a grayscale, medical-like target (the BMAD scans' role). The tiny CLIP is
pretrained on normal images of every class with captions that name class, colour, background
and light but never a defect, so it knows the classes and is anomaly-unaware.

The target world shows defect kinds that the auxiliary world never does (crack, missing part,
deformation, and lesions in the scans): the paper warns that models overfit to the defect
shapes they were trained on, and this is how the miniature can show it.

The world writes each dataset's `dataset.json` from `DATASETS[name]["domain"]` and
`DATASETS[name]["classes"]` (class -> descriptive name used in the prompts, book:method-anchors),
the same description a user's own prepared folder has.
"""

from __future__ import annotations

DATASETS = {
    "mini-aux": {
        "domain": "industrial",
        "role": "auxiliary world: AA-CLIP trains on it (VisA's role)",
        "classes": {
            "ring": "rubber ring",
            "plate": "square plate",
            "pcb": "circuit board",
            "cookie": "star cookie",
            "stripes": "striped fabric",
            "mesh": "wire mesh",
            "marble": "marble surface",
        },
        "defects": ("scratch", "hole", "stain", "contamination"),
    },
    "mini-target": {
        "domain": "industrial",
        "role": "target world: zero-shot test (MVTec-AD's role)",
        "classes": {
            "nut": "hexagonal nut",
            "capsule": "capsule pill",
            "bottle": "bottle top",
            "screw": "slotted screw",
            "weave": "woven carpet",
            "grain": "wood grain",
            "tile": "speckled tile",
        },
        "defects": ("scratch", "crack", "hole", "stain", "missing_part", "contamination", "deformation"),
    },
    "mini-scan": {
        "domain": "medical",
        "role": "medical-like target: grayscale scans (BrainMRI's role)",
        "classes": {"brain": "scan"},
        "defects": ("lesion",),
    },
}

# Kinds the auxiliary world never shows: the honest test of zero-shot generalisation.
UNSEEN_DEFECTS = tuple(
    kind
    for name in ("mini-target", "mini-scan")
    for kind in DATASETS[name]["defects"]
    if kind not in DATASETS["mini-aux"]["defects"]
)

# Images per class in each test split, pictures in the pretraining set, picture size on disk.
# Normal images are NORMAL_SHARE of each class: real sets run from 27% normal (MVTec-AD) to
# 44% (VisA); the miniature keeps 40%.
SIZES = {
    "default": {"mini-aux": 48, "mini-target": 40, "mini-scan": 120, "pretrain": 24000, "image_px": 96},
    "smoke": {"mini-aux": 10, "mini-target": 10, "mini-scan": 20, "pretrain": 640, "image_px": 96},
}
NORMAL_SHARE = 0.4
SUBTLE_SHARE = 0.2  # anomalous images whose defect is small or faint

# Colours by name (RGB in [0, 1]); a class draws from its own palette, palettes overlap so
# that colour alone never tells the class.
COLOURS = {
    "white": (0.92, 0.92, 0.9),
    "black": (0.12, 0.12, 0.13),
    "gray": (0.55, 0.55, 0.56),
    "silver": (0.75, 0.77, 0.8),
    "red": (0.78, 0.16, 0.14),
    "orange": (0.93, 0.5, 0.12),
    "yellow": (0.93, 0.82, 0.2),
    "green": (0.16, 0.55, 0.25),
    "blue": (0.18, 0.32, 0.72),
    "purple": (0.45, 0.22, 0.55),
    "brown": (0.45, 0.28, 0.14),
    "tan": (0.8, 0.64, 0.42),
    "gold": (0.83, 0.67, 0.25),
    "copper": (0.72, 0.42, 0.24),
    "beige": (0.86, 0.8, 0.66),
    "pink": (0.9, 0.62, 0.66),
    "teal": (0.15, 0.52, 0.55),
}

BACKGROUNDS = ("white", "black", "gray", "blue", "beige", "green")
LIGHTS = {  # caption phrase -> light direction (x, y) in image coordinates; (0, 0) is even light
    "lit from the left": (-1.0, 0.0),
    "lit from the right": (1.0, 0.0),
    "lit from above": (0.0, -1.0),
    "lit from below": (0.0, 1.0),
    "evenly lit": (0.0, 0.0),
}

# kind: object (drawn on a background), texture (fills the frame) or scan (grayscale).
# colours: palette names; a texture's pair is (main, second) for its pattern.
# fmt: off
CLASSES = {
    # auxiliary world
    "ring": {"kind": "object", "colours": ("black", "red", "blue", "green", "orange")},
    "plate": {"kind": "object", "colours": ("silver", "gold", "copper", "gray")},
    "pcb": {"kind": "object", "colours": ("green", "blue", "red", "purple")},
    "cookie": {"kind": "object", "colours": ("tan", "brown", "gold")},
    "stripes": {"kind": "texture", "colours": ("red", "blue", "black", "green", "orange"), "second": ("white", "yellow", "beige")},
    "mesh": {"kind": "texture", "colours": ("silver", "black", "copper", "gold"), "second": ("black", "white", "blue", "gray")},
    "marble": {"kind": "texture", "colours": ("white", "gray", "pink", "green"), "second": ("gray", "black", "green")},
    # target world
    "nut": {"kind": "object", "colours": ("silver", "gold", "gray", "copper")},
    "capsule": {"kind": "object", "colours": ("red", "blue", "black", "green", "yellow"), "second": ("white", "orange", "yellow")},
    "bottle": {"kind": "object", "colours": ("brown", "green", "teal", "black")},
    "screw": {"kind": "object", "colours": ("silver", "black", "blue")},
    "weave": {"kind": "texture", "colours": ("beige", "gray", "blue", "red", "brown"), "second": ("white", "black", "yellow")},
    "grain": {"kind": "texture", "colours": ("tan", "brown", "red", "beige")},
    "tile": {"kind": "texture", "colours": ("white", "gray", "copper", "blue"), "second": ("black", "red", "brown")},
    # scans
    "brain": {"kind": "scan", "colours": ("gray",)},
}
# fmt: on

# Captions name class, colour, background and light, never a defect (the pretraining images
# are all normal; a marked twin's caption adds its mark, "a green line on it", with
# generate.PretrainPicture): this is what keeps the tiny CLIP anomaly-unaware.
CAPTIONS = {
    "object": (
        "a photo of a {name}.",
        "a photo of a {colour} {name}.",
        "a {colour} {name} on a {background} background.",
        "a photo of a {colour} {name} on a {background} background, {light}.",
        "a {name} on a {background} background.",
        "a {name}, {light}.",
    ),
    "texture": (
        "a photo of a {name}.",
        "a photo of a {colour} {name}.",
        "a close-up photo of a {colour} {name}.",
        "a {colour} {name}, {light}.",
        "a {name}, {light}.",
    ),
    "scan": (
        "a photo of a {name}.",
        "a {name}.",
        "a grayscale {name} of a brain.",
        "an axial brain {name}.",
        "a grayscale {name}.",
    ),
}


def world_classes() -> dict[str, str]:
    """Every class the tiny CLIP is pretrained on -> its descriptive name."""
    return {c: n for entry in DATASETS.values() for c, n in entry["classes"].items()}


def dataset_of(class_name: str) -> str:
    return next(name for name, entry in DATASETS.items() if class_name in entry["classes"])
