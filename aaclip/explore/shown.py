"""What a view shows, from the data: the maps in display units, the colour scale, the predicted region
and its pixel scores, the image order and the score lines. explore.js computes the same, in the page."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from aaclip.explore.data import ExploredClass, ExploredImage

COLOURS = ("scored", "raw")
ORDERS = ("score", "label", "most wrong")
COLOUR_TITLES = {"scored": "normalised as scored", "raw": "raw level similarity"}


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def upsample(grids: np.ndarray, height: int, width: int) -> np.ndarray:
    """(L, g, g) -> (L, H, W): bilinear, align_corners=True, as `scoring.fuse_levels` upsamples (explore.js too)."""
    up = F.interpolate(torch.from_numpy(grids)[None], size=(height, width), mode="bilinear", align_corners=True)
    return up[0].numpy()


def shown_maps(cls: ExploredClass, image: ExploredImage, method: str, colour: str, mode: str):
    """(fused (H, W), levels (L, H, W)) in display units: "scored" under `mode` on [0, 1], or "raw"."""
    h, w = image.gt_mask.shape
    levels = upsample(image.grids[method], h, w)
    raw, n = levels.sum(axis=0), cls.n_levels
    if colour == "raw":
        return raw / n, levels
    if mode == "transductive":
        lo, hi = cls.raw_range[method]
        fused = (raw - lo) / max(hi - lo, 1e-12)
        ranges = cls.level_range[method]
        levels = np.stack([(m - a) / max(b - a, 1e-12) for m, (a, b) in zip(levels, ranges)])
        return np.clip(fused, 0, 1), np.clip(levels, 0, 1)
    return sigmoid(2 * (raw - n / 2) / n), sigmoid(2 * (levels - 0.5))


def colour_range(cls: ExploredClass, colour: str, methods) -> tuple[float, float]:
    return (0.0, 1.0) if colour == "scored" else cls.raw_colour_range(methods)


def region_outline(region: np.ndarray) -> np.ndarray:
    """`viz.mask_outline` with the outside of the picture counted as outside the region: a region that
    fills the picture is outlined along its border (explore.js draws the same)."""
    from aaclip.viz import mask_outline

    return mask_outline(np.pad(region, 1))[1:-1, 1:-1]


def pixel_scores(predicted: np.ndarray, truth: np.ndarray) -> dict:
    """Precision, recall and IoU of one image's predicted region (nan where undefined)."""
    tp = float(np.logical_and(predicted, truth).sum())
    union = float(np.logical_or(predicted, truth).sum())
    return {"precision": tp / predicted.sum() if predicted.any() else math.nan,
            "recall": tp / truth.sum() if truth.any() else math.nan,
            "iou": tp / union if union else math.nan}


def display_order(cls: ExploredClass, order: str, mode: str) -> list[int]:
    """Indices into cls.images: by AA-CLIP's score (highest first), by label (anomalous first, then by
    score), or the most wrong at the class threshold first (then the rest by score)."""
    scores = np.array([im.pred_score["AA-CLIP"][mode] for im in cls.images])
    labels = np.array([im.gt_label for im in cls.images])
    by_score = list(np.argsort(-scores, kind="stable"))
    if order == "score":
        return [int(i) for i in by_score]
    if order == "label":
        return [int(i) for i in sorted(by_score, key=lambda i: -labels[i])]
    t = cls.image_threshold["AA-CLIP"][mode]
    wrongness = [(abs(scores[i] - t) if t == t and bool(labels[i]) != (scores[i] >= t) else -1.0) for i in by_score]
    return [int(i) for _, i in sorted(zip(wrongness, by_score), key=lambda p: -p[0])]


def score_lines(cls: ExploredClass, image: ExploredImage, methods, mode: str) -> list[str]:
    """"AA-CLIP 0.71 >= 0.64 (F1-max): anomalous, right" for each method; then the truth."""
    truth = "anomalous" if image.gt_label else "normal"
    lines = []
    for method in methods:
        score, t = image.pred_score[method][mode], cls.image_threshold[method][mode]
        if t != t:
            lines.append(f"{method} {score:.3f} (no threshold: the class has one label only)")
            continue
        label = "anomalous" if score >= t else "normal"
        verdict = "right" if label == truth else ("false positive" if label == "anomalous" else "false negative")
        lines.append(f"{method} {score:.3f} {'>=' if score >= t else '<'} {t:.3f} (F1-max): {label}, {verdict}")
    return lines + [f"truth: {truth}"]
