"""The miniature datasets on disk (SPEC 7 layout) and the captioned pretraining set.

Each picture has its own random stream, `numpy.random.default_rng([seed, stream, class, index])`,
so a picture does not depend on how many others are drawn or in what order, and the same seed
gives the same files. Test splits use MVTec-AD's folder layout:
`<class>/test/good/007.png`, `<class>/test/<defect>/003.png` with its mask in
`<class>/ground_truth/<defect>/003_mask.png`, plus `full-shot.jsonl` in the dataset root.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from aaclip.io import atomic_path, write_text
from aaclip.miniature import defects, render
from aaclip.miniature.catalog import CLASSES, DATASETS, NORMAL_SHARE, SUBTLE_SHARE

PRETRAIN_STREAM = 100  # stream ids keep pretraining pictures apart from every test picture
CLASS_IDS = {name: i for i, name in enumerate(CLASSES)}
DATASET_IDS = {name: i + 1 for i, name in enumerate(DATASETS)}


@dataclass
class Sample:
    """One test picture: the pixels on disk, its normal twin and, if anomalous, the exact mask."""

    scene: render.Scene
    label: int
    kind: str | None  # defect kind; None for a normal picture
    subtle: bool
    image: np.ndarray  # uint8 (S, S, 3)
    normal: np.ndarray  # uint8 (S, S, 3): the same scene without the defect
    mask: np.ndarray | None  # bool (S, S)

    @property
    def grayscale(self) -> bool:
        return self.scene.kind == "scan"


def split_labels(dataset: str, class_name: str, count: int, seed: int) -> np.ndarray:
    """0/1 label per image index: NORMAL_SHARE of them normal, in a seeded order."""
    rng = np.random.default_rng([seed, DATASET_IDS[dataset], CLASS_IDS[class_name]])
    labels = np.ones(count, dtype=int)
    labels[: int(round(NORMAL_SHARE * count))] = 0
    return labels[rng.permutation(count)]


def make_sample(dataset: str, class_name: str, index: int, label: int, seed: int, size: int) -> Sample:
    """Test picture `index` of `class_name`; anomalous ones get a defect of a kind of their world."""
    rng = np.random.default_rng([seed, DATASET_IDS[dataset], CLASS_IDS[class_name], index])
    scene = render.sample_scene(class_name, rng)
    layers = render.render(scene, size)
    normal = render.finish(layers.composite(), layers)
    if not label:
        return Sample(scene, 0, None, False, normal, normal, None)
    kind = str(rng.choice(DATASETS[dataset]["defects"]))
    subtle = bool(rng.uniform() < SUBTLE_SHARE)
    composite, mask = defects.apply(kind, layers, rng, subtle)
    image = render.finish(composite, layers)
    return Sample(scene, 1, kind, subtle, image, normal, mask)


def write_dataset(
    out: str | Path, dataset: str, per_class: int, seed: int, size: int, progress: bool = True
) -> list[dict]:
    """Images, masks and `full-shot.jsonl` of one miniature dataset under `out/dataset`; its records."""
    from aaclip.data.metadata import write_metadata

    root = Path(out) / dataset
    classes = list(DATASETS[dataset]["classes"])
    records = []
    bar = tqdm(total=per_class * len(classes), desc=f"drawing {dataset}", unit="image", disable=not progress)
    for class_name in classes:
        for index, label in enumerate(split_labels(dataset, class_name, per_class, seed)):
            sample = make_sample(dataset, class_name, index, int(label), seed, size)
            records.append(write_sample(root, class_name, index, sample))
            bar.update(1)
    bar.close()
    write_metadata(root / "full-shot.jsonl", records)
    return records


def write_sample(root: Path, class_name: str, index: int, sample: Sample) -> dict:
    folder = sample.kind or "good"
    image_path = f"{class_name}/test/{folder}/{index:03d}.png"
    record = {"image_path": image_path, "label": sample.label, "class_name": class_name}
    save_png(root / record["image_path"], render.to_pil(sample.image, sample.grayscale))
    if sample.label:
        record["mask_path"] = f"{class_name}/ground_truth/{folder}/{index:03d}_mask.png"
        save_png(root / record["mask_path"], Image.fromarray((sample.mask * 255).astype(np.uint8)))
    return record


def save_png(path: Path, image: Image.Image) -> None:
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


# ---------------------------------------------------------------------------- pretraining set
def pretrain_scene(index: int, seed: int) -> render.Scene:
    """Pretraining picture `index`: classes in turn, all normal, its own random stream."""
    names = list(CLASSES)
    rng = np.random.default_rng([seed, PRETRAIN_STREAM, index])
    return render.sample_scene(names[index % len(names)], rng)


def pretrain_set(count: int, seed: int, size: int, native: int, progress: bool = True):
    """(uint8 images (N, 3, native, native), captions per image, scenes) for the tiny CLIP.

    Pictures are drawn at the datasets' size and shrunk like the data loader does (PIL
    bicubic), so the tiny CLIP sees the same kind of pixels in pretraining and in testing.
    """
    import torch

    images, captions, scenes = [], [], []
    for index in tqdm(range(count), desc="drawing pretraining set", unit="image", disable=not progress):
        scene = pretrain_scene(index, seed)
        pixels = render.render_pixels(scene, size)
        small = Image.fromarray(pixels).resize((native, native), Image.Resampling.BICUBIC)
        images.append(np.asarray(small))
        captions.append(scene.captions())
        scenes.append(scene)
    tensor = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return tensor, captions, scenes


def write_captions(path: str | Path, captions: list[list[str]], scenes: list[render.Scene]) -> Path:
    """The pretraining set's description, one JSON line per picture (re-draw one with `pretrain_scene`)."""
    lines = []
    for index, (texts, scene) in enumerate(zip(captions, scenes)):
        entry = {"index": index, "class_name": scene.class_name, "colour": scene.colour_phrase()}
        entry.update({"background": scene.background, "light": scene.light, "captions": texts})
        lines.append(json.dumps(entry))
    return write_text(path, "".join(line + "\n" for line in lines))
