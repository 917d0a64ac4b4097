"""What the explorer reads and chooses: saved predictions, per class the statistics every view needs,
each class's sample of images, and the page budget (book:protocol-explorer)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from aaclip.errors import AAClipError
from aaclip.explore.shown import sigmoid

METHODS = ("AA-CLIP", "CLIP")
MODES = ("transductive", "inductive")  # book:method-normalisation


@dataclass
class ExploredImage:
    image_path: str
    gt_label: int
    picture: np.ndarray  # (H, W, 3) uint8, the longer side at most display_size, the image's own aspect
    gt_mask: np.ndarray  # (H, W) bool: the mask the metrics used, nearest-resized
    grids: dict[str, np.ndarray]  # method -> (L, g, g) float32: the blurred level grids (book:method-scoring)
    pred_score: dict[str, dict[str, float]]  # method -> normalisation -> image score
    cache: dict = field(default_factory=dict, repr=False)  # encoded payloads (their sizes set the budget)

    @property
    def name(self) -> str:
        return Path(self.image_path).name


@dataclass
class ExploredClass:
    dataset: str
    class_name: str
    domain: str
    n_levels: int
    n_images: int  # the class's test images (the page shows a sample of them)
    raw_range: dict[str, tuple[float, float]]  # method -> min, max of the raw fused map over the class
    level_range: dict[str, list[tuple[float, float]]]  # method -> per level, the same
    image_threshold: dict[str, dict[str, float]]  # method -> normalisation -> F1-max threshold (nan: one label)
    pixel_threshold: dict[str, dict[str, float]]  # method -> normalisation -> F1-max threshold of the map
    images: list[ExploredImage]  # in the order chosen: the most wrong first, then a spread over the scores

    @property
    def title(self) -> str:
        return f"{self.dataset} / {self.class_name}"

    def raw_colour_range(self, methods) -> tuple[float, float]:
        """One raw scale for everything the class shows: fused maps as level means, and the levels."""
        lows = [self.raw_range[m][0] / self.n_levels for m in methods] + [lo for lo, _ in self.level_range["AA-CLIP"]]
        highs = [self.raw_range[m][1] / self.n_levels for m in methods] + [hi for _, hi in self.level_range["AA-CLIP"]]
        return float(min(lows)), float(max(highs))


@dataclass
class ExplorerData:
    classes: list[ExploredClass]
    methods: list[str]  # "AA-CLIP", and "CLIP" when its predictions were given
    sources: list[str]  # the predictions files read
    dropped: int = 0  # images left out to keep the page within its budget

    @property
    def n_images(self) -> int:
        return sum(len(c.images) for c in self.classes)


def load_explorer(results, baseline=(), cfg=None, progress: bool = False) -> ExplorerData:
    """The explorer over test runs: each of `results` a folder (or predictions.npz) written by `aaclip test
    --save-predictions` for AA-CLIP; `baseline` the same for plain CLIP on the same datasets (optional)."""
    from tqdm.auto import tqdm

    from aaclip.config import ExploreConfig

    cfg = cfg or ExploreConfig()
    runs = [_read(path) for path in results]
    clip = {index["dataset"]: (batch, index, path) for batch, index, path in map(_read, baseline)}
    for _, index, path in runs:
        if index["method"] != "AA-CLIP":
            raise AAClipError(f"{path}: predictions of {index['method']}, expected AA-CLIP's (plain CLIP goes in baseline)")
    for name, (_, index, path) in clip.items():
        if index["method"] != "CLIP":
            raise AAClipError(f"{path}: predictions of {index['method']}, expected plain CLIP's")
    classes = []
    for batch, index, path in runs:
        other = clip.get(index["dataset"])
        names = list(dict.fromkeys(batch.class_name))
        for class_name in tqdm(names, desc=f"explorer {index['dataset']}", disable=not progress, leave=False):
            classes.append(explore_class(batch, index, path, class_name, other, cfg))
    methods = ["AA-CLIP", "CLIP"] if runs and all(r[1]["dataset"] in clip for r in runs) else ["AA-CLIP"]
    return ExplorerData(classes, methods, [str(p) for *_, p in runs] + [str(p) for *_, p in clip.values()])


def _read(path):
    from aaclip.runs.evaluate import load_predictions

    path = Path(path)
    file = path / "predictions.npz" if path.is_dir() else path
    batch, index = load_predictions(file, maps=False)
    return batch, index, file


def explore_class(batch, index, path, class_name, other, cfg) -> ExploredClass:
    """One class: the statistics every view needs (ranges, thresholds, both normalisations' scores) over all
    its test images, and the chosen sample with its pictures."""
    rows = [i for i, c in enumerate(batch.class_name) if c == class_name]
    sources = {"AA-CLIP": (batch, index, path, rows)}
    if other is not None:
        clip_batch, clip_index, clip_path = other
        where = {p: i for i, p in enumerate(clip_batch.image_path)}
        missing = [batch.image_path[i] for i in rows if batch.image_path[i] not in where]
        if missing:
            raise AAClipError(f"{clip_path}: no plain-CLIP prediction for {missing[0]} (and {len(missing) - 1} more) "
                              f"of {path}: test both on the same dataset")
        sources["CLIP"] = (clip_batch, clip_index, clip_path, [where[batch.image_path[i]] for i in rows])
    stats = {method: class_statistics(*source) for method, source in sources.items()}
    labels = batch.labels()[rows]
    reference = stats["AA-CLIP"]
    chosen = choose_images(reference["scores"]["transductive"], labels, reference["image_threshold"]["transductive"],
                           cfg.per_class)
    images = [explored_image(batch, rows[k], k, stats, cfg.display_size) for k in chosen]
    return ExploredClass(
        dataset=index["dataset"], class_name=class_name, domain=index["domain"], n_levels=index["n_levels"],
        n_images=len(rows), raw_range={m: s["raw_range"] for m, s in stats.items()},
        level_range={m: s["level_range"] for m, s in stats.items()},
        image_threshold={m: s["image_threshold"] for m, s in stats.items()},
        pixel_threshold={m: s["pixel_threshold"] for m, s in stats.items()}, images=images,
    )


def class_statistics(batch, index, path, rows) -> dict:
    """Over one class's test images of one method: raw ranges, both normalisations' scores and F1-max thresholds."""
    from aaclip.metrics import image_metrics, pixel_metrics
    from aaclip.runs.inference import normalized
    from aaclip.scoring import fuse_levels

    part = batch.select(rows)
    grids = torch.from_numpy(part.level_grids)
    size, levels = index["image_size"], index["n_levels"]
    raw = fuse_levels(grids, size).numpy()  # (n, S, S)
    level_range = []
    for level in range(levels):
        up = F.interpolate(grids[:, level:level + 1], size=(size, size), mode="bilinear", align_corners=True)
        level_range.append((float(up.min()), float(up.max())))
    scores, image_threshold, pixel_threshold = {}, {}, {}
    labels = part.labels()
    for mode in MODES:
        scored = normalized(part.replace(raw_map=raw), mode, index["domain"], levels)
        scores[mode] = scored.pred_score.astype(float)
        image_threshold[mode] = image_metrics(scored.pred_score, labels)["image_threshold"]
        if mode == "transductive":
            pixel_threshold[mode] = saved_pixel_threshold(path, part.class_name[0], index) or pixel_metrics(
                scored.anomaly_map, part.masks(), aupro="off")["pixel_threshold"]
    lo, hi = float(raw.min()), float(raw.max())
    t = pixel_threshold["transductive"]  # the same pixels under the other (also monotone) normalisation
    pixel_threshold["inductive"] = float(sigmoid(2 * (lo + t * (hi - lo) - levels / 2) / levels)) if t == t else math.nan
    return {"raw_range": (lo, hi), "level_range": level_range, "scores": scores,
            "image_threshold": image_threshold, "pixel_threshold": pixel_threshold, "batch": batch}


def saved_pixel_threshold(path: Path, class_name: str, index: dict) -> float | None:
    """The transductive pixel F1-max threshold `aaclip test` wrote beside the predictions, if it did."""
    summary = Path(path).parent / "summary.json"
    if index["normalize"] != "transductive" or not summary.is_file():
        return None
    value = json.loads(summary.read_text()).get("thresholds", {}).get(class_name, {}).get("pixel_threshold")
    return None if value is None else float(value)


def choose_images(scores: np.ndarray, labels: np.ndarray, threshold: float, k: int) -> list[int]:
    """Up to k indices: the most wrong at `threshold` first (at most half of k), then an even spread over the
    remaining images' scores (so that both the highest and the lowest are seen)."""
    order = list(np.argsort(-scores, kind="stable"))
    wrong = sorted((i for i in order if threshold == threshold and bool(labels[i]) != (scores[i] >= threshold)),
                   key=lambda i: -abs(scores[i] - threshold))
    chosen = wrong[: (k + 1) // 2]
    rest = [i for i in order if i not in chosen]
    if rest and len(chosen) < k:
        picks = np.linspace(0, len(rest) - 1, min(k - len(chosen), len(rest))).round().astype(int)
        chosen += [rest[p] for p in dict.fromkeys(picks.tolist())]
    return [int(i) for i in chosen]


def explored_image(batch, row: int, k: int, stats: dict, display_size: int) -> ExploredImage:
    from aaclip.data.dataset import read_rgb

    path = batch.image_path[row]
    if not Path(path).is_file():
        raise AAClipError(f"{path}: the test image the predictions name is missing (moved since `aaclip test`?)")
    picture = Image.fromarray(read_rgb(Path(path)))
    scale = min(1.0, display_size / max(picture.size))
    width, height = max(1, round(picture.width * scale)), max(1, round(picture.height * scale))
    picture = np.asarray(picture.resize((width, height), Image.BICUBIC)) if scale < 1 else np.asarray(picture)
    mask = Image.fromarray(batch.masks()[row].astype(np.uint8) * 255).resize((width, height), Image.NEAREST)
    grids, scores = {}, {}
    for method, s in stats.items():
        source = s["batch"]
        source_row = row if method == "AA-CLIP" else source.image_path.index(path)
        grids[method] = source.level_grids[source_row].astype(np.float32)
        scores[method] = {mode: float(s["scores"][mode][k]) for mode in MODES}
    return ExploredImage(path, int(batch.labels()[row]), picture, np.asarray(mask) > 0, grids, scores)


def fit_budget(data: ExplorerData, budget_bytes: float, cost, keep: int = 1) -> ExplorerData:
    """Drop the last-chosen image of the class with the most images until the `cost(image)` sum fits
    (each class keeps at least `keep`); `data.dropped` counts them."""
    total = sum(cost(im) for c in data.classes for im in c.images)
    while total > budget_bytes:
        largest = max(data.classes, key=lambda c: len(c.images))
        if len(largest.images) <= keep:
            break
        total -= cost(largest.images.pop())
        data.dropped += 1
    return data
