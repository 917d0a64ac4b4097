"""Small fake dataset trees in the *original* layouts, under the real file names of the reference lists.

Each image is a textured picture with one drawn defect where the reference row is anomalous, and
the defect's exact mask where the reference row has one: what `aaclip prepare` reads, what the
paper-profile book trains and tests on in CI (at a tiny size, with random weights).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image

REFERENCE = Path(__file__).resolve().parent / "reference-metadata"
SIZE = 48


def reference_rows(folder: str) -> list[dict]:
    lines = (REFERENCE / folder / "full-shot.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def pick(rows: list[dict], per_label: int) -> list[dict]:
    """The first `per_label` normal and anomalous rows of every class, in the reference order."""
    chosen, seen = [], {}
    for row in rows:
        key = (row["class_name"], int(row["label"]))
        if seen.get(key, 0) < per_label:
            seen[key] = seen.get(key, 0) + 1
            chosen.append(row)
    return chosen


def draw(rng: np.random.Generator, anomalous: bool, grayscale: bool) -> tuple[Image.Image, Image.Image | None]:
    """A textured picture; an anomalous one carries a bright blob, its mask white on black."""
    base = rng.uniform(0.2, 0.6, 3) if not grayscale else np.full(3, rng.uniform(0.2, 0.6))
    noise = rng.normal(0, 0.05, (SIZE, SIZE, 1 if grayscale else 3))
    pixels = np.clip(base + noise, 0, 1)
    mask = None
    if anomalous:
        ys, xs = np.mgrid[0:SIZE, 0:SIZE]
        cy, cx, r = rng.uniform(12, SIZE - 12, 2).tolist() + [rng.uniform(4, 9)]
        inside = (ys - cy) ** 2 + (xs - cx) ** 2 <= r * r
        pixels[inside] = np.clip(1.0 - base, 0, 1) if not grayscale else 0.95
        mask = Image.fromarray((inside * 255).astype(np.uint8))
    image = Image.fromarray((pixels * 255).astype(np.uint8).squeeze() if grayscale else (pixels * 255).astype(np.uint8))
    return image.convert("RGB") if not grayscale else image, mask


def save(image: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def build(root: Path, folder: str, per_label: int, seed: int = 0, grayscale: bool = False) -> list[dict]:
    """The tree of one dataset under `root / folder`: images and masks at the reference paths."""
    rng = np.random.default_rng(seed)
    rows = pick(reference_rows(folder), per_label)
    for row in rows:
        image, mask = draw(rng, bool(int(row["label"])), grayscale)
        save(image, root / folder / row["image_path"])
        if row.get("mask_path"):
            save(mask, root / folder / row["mask_path"])
    if folder == "VisA":  # the layout lists its split in a csv, test and train rows
        write_visa_csv(root / folder, rows)
    return rows


def write_visa_csv(root: Path, rows: list[dict]) -> None:
    path = root / "split_csv" / "1cls.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["object", "split", "label", "image", "mask"])
        for row in rows:
            label = "anomaly" if int(row["label"]) else "normal"
            writer.writerow([row["class_name"], "test", label, row["image_path"], row.get("mask_path", "")])


def build_paper_data(root: Path) -> dict[str, list[dict]]:
    """VisA (training), MVTec-AD, Brain (medical) and Kvasir (a polyp set: anomalous images only)."""
    return {
        "VisA": build(root, "VisA", per_label=3, seed=1),
        "MVTec": build(root, "MVTec", per_label=2, seed=2),
        "Brain": build(root, "Brain", per_label=4, seed=3, grayscale=True),
        "Kvasir": build(root, "Colon_Kvasir", per_label=6, seed=4),
    }


# A small random open_clip backbone in the folder layout open_clip's `local-dir:` loader reads: the
# real model classes (VisionTransformer, TextTransformer) and the real tokenizer, at a size CI can train.
TINY_BACKBONE = "ViT-tiny-random"
TINY_MODEL_CFG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": 4, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 4},
}


def write_random_backbone(folder: Path, seed: int = 0) -> Path:
    """open_clip_config.json + open_clip_model.safetensors of a randomly initialised small CLIP."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = open_clip.CLIP(**json.loads(json.dumps(TINY_MODEL_CFG)))
    config = {
        "model_name": TINY_BACKBONE,
        "model_cfg": TINY_MODEL_CFG,
        "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]},
    }
    (folder / "open_clip_config.json").write_text(json.dumps(config, indent=1))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "open_clip_model.safetensors"), metadata={"model_name": TINY_BACKBONE})
    return folder
