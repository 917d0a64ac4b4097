"""The miniature datasets on disk (book:protocol-datasets layout) and the captioned pretraining set.

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
from aaclip_miniature import defects, render
from aaclip_miniature.catalog import CLASSES, DATASETS, NORMAL_SHARE, SUBTLE_SHARE

PRETRAIN_STREAM = 100  # stream ids keep pretraining pictures apart from every test picture
MARK_STREAM = 101
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
@dataclass
class PretrainPicture:
    """One captioned pretraining picture: a normal scene, with a neutral mark on the twin."""

    index: int
    scene: render.Scene
    mark: str | None  # the mark's phrase ("a blue line"); None for the unmarked twin

    def captions(self) -> list[str]:
        if self.mark is None:
            return self.scene.captions()
        return [caption.removesuffix(".") + f", {self.mark} on it." for caption in self.scene.captions()]

    def description(self) -> dict:
        scene = self.scene
        return {
            "index": self.index, "class_name": scene.class_name, "colour": scene.colour_phrase(),
            "background": scene.background, "light": scene.light, "mark": self.mark, "captions": self.captions(),
        }  # fmt: skip


def pretrain_scene(index: int, seed: int) -> render.Scene:
    """Pretraining scene `index`: classes in turn, all normal, its own random stream."""
    names = list(CLASSES)
    rng = np.random.default_rng([seed, PRETRAIN_STREAM, index])
    return render.sample_scene(names[index % len(names)], rng)


def pretrain_picture(index: int, seed: int, size: int) -> tuple[PretrainPicture, np.ndarray]:
    """Picture `index` of the pretraining set and its uint8 pixels at `size`: twin pairs, scene
    `index // 2`, the odd one marked.

    The twins differ only by the mark and the caption's last words, so when both sit in one
    contrastive batch (`tiny_clip.PretrainSettings.twins`), the only way to tell them apart is
    to see the mark: this is what puts local detail into the tiny CLIP's patch features.
    """
    scene = pretrain_scene(index // 2, seed)
    layers = render.render(scene, size)
    composite, phrase = layers.composite(), None
    if index % 2:
        composite, phrase = defects.mark(layers, np.random.default_rng([seed, MARK_STREAM, index // 2]))
    return PretrainPicture(index, scene, phrase), render.finish(composite, layers)


def pretrain_set(count: int, seed: int, size: int, native: int, progress: bool = True):
    """(uint8 images (N, 3, native, native), captions per image, `PretrainPicture`s) for the tiny CLIP.

    `count` pictures, `count // 2` twin pairs at indices (2k, 2k + 1). Pictures are drawn at the
    datasets' size and shrunk like the data loader does (PIL bicubic), so the tiny CLIP sees the
    same kind of pixels in pretraining and in testing.
    """
    import torch

    if count % 2:
        raise ValueError(f"count={count}: the pretraining set is made of twin pairs, so it must be even")
    pictures, images = [], []
    for index in tqdm(range(count), desc="drawing pretraining set", unit="image", disable=not progress):
        picture, pixels = pretrain_picture(index, seed, size)
        small = Image.fromarray(pixels).resize((native, native), Image.Resampling.BICUBIC)
        images.append(np.asarray(small))
        pictures.append(picture)
    tensor = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return tensor, [p.captions() for p in pictures], pictures


def write_captions(path: str | Path, pictures: list[PretrainPicture]) -> Path:
    """The pretraining set's description, one JSON line per picture (re-draw one with `pretrain_picture`)."""
    return write_text(path, "".join(json.dumps(p.description()) + "\n" for p in pictures))


def twin_pictures(world: dict, pairs: int = 6) -> tuple[np.ndarray, list[str]]:
    """The world's first twin pairs as its tiny CLIP saw them: (uint8 images (2 * pairs, S, S, 3), titles),
    the unmarked pictures first and their marked twins after, in the same order.

    `world` is the world's summary (its seed and size say which pictures were drawn).
    """
    from aaclip_miniature.catalog import SIZES

    size = SIZES[world["size"]]["image_px"]
    order = [2 * pair for pair in range(pairs)] + [2 * pair + 1 for pair in range(pairs)]
    drawn = [pretrain_picture(i, world["seed"], size) for i in order]
    titles = [picture.scene.class_name + (f"\n+ {picture.mark}" if picture.mark else "") for picture, _ in drawn]
    return np.stack([pixels for _, pixels in drawn]), titles
