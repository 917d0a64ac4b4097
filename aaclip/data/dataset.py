"""The torch Dataset: preprocessing (book:method-preprocessing) and augmentation (book:method-augmentation).

Preprocessing: resize to SxS with PIL bicubic (antialiased, as CLIP's own transform on PIL
images), no crop, aspect not kept; the backbone's mean and std. Masks: read as grayscale
(`convert("L")`), nearest resize, then `!= 0`: the released rule, the same one the
original-resolution metrics use (`read_mask`). Any image mode becomes RGB; a normal image gets an
all-zero mask.

Augmentation, in the released order (torchvision.transforms.v2):
1. with `color_jitter`, brightness, contrast and saturation 0.5, each applied with p 0.7, on the
   PIL image at its original size (image only);
2. the resize and the normalisation;
3. on the (normalised image, mask) pair, so that both get the same geometry: rotation +-30 deg
   (p 0.5), translation 0.15 (p 0.5), h-flip 0.5, v-flip 0.5, nearest, fill 0. The fill applies to
   the normalised tensor, so uncovered pixels take the mean colour, not black; the mask's fill 0 is
   "no defect".
The randomness is torch's global RNG: reproducible after `torch.manual_seed`, and DataLoader
workers get their own seeds from it.

Each item is an `aaclip.batch.Batch` of one image; `Batch.collate` joins them.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2

from aaclip.batch import Batch
from aaclip.data.metadata import validate_metadata
from aaclip.data.registry import DatasetInfo, get_dataset, metadata_path
from aaclip.errors import AAClipError

NEAREST = v2.InterpolationMode.NEAREST


class AnomalyDataset(torch.utils.data.Dataset):
    """Items: a `Batch` of one image: image (1,3,S,S) normalised, gt_mask (1,S,S) bool, gt_label, names."""

    def __init__(
        self,
        records: list[dict],
        root: str | os.PathLike,
        image_size: int,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        augment: bool = False,
        color_jitter: bool = False,
        info: DatasetInfo | None = None,
    ):
        self.records = list(records)
        self.root = Path(root)
        self.image_size = image_size
        self.info = info
        self.mean, self.std = tuple(mean), tuple(std)
        self.jitter = colour_jitter() if color_jitter else None
        self.geometry = geometry() if augment else None
        self.normalize = v2.Normalize(mean=list(mean), std=list(std))

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Batch:
        record = self.records[index]
        image_path = self.root / record["image_path"]
        image = tv_tensors.Image(load_image(image_path, self.image_size, self.jitter))
        if record["label"] == 1 and record.get("mask_path"):
            mask = tv_tensors.Mask(load_mask(self.root / record["mask_path"], self.image_size))
        else:
            mask = tv_tensors.Mask(torch.zeros(1, self.image_size, self.image_size, dtype=torch.uint8))
        image = self.normalize(v2.functional.to_dtype(image, torch.float32, scale=True))
        if self.geometry is not None:  # on the normalised tensor: fill 0 is the mean colour
            image, mask = self.geometry(image, mask)
        return Batch(
            image_path=[str(image_path)],
            class_name=[record["class_name"]],
            gt_label=torch.tensor([int(record["label"])]),
            image=image.as_subclass(torch.Tensor)[None],
            gt_mask=(mask != 0).as_subclass(torch.Tensor),
        )

    @property
    def class_names(self) -> list[str]:
        """Classes in order of first appearance."""
        return list(dict.fromkeys(r["class_name"] for r in self.records))

    def indices_of(self, class_name: str) -> list[int]:
        return [i for i, r in enumerate(self.records) if r["class_name"] == class_name]

    def subset(self, indices) -> "AnomalyDataset":
        """The same dataset restricted to `indices` (records, preprocessing and info shared)."""
        part = AnomalyDataset.__new__(AnomalyDataset)
        part.__dict__.update(self.__dict__)
        part.records = [self.records[i] for i in indices]
        return part

    def batch(self, indices) -> Batch:
        """dataset[indices] as one Batch."""
        return Batch.collate([self[i] for i in indices])


def load_dataset(
    data_root: str | os.PathLike,
    name: str,
    image_size: int,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    shot: int = -1,
    augment: bool = False,
    color_jitter: bool = False,
    classes: list[str] | None = None,
) -> AnomalyDataset:
    """The dataset `name` under `data_root` (full split or `<shot>-shot`), metadata validated first."""
    info = get_dataset(name, data_root)
    path = metadata_path(data_root, name, shot)
    if path.is_dir():
        raise AAClipError(f"{path} is a folder, not a metadata file: {_how_to_make(info, shot)}")
    if not path.is_file():
        raise AAClipError(f"{path} not found: {_how_to_make(info, shot)}")
    records = validate_metadata(path, path.parent, masks_required=info.has_masks)
    unknown = sorted({r["class_name"] for r in records} - set(info.classes))
    if unknown:  # the prompts need a descriptive name for every class
        raise AAClipError(f"{path}: class(es) {', '.join(unknown)} not in {info.name}: {', '.join(info.classes)}")
    if classes is not None:
        records = _select_classes(records, classes, path)
    return AnomalyDataset(records, path.parent, image_size, mean, std, augment, color_jitter, info)


def colour_jitter() -> v2.Compose:
    """book:method-augmentation: brightness, contrast and saturation 0.5, each with p 0.7 (on a PIL image)."""
    return v2.Compose([v2.RandomApply([v2.ColorJitter(**{part: 0.5})], p=0.7) for part in ("brightness", "contrast", "saturation")])


def geometry() -> v2.Compose:
    """book:method-augmentation: the joint geometric transforms of an (image, mask) pair, nearest, fill 0."""
    return v2.Compose([
        v2.RandomApply([v2.RandomRotation(30, interpolation=NEAREST, fill=0)], p=0.5),
        v2.RandomApply([v2.RandomAffine(degrees=0, translate=(0.15, 0.15), interpolation=NEAREST, fill=0)], p=0.5),
        v2.RandomHorizontalFlip(0.5),
        v2.RandomVerticalFlip(0.5),
    ])  # fmt: skip


def load_image(path: Path, size: int, jitter=None) -> torch.Tensor:
    """uint8 (3, size, size): any mode to RGB, `jitter` (if any) at the original size, bicubic resize (antialiased)."""
    rgb = _to_rgb(_open(path, "image"))
    if jitter is not None:
        rgb = jitter(rgb)
    rgb = rgb.resize((size, size), Image.Resampling.BICUBIC)
    return torch.from_numpy(np.array(rgb)).permute(2, 0, 1).contiguous()


def read_rgb(path: Path) -> np.ndarray:
    """uint8 (H, W, 3) at the image's own size, any mode made RGB as the model's input is."""
    return np.asarray(_to_rgb(_open(path, "image")))


def read_mask(path: Path) -> np.ndarray:
    """bool (H, W) at the mask's own size: the released rule, grayscale (`convert("L")`) != 0, in every path."""
    return np.asarray(_open(path, "mask").convert("L")) != 0


def load_mask(path: Path, size: int) -> torch.Tensor:
    """uint8 (1, size, size) in {0, 1}: `read_mask`, then a nearest resize."""
    binary = read_mask(path)
    resized = Image.fromarray(binary.astype(np.uint8)).resize((size, size), Image.Resampling.NEAREST)
    return torch.from_numpy(np.array(resized))[None]


def _open(path: Path, kind: str) -> Image.Image:
    """The decoded image; a missing, truncated or unreadable file is an AAClipError naming it."""
    try:
        with Image.open(path) as image:
            image.load()
            return image
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise AAClipError(f"cannot read {kind} {path}: {err}") from err


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB from any mode; 16-bit grayscale is scaled to 8 bits first (PIL would clip it)."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        values = np.asarray(image, dtype=np.float32)
        peak = 65535.0 if image.mode.startswith("I;16") or values.max() > 255 else 255.0
        image = Image.fromarray(np.clip(values / peak * 255.0, 0, 255).round().astype(np.uint8))
    return image.convert("RGB")


def _select_classes(records: list[dict], classes: list[str], path: Path) -> list[dict]:
    present = list(dict.fromkeys(r["class_name"] for r in records))
    unknown = [c for c in classes if c not in present]
    if unknown:
        raise AAClipError(f"{path}: no class {', '.join(map(repr, unknown))}; it has {', '.join(present)}")
    return [r for r in records if r["class_name"] in set(classes)]


def _how_to_make(info: DatasetInfo, shot: int) -> str:
    if shot != -1:
        return f"run 'aaclip shots {info.name} --k {shot}' first"
    if info.made_by:
        return f"run '{info.made_by}' first"
    return f"run 'aaclip prepare {info.name} --root <original tree>' first"
