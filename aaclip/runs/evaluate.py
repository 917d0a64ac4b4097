"""Evaluation (book:protocol-metrics): a model on a test dataset, per class, with its result files.

    result = evaluate(model, dataset, Method.of_run(run_cfg), cfg.eval, out_dir="results/mvtec")
    result.means["pixel_auroc"], result.per_class["bottle"]["image_auroc"]

Classes are predicted one at a time, so memory holds one class's maps (the normalisation is per
class anyway). With `out_dir`: per_class.csv, summary.json and summary.md, and with
`save_predictions` also predictions.npz (+ .json) for the heatmap explorer.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from aaclip import __version__, metrics
from aaclip.batch import Batch
from aaclip.errors import AAClipError
from aaclip.io import atomic_path, write_json, write_text
from aaclip.metrics import AUPRO_TITLES, METRIC_NAMES, METRIC_TITLES
from aaclip.runs.inference import Method, normalized, predict

PREDICTIONS_FORMAT = "aaclip-predictions/2"
CLASS_PROMPT = "a photo of a {}."  # zero-shot class recognition, CLIP's own protocol


@dataclass
class TestResult:
    """What one evaluation measured: per-class metrics, their means and how they were obtained."""

    __test__ = False  # not a test class, whatever pytest makes of its name

    dataset: str
    method: str  # "AA-CLIP" or "CLIP"
    normalize: str
    aupro: str
    metric_resolution: str
    per_class: dict[str, dict]  # class -> metric name -> value (NaN where undefined), and the F1-max thresholds
    means: dict[str, float]  # unweighted over classes, NaN left out (book:protocol-metrics)
    counts: dict[str, int]  # classes behind each mean
    n_images: int
    seconds: float  # inference wall time (features and scoring)
    device: str
    checkpoint: str | None = None
    has_masks: bool = True  # False: the dataset has no masks, so no pixel metric can be defined
    prompt_names: dict = field(default_factory=dict)  # class -> the name its prompts used
    other: "TestResult | None" = None  # the same predictions under the other normalisation
    images: list[dict] = field(default_factory=list, repr=False)  # one row per image (IMAGE_COLUMNS)
    predictions: Batch | None = field(default=None, repr=False)  # with keep_predictions

    @property
    def n_classes(self) -> int:
        return len(self.per_class)

    def summary(self) -> dict:
        """summary.json's document: the means under the metric names, then everything else."""
        document = {name: _json_float(self.means[name]) for name in METRIC_NAMES}
        document.update(
            counts=dict(self.counts), n_classes=self.n_classes, aupro=self.aupro,
            per_class={c: {n: _json_float(m.get(n, math.nan)) for n in METRIC_NAMES} for c, m in self.per_class.items()},
            thresholds=self.thresholds(), dataset=self.dataset, method=self.method, baseline=self.method == "CLIP",
            normalize=self.normalize, metric_resolution=self.metric_resolution, has_masks=self.has_masks,
            prompt_names=dict(self.prompt_names),
            checkpoint=self.checkpoint, n_images=self.n_images, ms_per_image=1000.0 * self.seconds / max(self.n_images, 1),
            device=self.device, aaclip_version=__version__,
        )  # fmt: skip
        if self.other is not None:
            other = self.other
            document["other_normalization"] = {
                "normalize": other.normalize, "means": {n: _json_float(other.means[n]) for n in METRIC_NAMES},
                "counts": dict(other.counts), "thresholds": other.thresholds(),
            }  # fmt: skip
        return document

    def thresholds(self) -> dict:
        """Per class, the image and pixel F1-max thresholds of these scores (a score at or above is anomalous)."""
        return {c: {k: _json_float(m.get(k, math.nan)) for k in THRESHOLDS} for c, m in self.per_class.items()}


THRESHOLDS = ("image_threshold", "pixel_threshold")
OTHER_NORMALIZATION = {"transductive": "inductive", "inductive": "transductive"}
IMAGE_COLUMNS = ("image_path", "class_name", "gt_label", "pred_score", "pred_label", "threshold", "max_anomaly")
NORMALIZATION_NOTES = {
    "transductive": "min-max per class over all the test images of the class (the released protocol): "
                    "a score depends on the other test images, so it needs the whole test set",
    "inductive": "fixed transforms of each image's own map and score: it scores one image alone, as `aaclip predict` does",
}  # fmt: skip


def evaluate(
    model,
    dataset,
    method: Method,
    eval_cfg,
    out_dir=None,
    save_predictions: bool = False,
    keep_predictions: bool = False,
    checkpoint: str | None = None,
    both_normalizations: bool = False,
    progress: bool = True,
) -> TestResult:
    """Per-class metrics (`aaclip.metrics.evaluate_class`) of `method` on an AnomalyDataset.

    With `both_normalizations`, the same predictions are also measured under the other
    normalisation (`TestResult.other`). With `out_dir`, writes the result files (and
    predictions.npz with `save_predictions`); `keep_predictions` returns the predictions in
    `TestResult.predictions` too.
    """
    model.eval()
    modes = [eval_cfg.normalize] + ([OTHER_NORMALIZATION[eval_cfg.normalize]] if both_normalizations else [])
    per_class = {mode: {} for mode in modes}
    images = {mode: [] for mode in modes}
    parts, timing = [], {"seconds": 0.0}
    for name in dataset.class_names:
        preds = predict(model, dataset.subset(dataset.indices_of(name)), method, eval_cfg, progress, timing)
        for mode in modes:
            mode_preds = preds if mode == eval_cfg.normalize else normalized(preds, mode, dataset.info.domain, len(model.levels))
            anomaly_map, gt_mask = mode_preds.anomaly_map, mode_preds.gt_mask
            if eval_cfg.metric_resolution == "original":
                anomaly_map, gt_mask = original_resolution(mode_preds, dataset)
            values = metrics.evaluate_class(mode_preds.pred_score, mode_preds.gt_label, anomaly_map, gt_mask, eval_cfg.aupro)
            per_class[mode][name] = values
            images[mode] += image_rows(mode_preds, values["image_threshold"])
        if save_predictions or keep_predictions:
            parts.append(preds)
    results = [
        TestResult(
            dataset=dataset.info.name, method=method.name, normalize=mode, aupro=eval_cfg.aupro,
            metric_resolution=eval_cfg.metric_resolution, per_class=per_class[mode],
            **_means(per_class[mode]), n_images=len(dataset), seconds=timing["seconds"], device=str(model.device),
            checkpoint=checkpoint, has_masks=dataset.info.has_masks, images=images[mode],
            prompt_names={c: dataset.info.prompt_names[c] for c in dataset.class_names},
        )  # fmt: skip
        for mode in modes
    ]
    result = results[0]
    result.other = results[1] if both_normalizations else None
    result.predictions = Batch.collate(parts) if parts else None
    if out_dir is not None:
        write_results(out_dir, result)
        if save_predictions:
            save_predictions_file(result.predictions, Path(out_dir) / "predictions.npz", dataset.info.domain,
                                  len(model.levels), result)
    if not keep_predictions:
        result.predictions = None
    return result


def _means(per_class: dict) -> dict:
    summary = metrics.summarize(per_class)
    return {"means": summary["means"], "counts": summary["counts"]}


def image_rows(preds: Batch, threshold: float) -> list[dict]:
    """One row per image: its score, the label at the class's F1-max threshold, and the map's maximum."""
    labels = preds.labels()
    maxima = preds.anomaly_map.reshape(len(preds), -1).max(axis=1)
    rows = []
    for i, (path, class_name) in enumerate(zip(preds.image_path, preds.class_name)):
        score = float(preds.pred_score[i])
        label = "" if threshold != threshold else int(score >= threshold)
        rows.append({"image_path": path, "class_name": class_name, "gt_label": int(labels[i]), "pred_score": score,
                     "pred_label": label, "threshold": threshold, "max_anomaly": float(maxima[i])})
    return rows


@torch.no_grad()
def class_accuracy(clip, tokenizer, dataset, batch_size: int = 64, device="cpu") -> dict:
    """An open_clip model's zero-shot class accuracy on a dataset ("a photo of a {name}."), overall and
    per class: the class knowledge that anomaly unawareness is measured against."""
    import torch.nn.functional as F

    classes = dataset.class_names
    prompts = [CLASS_PROMPT.format(dataset.info.prompt_names[c]) for c in classes]
    text = F.normalize(clip.encode_text(tokenizer(prompts).to(device)).float(), dim=-1)
    predicted, truth = [], []
    for start in range(0, len(dataset), batch_size):
        batch = dataset.batch(range(start, min(start + batch_size, len(dataset))))
        image = F.normalize(clip.encode_image(batch.image.to(device)).float(), dim=-1)
        predicted += (image @ text.T).argmax(1).tolist()
        truth += [classes.index(c) for c in batch.class_name]
    predicted, truth = torch.tensor(predicted), torch.tensor(truth)
    per_class = {c: float((predicted[truth == i] == i).float().mean()) for i, c in enumerate(classes)}
    return {"accuracy": float((predicted == truth).float().mean()), "per_class": per_class, "images": len(truth)}


def unawareness(model, dataset, eval_cfg, progress: bool = False) -> dict:
    """The paper's premise measured on a target set with plain CLIP (no adapters): it knows the classes
    (zero-shot accuracy), its normal and abnormal anchors nearly coincide (their mean cosine), and the
    maps and scores built from them are near chance (image and pixel AUROC) (book:protocol-miniature)."""
    from dataclasses import replace

    from aaclip.prompts import anchor_cosines
    from aaclip.runs.inference import BASELINE, anchors_for

    names = [dataset.info.prompt_names[c] for c in dataset.class_names]
    accuracy = class_accuracy(model.clip, model.backbone.tokenizer, dataset, eval_cfg.batch_size, model.device)
    cosine = anchor_cosines(anchors_for(model, BASELINE, names, eval_cfg.precision)).mean()
    tested = evaluate(model, dataset, BASELINE, replace(eval_cfg, aupro="off"), progress=progress)
    return {
        "class_accuracy": accuracy["accuracy"],
        "chance_accuracy": 1.0 / len(dataset.class_names),
        "anchor_cosine": float(cosine),
        "baseline_image_auroc": tested.means["image_auroc"],
        "baseline_pixel_auroc": tested.means["pixel_auroc"],
    }


def original_resolution(preds: Batch, dataset) -> tuple[np.ndarray, np.ndarray]:
    """Maps resized (bilinear) to each image's original mask size, masks read unresized (book:protocol-metrics)."""
    import torch.nn.functional as F
    from PIL import Image

    from aaclip.data.dataset import read_mask

    by_path = {str(dataset.root / r["image_path"]): r for r in dataset.records}
    maps, masks = [], []
    for anomaly_map, path in zip(preds.anomaly_map, preds.image_path):
        record = by_path[path]
        with Image.open(path) as image:
            width, height = image.size
        if record.get("mask_path"):
            mask = read_mask(dataset.root / record["mask_path"])  # the one mask rule, as the dataset reads it
        else:
            mask = np.zeros((height, width), dtype=bool)
        resized = F.interpolate(
            torch.from_numpy(anomaly_map)[None, None], size=mask.shape, mode="bilinear", align_corners=True
        )
        maps.append(resized[0, 0].numpy())
        masks.append(mask)
    shapes = sorted({m.shape for m in masks})
    if len(shapes) > 1:
        raise AAClipError(
            f"metric_resolution='original' needs one image size per class; {preds.class_name[0]} has {shapes[:3]}... "
            "use metric_resolution='input' (the released protocol)"
        )
    return np.stack(maps), np.stack(masks)


# ---------------------------------------------------------------------------------- result files
def write_results(out_dir, result: TestResult) -> dict[str, Path]:
    """per_class.csv, summary.json, summary.md (read it first) and predictions.csv (one row per image) in
    out_dir, each atomically; all rendered before any file is touched."""
    texts = {
        "per_class.csv": _per_class_csv(result),
        "summary.json": json.dumps(result.summary(), indent=2, allow_nan=False) + "\n",
        "summary.md": _markdown(result),
        "predictions.csv": _images_csv(result),
    }
    out_dir = Path(out_dir)
    return {name: write_text(out_dir / name, text) for name, text in texts.items()}


def _json_float(value) -> float | None:
    value = float(value)
    return None if math.isnan(value) else value


def _per_class_csv(result: TestResult) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["class_name", *METRIC_NAMES])
    for name, values in result.per_class.items():
        writer.writerow([name, *(repr(float(values.get(m, math.nan))) for m in METRIC_NAMES)])
    writer.writerow(["mean", *(repr(float(result.means[m])) for m in METRIC_NAMES)])
    return buffer.getvalue()


def _images_csv(result: TestResult) -> str:
    """Per image: the primary normalisation's score and label, then the other's (when measured)."""
    other = {row["image_path"]: row for row in (result.other.images if result.other else [])}
    columns = list(IMAGE_COLUMNS)
    if result.other is not None:
        mode = result.other.normalize
        columns += [f"{mode}_pred_score", f"{mode}_pred_label", f"{mode}_threshold"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in result.images:
        extra = other.get(row["image_path"], {})
        if result.other is not None:
            mode = result.other.normalize
            row = {**row, f"{mode}_pred_score": extra.get("pred_score"), f"{mode}_pred_label": extra.get("pred_label"),
                   f"{mode}_threshold": extra.get("threshold")}
        writer.writerow({k: "" if v is None or v != v else v for k, v in row.items()})
    return buffer.getvalue()


def _percent(value) -> str:
    value = float(value)
    return "–" if math.isnan(value) else f"{100 * value:.1f}"


def _metric_table(per_class: dict[str, dict], means: dict, counts: dict, aupro: str) -> list[str]:
    titles = [METRIC_TITLES[m] if m != "pixel_aupro" else AUPRO_TITLES[aupro] for m in METRIC_NAMES]
    rows = ["| class | " + " | ".join(titles) + " |", "|---|" + "---:|" * len(titles)]
    for name, values in per_class.items():
        rows.append(f"| {name} | " + " | ".join(_percent(values.get(m, math.nan)) for m in METRIC_NAMES) + " |")
    n = len(per_class)
    rows.append("| **mean** | " + " | ".join(f"**{_percent(means[m])}**" for m in METRIC_NAMES) + " |")
    rows.append("| classes in mean | " + " | ".join(f"{counts[m]}/{n}" for m in METRIC_NAMES) + " |")
    return rows


def _markdown(result: TestResult) -> str:
    """summary.md: what was measured, the per-class table, both normalisations, and why a cell is empty."""
    lines = [
        f"# {result.method} on {result.dataset}",
        "",
        f"{result.n_images} images in {result.n_classes} class{'es' if result.n_classes != 1 else ''}; "
        f"checkpoint: {result.checkpoint or 'none (plain CLIP)'}.",
        f"Normalisation **{result.normalize}**: {NORMALIZATION_NOTES[result.normalize]}.",
        "",
        *_metric_table(result.per_class, result.means, result.counts, result.aupro),
        "",
    ]
    if result.other is not None:
        other = result.other
        lines += [
            f"## The same predictions, {other.normalize}",
            "",
            f"{NORMALIZATION_NOTES[other.normalize].capitalize()}. Pixel metrics are the same in both modes "
            "(a per-class monotone map changes no ranking within a class); image metrics can differ.",
            "",
            *_metric_table(other.per_class, other.means, other.counts, other.aupro),
            "",
        ]
    empty = "no masks: this dataset has none, so no pixel metric is defined" if not result.has_masks else (
        "one label only: the class has no normal or no anomalous images (or, for pixel metrics, no defect pixels)")
    lines += [
        "Values in %. Mean = unweighted mean over classes; a metric undefined for a class is shown as – and left "
        f"out of the mean (the book's Protocol page, Metrics). Here – means {empty}.",
        "`predictions.csv` lists every image with its score, the label at its class's image F1-max threshold "
        "(chosen on these labelled images) and its map's maximum.",
    ]
    if result.aupro == "legacy":
        lines.append("AUPRO is the legacy definition (200 thresholds, rescaled FPR < 0.3), not the MVTec one.")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------- files for the explorer
def save_predictions_file(predictions: Batch, path, domain: str, n_levels: int, result: TestResult) -> Path:
    """`path` (.npz, compressed) + `path.json` (index). No pickles.

    The file keeps what every map and score is made from: each image's blurred level grids
    (B, L, g, g) float32 (`scoring.fuse_levels` turns them into the raw map exactly as `predict`
    does), the raw image scores, the ground truth, and the scores under the normalisation tested (a
    check on reload). The maps themselves are rebuilt on load: at 518 px they would be 200x larger.
    """
    path = Path(path).with_suffix(".npz")
    arrays = {
        "level_grids": predictions.level_grids.astype(np.float32),
        "raw_score": predictions.raw_score.astype(np.float32),
        "pred_score": predictions.pred_score.astype(np.float32),
        "gt_mask": predictions.masks(),
        "gt_label": predictions.labels(),
    }
    index = {
        "format": PREDICTIONS_FORMAT,
        "class_name": list(predictions.class_name),
        "image_path": list(predictions.image_path),
        "dataset": result.dataset,
        "method": result.method,
        "checkpoint": result.checkpoint,
        "domain": domain,
        "n_levels": n_levels,
        "image_size": int(predictions.gt_mask.shape[-1]),
        "normalize": result.normalize,
        "seconds": result.seconds,
    }
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(handle, **arrays)
    write_json(path.with_suffix(".json"), index)
    return path


def load_predictions(path, maps: bool = True, normalize: str | None = None) -> tuple[Batch, dict]:
    """(predictions, index) from `save_predictions_file`'s pair of files.

    maps=True rebuilds raw_map and anomaly_map (under `normalize`, default the one tested) from the
    level grids and checks the rebuilt scores against the saved ones; maps=False gives the grids,
    scores and ground truth only (what the explorer reads: no full-size maps in memory).
    """
    import torch

    from aaclip.runs.inference import normalized
    from aaclip.scoring import fuse_levels

    path = Path(path).with_suffix(".npz")
    index_path = path.with_suffix(".json")
    if not path.is_file() or not index_path.is_file():
        raise AAClipError(f"no saved predictions at {path} (+ {index_path.name}); run `aaclip test --save-predictions`")
    index = json.loads(index_path.read_text())
    if index.get("format") != PREDICTIONS_FORMAT:
        raise AAClipError(f"{index_path}: format {index.get('format')!r}, expected {PREDICTIONS_FORMAT!r}; "
                          "rerun `aaclip test --save-predictions` to rewrite it")
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    batch = Batch(
        image_path=index["image_path"], class_name=index["class_name"], gt_label=arrays["gt_label"],
        gt_mask=arrays["gt_mask"], level_grids=arrays["level_grids"], raw_score=arrays["raw_score"],
        pred_score=arrays["pred_score"],
    )
    if not maps:
        return batch, index
    raw_map = fuse_levels(torch.from_numpy(batch.level_grids), index["image_size"]).numpy()
    rebuilt = normalized(batch.replace(raw_map=raw_map), index["normalize"], index["domain"], index["n_levels"])
    if not np.allclose(rebuilt.pred_score, batch.pred_score, atol=1e-4):
        raise AAClipError(f"{path}: the scores rebuilt from the level grids differ from the saved ones; the file is damaged")
    if normalize not in (None, index["normalize"]):
        rebuilt = normalized(rebuilt, normalize, index["domain"], index["n_levels"])
    return rebuilt, index
