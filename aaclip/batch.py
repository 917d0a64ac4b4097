"""One image or a batch of them, in anomalib's vocabulary: what the data gives and what a model predicts.

    batch = dataset[0]                           # a Batch of one image, validated
    batch = Batch.collate([dataset[i] ...])      # the DataLoader's collate_fn
    preds = inference.predict(model, dataset)    # the same type, with anomaly_map and pred_score

Data fields are torch tensors (they feed the model); prediction fields are numpy arrays on the
CPU (they feed the metrics and the files). Every field that is present has a leading dimension
B, and `__post_init__` checks that they agree, so a malformed item fails where it is made.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np
import torch

from aaclip.errors import AAClipError

PREDICTION_FIELDS = ("anomaly_map", "pred_score", "raw_map", "raw_score", "level_maps", "level_grids")


@dataclass
class Batch:
    image_path: list[str]  # B
    class_name: list[str]  # B
    gt_label: torch.Tensor | np.ndarray  # (B,) int64, 1 = anomalous
    image: torch.Tensor | None = None  # (B, 3, S, S) float32, normalised with the backbone's mean and std
    gt_mask: torch.Tensor | np.ndarray | None = None  # (B, S, S) bool; all False for a normal image
    anomaly_map: np.ndarray | None = None  # (B, S, S) float32: the normalised map (book:method-normalisation)
    pred_score: np.ndarray | None = None  # (B,) float32: the normalised image score
    raw_map: np.ndarray | None = None  # (B, S, S) float32: summed level maps before normalisation (book:method-scoring)
    raw_score: np.ndarray | None = None  # (B,) float32: (cos(det, t_abnormal) + 1) / 2
    level_maps: np.ndarray | None = None  # (B, L, S, S) float32: each level's blurred, upsampled map
    level_grids: np.ndarray | None = None  # (B, L, g, g) float32: each level's blurred map on the patch grid

    def __post_init__(self):
        n = len(self.image_path)
        if len(self.class_name) != n or len(self.gt_label) != n:
            raise AAClipError(
                f"a batch needs one image_path, class_name and gt_label per image: "
                f"got {n}, {len(self.class_name)} and {len(self.gt_label)}"
            )
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name not in ("image_path", "class_name") and value is not None and len(value) != n:
                raise AAClipError(f"batch field {f.name} has {len(value)} entries for {n} images ({self.image_path[:2]}...)")
        if self.image is not None and (self.image.dim() != 4 or self.image.shape[1] != 3):
            raise AAClipError(f"image must be (B, 3, S, S), got {tuple(self.image.shape)} for {self.image_path[0]}")
        if self.image is not None and self.gt_mask is not None and tuple(self.gt_mask.shape[1:]) != tuple(self.image.shape[2:]):
            raise AAClipError(
                f"gt_mask {tuple(self.gt_mask.shape)} does not match image {tuple(self.image.shape)} for {self.image_path[0]}"
            )

    def __len__(self) -> int:
        return len(self.image_path)

    @staticmethod
    def collate(items: list["Batch"]) -> "Batch":
        """Items of a Dataset (each a Batch) -> one Batch: tensors concatenated, lists joined."""
        joined = {}
        for f in fields(Batch):
            values = [getattr(item, f.name) for item in items]
            if all(v is None for v in values):
                joined[f.name] = None
            elif f.name in ("image_path", "class_name"):
                joined[f.name] = [v for part in values for v in part]
            elif isinstance(values[0], torch.Tensor):
                joined[f.name] = torch.cat(values)
            else:
                joined[f.name] = np.concatenate(values)
        return Batch(**joined)

    def select(self, indices) -> "Batch":
        """The images at `indices` (a list of positions or a boolean mask)."""
        index = np.flatnonzero(indices) if np.asarray(indices).dtype == bool else np.asarray(indices, dtype=np.int64)
        picked = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                picked[f.name] = None
            elif isinstance(value, list):
                picked[f.name] = [value[i] for i in index]
            elif isinstance(value, torch.Tensor):
                picked[f.name] = value[torch.from_numpy(index)]
            else:
                picked[f.name] = value[index]
        return Batch(**picked)

    def of_class(self, class_name: str) -> "Batch":
        return self.select(np.asarray(self.class_name) == class_name)

    def replace(self, **changes) -> "Batch":
        return replace(self, **changes)

    def labels(self) -> np.ndarray:
        return np.asarray(self.gt_label, dtype=np.int64)

    def masks(self) -> np.ndarray:
        """gt_mask as a numpy bool array (B, S, S)."""
        mask = self.gt_mask.numpy() if isinstance(self.gt_mask, torch.Tensor) else np.asarray(self.gt_mask)
        return mask.astype(bool)
