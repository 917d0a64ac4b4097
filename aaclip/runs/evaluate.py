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
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from aaclip import __version__, metrics
from aaclip.batch import Batch
from aaclip.errors import AAClipError
from aaclip.io import atomic_path, write_json, write_text
from aaclip.metrics import AUPRO_TITLES, METRIC_NAMES, METRIC_TITLES
from aaclip.runs.inference import Method, predict

PREDICTIONS_FORMAT = "aaclip-predictions/1"
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
    per_class: dict[str, dict]  # class -> metric name -> value (NaN where undefined)
    means: dict[str, float]  # unweighted over classes, NaN left out (book:protocol-metrics)
    counts: dict[str, int]  # classes behind each mean
    n_images: int
    seconds: float  # inference wall time (features and scoring)
    device: str
    checkpoint: str | None = None
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
            dataset=self.dataset, method=self.method, baseline=self.method == "CLIP", normalize=self.normalize,
            metric_resolution=self.metric_resolution, checkpoint=self.checkpoint, n_images=self.n_images,
            ms_per_image=1000.0 * self.seconds / max(self.n_images, 1), device=self.device,
            aaclip_version=__version__,
        )  # fmt: skip
        return document


def evaluate(
    model,
    dataset,
    method: Method,
    eval_cfg,
    out_dir=None,
    save_predictions: bool = False,
    keep_predictions: bool = False,
    checkpoint: str | None = None,
    progress: bool = True,
) -> TestResult:
    """Per-class metrics (`aaclip.metrics.evaluate_class`) of `method` on an AnomalyDataset.

    With `out_dir`, writes the result files (and predictions.npz with `save_predictions`);
    `keep_predictions` returns the predictions in `TestResult.predictions` too.
    """
    model.eval()
    per_class, parts, timing = {}, [], {"seconds": 0.0}
    for name in dataset.class_names:
        preds = predict(model, dataset.subset(dataset.indices_of(name)), method, eval_cfg, progress, timing)
        anomaly_map, gt_mask = preds.anomaly_map, preds.gt_mask
        if eval_cfg.metric_resolution == "original":
            anomaly_map, gt_mask = original_resolution(preds, dataset)
        per_class[name] = metrics.evaluate_class(preds.pred_score, preds.gt_label, anomaly_map, gt_mask, eval_cfg.aupro)
        if save_predictions or keep_predictions:
            parts.append(preds)
    summary = metrics.summarize(per_class)
    result = TestResult(
        dataset=dataset.info.name, method=method.name, normalize=eval_cfg.normalize, aupro=eval_cfg.aupro,
        metric_resolution=eval_cfg.metric_resolution, per_class=per_class, means=summary["means"],
        counts=summary["counts"], n_images=len(dataset), seconds=timing["seconds"], device=str(model.device),
        checkpoint=checkpoint, predictions=Batch.collate(parts) if parts else None,
    )  # fmt: skip
    if out_dir is not None:
        write_results(out_dir, result)
        if save_predictions:
            save_predictions_file(result.predictions, Path(out_dir) / "predictions.npz", dataset.info.domain,
                                  len(model.levels), result)
    if not keep_predictions:
        result.predictions = None
    return result


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

    by_path = {str(dataset.root / r["image_path"]): r for r in dataset.records}
    maps, masks = [], []
    for anomaly_map, path in zip(preds.anomaly_map, preds.image_path):
        record = by_path[path]
        with Image.open(path) as image:
            width, height = image.size
        if record.get("mask_path"):
            with Image.open(dataset.root / record["mask_path"]) as mask_image:
                mask = np.asarray(mask_image.convert("L")) != 0
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
    """per_class.csv, summary.json and summary.md in out_dir, each atomically; all rendered first."""
    summary = {"means": result.means, "counts": result.counts, "n_classes": result.n_classes}
    texts = {
        "per_class.csv": _per_class_csv(result.per_class, summary),
        "summary.json": json.dumps(result.summary(), indent=2, allow_nan=False) + "\n",
        "summary.md": _markdown_table(result.per_class, summary, result.aupro),
    }
    out_dir = Path(out_dir)
    return {name: write_text(out_dir / name, text) for name, text in texts.items()}


def _json_float(value) -> float | None:
    value = float(value)
    return None if math.isnan(value) else value


def _per_class_csv(per_class: dict[str, dict], summary: dict) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["class_name", *METRIC_NAMES])
    for name, values in per_class.items():
        writer.writerow([name, *(repr(float(values.get(m, math.nan))) for m in METRIC_NAMES)])
    writer.writerow(["mean", *(repr(float(summary["means"][m])) for m in METRIC_NAMES)])
    return buffer.getvalue()


def _percent(value) -> str:
    value = float(value)
    return "–" if math.isnan(value) else f"{100 * value:.1f}"


def _markdown_table(per_class: dict[str, dict], summary: dict, aupro: str) -> str:
    titles = [METRIC_TITLES[m] if m != "pixel_aupro" else AUPRO_TITLES[aupro] for m in METRIC_NAMES]
    rows = [
        "| class | " + " | ".join(titles) + " |",
        "|---|" + "---:|" * len(titles),
    ]
    for name, values in per_class.items():
        rows.append(f"| {name} | " + " | ".join(_percent(values.get(m, math.nan)) for m in METRIC_NAMES) + " |")
    n = summary["n_classes"]
    rows.append("| **mean** | " + " | ".join(f"**{_percent(summary['means'][m])}**" for m in METRIC_NAMES) + " |")
    rows.append("| classes in mean | " + " | ".join(f"{summary['counts'][m]}/{n}" for m in METRIC_NAMES) + " |")
    note = ("Values in %. Mean = unweighted mean over classes; a metric undefined for a class "
            "(one label only) is shown as – and left out of the mean (book:protocol-metrics).")
    if aupro == "legacy":
        note += " AUPRO is the legacy definition (200 thresholds, rescaled FPR < 0.3), not the MVTec one."
    return "\n".join(rows) + "\n\n" + note + "\n"


# ---------------------------------------------------------------------------------- files for the explorer
def save_predictions_file(predictions: Batch, path, domain: str, n_levels: int, result: TestResult) -> Path:
    """`path` (.npz, compressed: float16 maps, bool masks, float32 scores) + `path.json` (index). No pickles."""
    path = Path(path).with_suffix(".npz")
    arrays = {
        "anomaly_map": predictions.anomaly_map.astype(np.float16),
        "raw_map": predictions.raw_map.astype(np.float16),
        "pred_score": predictions.pred_score.astype(np.float32),
        "raw_score": predictions.raw_score.astype(np.float32),
        "gt_mask": predictions.masks(),
        "gt_label": predictions.labels(),
    }
    index = {
        "format": PREDICTIONS_FORMAT,
        "class_name": list(predictions.class_name),
        "image_path": list(predictions.image_path),
        "dataset": result.dataset,
        "method": result.method,
        "domain": domain,
        "n_levels": n_levels,
        "normalize": result.normalize,
        "seconds": result.seconds,
    }
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(handle, **arrays)
    write_json(path.with_suffix(".json"), index)
    return path


def load_predictions(path) -> tuple[Batch, dict]:
    """(predictions, index) from `save_predictions_file`'s pair of files."""
    path = Path(path).with_suffix(".npz")
    index_path = path.with_suffix(".json")
    if not path.is_file() or not index_path.is_file():
        raise AAClipError(f"no saved predictions at {path} (+ {index_path.name}); run `aaclip test --save-predictions`")
    index = json.loads(index_path.read_text())
    if index.get("format") != PREDICTIONS_FORMAT:
        raise AAClipError(f"{index_path}: format {index.get('format')!r}, expected {PREDICTIONS_FORMAT!r}")
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    batch = Batch(
        image_path=index["image_path"],
        class_name=index["class_name"],
        gt_label=arrays["gt_label"],
        gt_mask=arrays["gt_mask"],
        anomaly_map=arrays["anomaly_map"].astype(np.float32),
        pred_score=arrays["pred_score"],
        raw_map=arrays["raw_map"].astype(np.float32),
        raw_score=arrays["raw_score"],
    )
    return batch, index
