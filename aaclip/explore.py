"""The heatmap explorer: AA-CLIP's maps beside plain CLIP's, per image, to compare and to find failures.

    data = load_explorer(["runs/x/results/MVTec/AA-CLIP-transductive"],       # `aaclip test --save-predictions`
                         baseline=["runs/clip/MVTec"], cfg=Config().explore)  # the plain-CLIP run, optional
    html = static_page(data)     # self-contained: pictures, level grids, a canvas and explore.js (no kernel)
    view = widget(data)          # ipywidgets whose controls are linked in the browser (no kernel needed)

Everything is read from saved predictions (their level grids, scores and ground truth) and the
test images on disk: nothing is recomputed by the model. What is shown (book:protocol-explorer):

- the image with its ground-truth outline (white) and the predicted region at a pixel threshold
  (yellow), with that image's pixel precision, recall and IoU at the display resolution;
- AA-CLIP's fused map, plain CLIP's, and AA-CLIP's level maps, on one colour scale with its bar:
  "as scored" (the map the metrics use, under the transductive or the inductive normalisation of
  book:method-normalisation, on [0, 1]) or "raw" (the level similarity (S_abnormal - S_normal + 1) / 2;
  a fused map shown as the mean over levels);
- each method's image score, its class's F1-max threshold and the label it gives;
- the images of a class ordered by score, by label, or with the most wrong first (false positives
  and false negatives at the class threshold, the furthest from it first).

A class's images in the page are a sample (`ExploreConfig.per_class`): the most wrong first, then a
spread over the scores; both views fit the page budget by dropping the last-chosen images.
"""

from __future__ import annotations

import base64
import html as html_lib
import io
import json
import math
import uuid
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from aaclip.errors import AAClipError

METHODS = ("AA-CLIP", "CLIP")
MODES = ("transductive", "inductive")  # book:method-normalisation
COLOURS = ("scored", "raw")
ORDERS = ("score", "label", "most wrong")
COLOUR_TITLES = {"scored": "normalised as scored", "raw": "raw level similarity"}
WIDGET_STEPS = (-0.2, -0.1, 0.0, 0.1, 0.2)  # the widget's threshold steps: offsets from the class's F1-max


# ---------------------------------------------------------------------------------- data
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


# ---------------------------------------------------------------------------------- what is shown
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


# ---------------------------------------------------------------------------------- encodings
def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def data_uri(pixels: np.ndarray, photo: bool = False) -> str:
    """A data URI: JPEG for photos larger than 128 px (smaller), PNG otherwise (exact)."""
    if photo and max(pixels.shape[:2]) > 128:
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=88)
        return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()
    return "data:image/png;base64," + base64.b64encode(png_bytes(pixels)).decode()


def quantised(grid: np.ndarray) -> dict:
    """One method's (L, g, g) grids as uint16 per level over its own range, base64 (little-endian)."""
    lo, hi = grid.min(axis=(1, 2)), grid.max(axis=(1, 2))
    scale = np.where(hi > lo, hi - lo, 1.0)
    q = np.round((grid - lo[:, None, None]) / scale[:, None, None] * 65535).astype("<u2")
    return {"g": int(grid.shape[-1]), "lo": lo.astype(float).tolist(), "hi": hi.astype(float).tolist(),
            "data": base64.b64encode(q.tobytes()).decode()}


def static_entry(image: ExploredImage) -> dict:
    """The image as the static page carries it (cached: its size counts against the budget)."""
    if "static" not in image.cache:
        h, w = image.gt_mask.shape
        image.cache["static"] = {
            "name": image.name, "label": image.gt_label, "w": w, "h": h,
            "picture": data_uri(image.picture, photo=True),
            "mask": data_uri(image.gt_mask.astype(np.uint8) * 255),
            "grids": {m: quantised(g) for m, g in image.grids.items()},
            "score": image.pred_score,
        }
    return image.cache["static"]


def entry_bytes(entry) -> int:
    return len(json.dumps(entry))


# ---------------------------------------------------------------------------------- the budget
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


# ---------------------------------------------------------------------------------- the static page
def static_payload(data: ExplorerData) -> dict:
    import matplotlib

    jet = (matplotlib.colormaps["jet"](np.linspace(0, 1, 256))[:, :3] * 255 + 0.5).astype(int).tolist()
    classes = []
    for cls in data.classes:
        classes.append({
            "title": cls.title, "domain": cls.domain, "levels": cls.n_levels, "n_images": cls.n_images,
            "raw_range": cls.raw_range, "level_range": cls.level_range, "raw_colours": cls.raw_colour_range(data.methods),
            "image_threshold": _json_floats(cls.image_threshold), "pixel_threshold": _json_floats(cls.pixel_threshold),
            "images": [static_entry(im) for im in cls.images],
        })  # fmt: skip
    return {"methods": data.methods, "modes": list(MODES), "orders": list(ORDERS), "colours": COLOUR_TITLES,
            "jet": jet, "classes": classes}


def _json_floats(nested: dict) -> dict:
    return {k: {m: (None if v != v else v) for m, v in d.items()} for k, d in nested.items()}


def static_html(data: ExplorerData) -> str:
    """The static view: a self-contained HTML block (no kernel, no network); explore.js draws everything."""
    uid = "aaclip-explorer-" + uuid.uuid4().hex[:8]
    script = resources.files("aaclip").joinpath("explore.js").read_text()
    payload = json.dumps(static_payload(data), separators=(",", ":"))
    return (f'<div class="aaclip-explorer" id="{uid}"></div>\n'
            f'<script type="application/json" id="{uid}-data">{payload}</script>\n'
            f"<script>{script}\naaclipExplorer(document.getElementById({json.dumps(uid)}));</script>\n")


def static_page(data: ExplorerData, title: str = "AA-CLIP heatmap explorer") -> str:
    """A whole HTML page around `static_html` (what `aaclip explore` writes)."""
    note = (f"{data.n_images} images of {len(data.classes)} classes from {', '.join(map(html_lib.escape, data.sources))}"
            + (f"; {data.dropped} more left out to keep the page within its budget" if data.dropped else ""))
    return (f"<!doctype html>\n<html><head><meta charset='utf-8'><title>{html_lib.escape(title)}</title></head>"
            f"<body style='font-family:sans-serif'><h1>{html_lib.escape(title)}</h1><p>{note}</p>\n"
            f"{static_html(data)}</body></html>\n")


# ---------------------------------------------------------------------------------- the widget view
GAP = 4  # pixels between the panels of a map row


def widget_panels(cls: ExploredClass, image: ExploredImage, methods) -> dict:
    """Every picture the widget view can show for one image, pre-drawn (cached): the image with its
    ground truth, the predicted outline at each threshold step with that step's pixel scores, and for
    each colour and mode one map row (each method's fused map, then AA-CLIP's levels, 2 x 2 at half size)."""
    if "widget" in image.cache:
        return image.cache["widget"]
    picture = image.picture.copy()
    picture[region_outline(image.gt_mask)] = 255
    panels = {"picture": png_bytes(titled(picture, ["image"], [picture.shape[1]])), "outline": {}, "metrics": {},
              "maps": {}}
    for mode in MODES:
        fused, _ = shown_maps(cls, image, "AA-CLIP", "scored", mode)
        base = cls.pixel_threshold["AA-CLIP"][mode]
        panels["outline"][mode], panels["metrics"][mode] = [], []
        for step in WIDGET_STEPS:
            t = float(np.clip((base if base == base else 0.5) + step, 0.01, 0.99))
            region = fused >= t
            rgba = np.zeros((TITLE_HEIGHT + region.shape[0], region.shape[1], 4), np.uint8)
            rgba[TITLE_HEIGHT:][region_outline(region)] = (255, 220, 0, 255)  # below the picture's title strip
            panels["outline"][mode].append(png_bytes(rgba))
            panels["metrics"][mode].append((t, pixel_scores(region, image.gt_mask)))
    for colour in COLOURS:
        for mode in (MODES if colour == "scored" else MODES[:1]):
            panels["maps"][(colour, mode)] = png_bytes(map_row(cls, image, methods, colour, mode))
    image.cache["widget"] = panels
    return panels


def map_row(cls: ExploredClass, image: ExploredImage, methods, colour: str, mode: str) -> np.ndarray:
    """uint8 (TITLE_HEIGHT + H, W', 3): each method's fused map, then AA-CLIP's level maps 2 x 2 at half
    size, on one jet scale, white gaps between them and their titles above."""
    import matplotlib

    vmin, vmax = colour_range(cls, colour, methods)
    h, w = image.gt_mask.shape

    def levels_of(m):
        return (1 + np.round(254 * np.clip((m - vmin) / max(vmax - vmin, 1e-12), 0, 1))).astype(np.uint8)

    fused = {method: shown_maps(cls, image, method, colour, mode) for method in methods}
    half_h, half_w = (h - GAP // 2) // 2, (w - GAP // 2) // 2
    levels = np.zeros((h, w), np.uint8)
    for k, m in enumerate(fused["AA-CLIP"][1][:4]):
        small = np.asarray(Image.fromarray(m.astype(np.float32), mode="F").resize((half_w, half_h), Image.BILINEAR))
        y, x = (k // 2) * (h - half_h), (k % 2) * (w - half_w)
        levels[y:y + half_h, x:x + half_w] = levels_of(small)
    parts = [levels_of(fused[method][0]) for method in methods] + [levels]
    gap = np.zeros((h, GAP), np.uint8)
    row = np.concatenate([p for part in parts for p in (part, gap)][:-1], axis=1)
    jet = (matplotlib.colormaps["jet"](np.linspace(0, 1, 255))[:, :3] * 255 + 0.5).astype(np.uint8)
    palette = np.concatenate([np.full((1, 3), 255, np.uint8), jet])
    return titled(palette[row], [*methods, "AA-CLIP levels"], [w + GAP] * len(methods) + [w])


TITLE_HEIGHT = 14  # pixels of the title strip above each widget picture


def titled(pixels: np.ndarray, titles: list[str], widths: list[int]) -> np.ndarray:
    """uint8 (H, W, 3) with a white strip on top holding each title at its panel's left edge."""
    from PIL import ImageDraw, ImageFont

    canvas = Image.new("RGB", (pixels.shape[1], TITLE_HEIGHT + pixels.shape[0]), "white")
    canvas.paste(Image.fromarray(pixels), (0, TITLE_HEIGHT))
    draw, font, x = ImageDraw.Draw(canvas), ImageFont.load_default(size=11), 0
    for title, width in zip(titles, widths):
        draw.text((x + 1, 1), title, fill="black", font=font)
        x += width
    return np.asarray(canvas)


def widget(data: ExplorerData, per_class: int = 3):
    """ipywidgets over the first `per_class` images of each class: every control is linked in the browser
    (jslink and Stack), so the view works the same in Jupyter and in the static book, without a kernel."""
    methods, kit = data.methods, Kit()
    classes = kit.make("Dropdown", options=[(c.title, i) for i, c in enumerate(data.classes)], description="class")
    mode = kit.make("ToggleButtons", options=list(MODES), description="scores")
    colour = kit.make("ToggleButtons", options=[COLOUR_TITLES[c] for c in COLOURS], description="colours")
    panels = [class_panel(cls, cls.images[:per_class], methods, mode, colour, kit) for cls in data.classes]
    view = kit.make("VBox", [kit.make("HBox", [classes, mode]), colour, kit.linked(panels, classes)])
    view.add_class("aaclip-explorer-widget")
    return view


class Kit:
    """Makes the widget view's widgets with shared Layout and style models, one per distinct setting:
    a saved widget state stores every model in full, and thousands of identical empty layouts would
    otherwise outweigh the pictures."""

    STYLES = {"Dropdown": "description", "ToggleButtons": "toggle", "IntSlider": "slider",
              "SelectionSlider": "slider", "HTML": "html"}

    def __init__(self):
        self.layouts, self.styles = {}, {}

    def layout(self, **settings):
        import ipywidgets as w

        key = tuple(sorted(settings.items()))
        if key not in self.layouts:  # (not setdefault: that would make a Layout model on every call)
            self.layouts[key] = w.Layout(**settings)
        return self.layouts[key]

    def style(self, kind: str):
        import ipywidgets as w
        from ipywidgets.widgets.widget_description import DescriptionStyle
        from ipywidgets.widgets.widget_string import HTMLStyle

        if kind not in self.styles:
            make = {"description": DescriptionStyle, "toggle": w.ToggleButtonsStyle, "slider": w.SliderStyle,
                    "html": HTMLStyle}[kind]
            self.styles[kind] = make(**({"description_width": "90px"} if kind != "html" else {}))
        return self.styles[kind]

    def make(self, kind: str, *args, layout=None, **kwargs):
        import ipywidgets as w

        if kind in self.STYLES:
            kwargs["style"] = self.style(self.STYLES[kind])
        return getattr(w, kind)(*args, layout=layout or self.layout(), **kwargs)

    def linked(self, children, control, trait: str = "index", start: int = 0):
        """A Stack of `children` showing the one `control.trait` selects, linked in the browser."""
        import ipywidgets as w

        stack = self.make("Stack", children, selected_index=start)
        w.jslink((control, trait), (stack, "selected_index"))
        return stack


def class_panel(cls: ExploredClass, images: list[ExploredImage], methods, mode, colour, kit: Kit):
    steps = [f"{s:+.2f}" if s else "F1-max" for s in WIDGET_STEPS]
    threshold = kit.make("SelectionSlider", options=steps, value="F1-max", description="pixel thr.")
    shown = ExploredClass(**{**cls.__dict__, "images": images})
    views = [image_panel(cls, image, methods, mode, colour, threshold, kit) for image in images]
    orders = []
    for order in ORDERS:
        sequence = display_order(shown, order, "transductive")
        slider = kit.make("IntSlider", min=0, max=max(len(views) - 1, 0), description="image")
        orders.append(kit.make("VBox", [slider, kit.linked([views[i] for i in sequence], slider, "value")]))
    order = kit.make("ToggleButtons", options=list(ORDERS), description="order by")
    height = max(im.gt_mask.shape[0] for im in images) * zoom_of(images[0])
    bars = []
    for c in COLOURS:
        bar = colour_bar_pixels(cls, c, methods, height)
        size = kit.layout(width=f"{bar.shape[1]}px", height=f"{bar.shape[0]}px")
        bars.append(kit.make("Image", value=png_bytes(bar), format="png", layout=size))
    bars = kit.linked(bars, colour)
    bars.add_class("aaclip-colour-bar")
    note = kit.make("HTML", f"<small>{len(images)} of the class's {cls.n_images} test images (the most wrong first, "
                            "then a spread over the scores); the threshold steps are offsets from the class's pixel "
                            "F1-max threshold</small>")
    return kit.make("VBox", [kit.make("HBox", [order, threshold]),
                             kit.make("HBox", [kit.linked(orders, order), bars]), note])


def zoom_of(image: ExploredImage) -> int:
    return max(1, 120 // max(image.gt_mask.shape))


def image_panel(cls, image, methods, mode, colour, threshold, kit: Kit):
    """One image: the picture with its outlines, the map row, and the scores with the pixel scores."""
    panels = widget_panels(cls, image, methods)
    h, w = image.gt_mask.shape
    zoom = zoom_of(image)
    h += TITLE_HEIGHT
    size = kit.layout(width=f"{zoom * w}px", height=f"{zoom * h}px", grid_area="a")
    row_width = (len(methods) + 1) * w + len(methods) * GAP
    row = kit.layout(width=f"{zoom * row_width}px", height=f"{zoom * h}px")

    def png(value, layout):
        return kit.make("Image", value=value, format="png", layout=layout)

    def by_threshold(children):
        return kit.linked(children, threshold, start=WIDGET_STEPS.index(0.0))

    outlines = kit.linked([by_threshold([png(b, size) for b in panels["outline"][m]]) for m in MODES], mode)
    outlines.layout = kit.layout(grid_area="a")  # the picture's grid cell: the outline lies on the picture
    picture = kit.make("GridBox", [png(panels["picture"], size), outlines],
                       layout=kit.layout(grid_template_areas='"a"'))  # one cell: the outline lies on the picture
    picture.add_class("aaclip-picture")
    maps = kit.linked([kit.linked([png(panels["maps"][("scored", m)], row) for m in MODES], mode),
                       png(panels["maps"][("raw", MODES[0])], row)], colour)
    maps.add_class("aaclip-maps")
    texts = [[kit.make("HTML", "<br>".join([html_lib.escape(x) for x in [image.name, *score_lines(cls, image, methods, m)]]
                                             + [_metric_text(t, s)])) for t, s in panels["metrics"][m]] for m in MODES]
    text = kit.linked([by_threshold(per_mode) for per_mode in texts], mode)
    return kit.make("VBox", [kit.make("HBox", [picture, maps]), text])


def _metric_text(t: float, s: dict) -> str:
    def f(v):
        return "undefined" if v != v else f"{v:.2f}"

    return (f"pixel threshold {t:.2f}: precision {f(s['precision'])}, recall {f(s['recall'])}, IoU {f(s['iou'])} "
            "<small>(yellow: predicted region; white: ground truth)</small>")


def widget_state_bytes(view) -> int:
    """The size of the saved widget state of a view and every model it depends on (links included)."""
    from ipywidgets.embed import dependency_state

    return len(json.dumps(dependency_state([view], drop_defaults=False)))


def close_widget(view) -> None:
    """Close every model a view depends on, so that a discarded view does not enter the saved state."""
    import ipywidgets as w
    from ipywidgets.embed import dependency_state

    for model_id in dependency_state([view]):
        widget = w.Widget.widgets.get(model_id)
        if widget is not None:
            widget.close()


def colour_bar_pixels(cls: ExploredClass, colour: str, methods, height: int) -> np.ndarray:
    from aaclip.viz import colour_bar

    vmin, vmax = colour_range(cls, colour, methods)
    return colour_bar(height, vmin, vmax, label={"scored": "as scored", "raw": "raw"}[colour], font_size=11)
