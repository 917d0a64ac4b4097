"""Inference and evaluation (SPEC 6, 8): AA-CLIP or the plain-CLIP baseline on a test dataset.

    preds = predict_dataset(model, cfg, dataset)           # maps and scores, both normalisations
    summary = test(cfg, "MVTec", out_dir="results/mvtec")  # per_class.csv, summary.json, summary.md
    rows = predict_images(model, cfg, ["part.png"], "out") # scores.csv + heatmap overlays

Every path runs the same `features` -> `aaclip.scoring` chain; only where the features and the
anchors come from differs:
- AA-CLIP: adapted image features, anchors from the adapted text encoder;
- baseline (`baseline=True`): plain CLIP's patch tokens through its own projection and its CLS
  embedding, anchors from plain CLIP's text encoder (the "CLIP" row of every table);
- ablations follow the run's config: without stage 1 the anchors are plain CLIP's (as in
  training); without stage 2 the maps come from the stage-1 (V-V) features, the image score from
  CLIP's own embedding.
"""

from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from aaclip import __version__
from aaclip import scoring
from aaclip.config import Config
from aaclip.errors import AAClipError
from aaclip.io import atomic_path, write_json, write_text

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


@dataclass
class Predictions:
    """Per-image results of one dataset, anomalib names; arrays are numpy, maps (N, S, S)."""

    raw_map: np.ndarray  # float32, SPEC 6.1-6.3: blurred level maps, upsampled and summed
    raw_score: np.ndarray  # float32 (N,), SPEC 6.4
    gt_mask: np.ndarray  # bool (N, S, S), at the input resolution
    gt_label: np.ndarray  # int64 (N,)
    class_name: list[str]
    image_path: list[str]
    domain: str  # industrial | medical
    n_levels: int
    normalize: str  # which normalisation anomaly_map / pred_score hold
    anomaly_map: np.ndarray = field(repr=False)  # float32, normalised
    pred_score: np.ndarray = field(repr=False)  # float32 (N,), normalised
    seconds: float = 0.0  # inference wall time (features + scoring)

    def __len__(self) -> int:
        return len(self.class_name)

    def normalized(self, mode: str) -> tuple[np.ndarray, np.ndarray]:
        """(anomaly_map, pred_score) under `mode`: transductive (released, per-class min-max) or inductive."""
        if mode == "transductive":
            return scoring.normalize_transductive(self.raw_map, self.raw_score, self.class_name, self.domain)
        if mode == "inductive":
            return scoring.normalize_inductive(self.raw_map, self.raw_score, self.domain, n_levels=self.n_levels)
        raise AAClipError(f"normalize={mode!r}: choose transductive or inductive")

    def renormalized(self, mode: str) -> "Predictions":
        anomaly_map, pred_score = self.normalized(mode)
        return replace(self, normalize=mode, anomaly_map=anomaly_map, pred_score=pred_score)

    def select(self, class_name: str) -> "Predictions":
        """The images of one class (normalisation is per class, so the values stay valid)."""
        idx = np.flatnonzero(np.asarray(self.class_name) == class_name)
        pick = lambda xs: [xs[i] for i in idx]  # noqa: E731
        return replace(
            self,
            raw_map=self.raw_map[idx],
            raw_score=self.raw_score[idx],
            gt_mask=self.gt_mask[idx],
            gt_label=self.gt_label[idx],
            class_name=pick(self.class_name),
            image_path=pick(self.image_path),
            anomaly_map=self.anomaly_map[idx],
            pred_score=self.pred_score[idx],
        )

    @staticmethod
    def concat(parts: list["Predictions"]) -> "Predictions":
        first = parts[0]
        cat = lambda name: np.concatenate([getattr(p, name) for p in parts])  # noqa: E731
        return replace(
            first,
            raw_map=cat("raw_map"),
            raw_score=cat("raw_score"),
            gt_mask=cat("gt_mask"),
            gt_label=cat("gt_label"),
            class_name=[c for p in parts for c in p.class_name],
            image_path=[c for p in parts for c in p.image_path],
            anomaly_map=cat("anomaly_map"),
            pred_score=cat("pred_score"),
            seconds=sum(p.seconds for p in parts),
        )


# ---------------------------------------------------------------------------------- features
def anchors_for(model, cfg: Config, prompt_names: list[str], baseline: bool) -> torch.Tensor:
    """Per-class anchors (C, D, 2), no grad: plain CLIP's for the baseline or a run without stage 1."""
    with torch.no_grad(), _autocast(model, cfg):
        anchors = model.text_anchors(prompt_names, adapted=cfg.train_stage1 and not baseline)
    return anchors.float()


def features(model, cfg: Config, images: torch.Tensor, baseline: bool):
    """(seg: L x (B, N, D), det: (B, D)) for scoring; see the module docstring for the variants."""
    if baseline:
        return model.baseline_features(images)
    if not cfg.train_stage2:  # stage-1-only ablation: untrained seg/det projections would be noise
        return model.stage1_features(images, return_global=True)
    return model.image_features(images)


def score_batch(model, cfg, images, anchors, domain: str, baseline: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw anomaly maps (B, S, S) and raw image scores (B,) for one batch (SPEC 6.1-6.4)."""
    with torch.no_grad(), _autocast(model, cfg):
        seg, det = features(model, cfg, images, baseline)
    raw_map = scoring.raw_anomaly_map(seg, anchors, domain, model.image_size)
    return raw_map, scoring.raw_image_score(det, anchors)


def _autocast(model, cfg):
    from aaclip.model import autocast

    return autocast(model.device, cfg.precision)


# ---------------------------------------------------------------------------------- datasets
def predict_dataset(model, cfg: Config, dataset, baseline: bool = False, progress: bool = True) -> Predictions:
    """Batched inference over an AnomalyDataset (or a Subset of one), normalised by `cfg.normalize`."""
    from tqdm.auto import tqdm

    records, info = _records_and_info(dataset)
    if not records:
        raise AAClipError(f"dataset {info.name} has no images to evaluate")
    classes = list(dict.fromkeys(r["class_name"] for r in records))
    anchors = anchors_for(model, cfg, [info.prompt_names[c] for c in classes], baseline)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=cfg.batch_size, shuffle=False, num_workers=cfg.num_workers
    )
    maps, scores, masks, labels, names, paths = [], [], [], [], [], []
    seconds = 0.0
    bar = tqdm(loader, desc=f"{'CLIP' if baseline else 'AA-CLIP'} {info.name}", disable=not progress, leave=False)
    for batch in bar:
        images = batch["image"].to(model.device)
        index = torch.tensor([classes.index(c) for c in batch["class_name"]], device=anchors.device)
        start = time.perf_counter()
        raw_map, raw_score = score_batch(model, cfg, images, anchors[index], info.domain, baseline)
        maps.append(raw_map.float().cpu().numpy())
        scores.append(raw_score.float().cpu().numpy())
        seconds += time.perf_counter() - start
        masks.append(batch["gt_mask"][:, 0].numpy() != 0)
        labels.append(np.asarray(batch["gt_label"], dtype=np.int64))
        names += list(batch["class_name"])
        paths += list(batch["image_path"])
    raw = Predictions(
        raw_map=np.concatenate(maps),
        raw_score=np.concatenate(scores),
        gt_mask=np.concatenate(masks),
        gt_label=np.concatenate(labels),
        class_name=names,
        image_path=paths,
        domain=info.domain,
        n_levels=len(model.levels),
        normalize=cfg.normalize,
        anomaly_map=np.empty(0, np.float32),
        pred_score=np.empty(0, np.float32),
        seconds=seconds,
    )
    return raw.renormalized(cfg.normalize)


def _records_and_info(dataset):
    if isinstance(dataset, torch.utils.data.Subset):
        records, info = _records_and_info(dataset.dataset)
        return [records[i] for i in dataset.indices], info
    if getattr(dataset, "info", None) is None:
        raise AAClipError("predict_dataset needs an AnomalyDataset from aaclip.data.dataset.load_dataset (with .info)")
    return dataset.records, dataset.info


def test(
    cfg: Config,
    dataset,
    baseline: bool = False,
    out_dir=None,
    save_path=None,
    model=None,
    save_predictions: bool = False,
    progress: bool = True,
) -> dict:
    """Evaluate AA-CLIP (the run in `save_path`, default `cfg.save_path`) or the baseline on a dataset.

    Per class: `aaclip.metrics.evaluate_class`; then `summarize`, and with `out_dir`
    `write_results` (per_class.csv, summary.json, summary.md) plus, with `save_predictions`,
    `predictions.npz` for the heatmap explorer. Classes are predicted one at a time, so memory
    holds one class's maps (normalisation is per class anyway). Returns what summary.json holds:
    the dataset means under the metric names, counts, per_class, and how they were obtained.
    """
    from aaclip import metrics
    from aaclip.checkpoint import checkpoint_file, load_model
    from aaclip.data.dataset import load_dataset
    from aaclip.model import AAClip

    checkpoint = None
    if model is None and baseline:
        model = AAClip.from_config(cfg)
    elif model is None:
        checkpoint = checkpoint_file(save_path or cfg.save_path)
        model, cfg = load_model(checkpoint, cfg)
    model.eval()
    data = dataset if not isinstance(dataset, str) else load_dataset(cfg.data_root, dataset, image_size=cfg.image_size)
    per_class, parts, seconds = {}, [], 0.0
    for name in data.class_names:
        indices = [i for i, r in enumerate(data.records) if r["class_name"] == name]
        preds = predict_dataset(model, cfg, torch.utils.data.Subset(data, indices), baseline, progress)
        anomaly_map, gt_mask = preds.anomaly_map, preds.gt_mask
        if cfg.metric_resolution == "original":
            anomaly_map, gt_mask = original_resolution(preds, data)
        per_class[name] = metrics.evaluate_class(preds.pred_score, preds.gt_label, anomaly_map, gt_mask, cfg.aupro)
        seconds += preds.seconds
        if save_predictions:
            parts.append(preds)
    summary = metrics.summarize(per_class)
    n_images = len(data)
    extra = {
        "dataset": data.info.name,
        "method": "CLIP" if baseline else "AA-CLIP",
        "baseline": baseline,
        "normalize": cfg.normalize,
        "aupro": cfg.aupro,
        "metric_resolution": cfg.metric_resolution,
        "checkpoint": str(checkpoint) if checkpoint else None,
        "n_images": n_images,
        "ms_per_image": 1000.0 * seconds / max(n_images, 1),
        "device": str(model.device),
        "aaclip_version": __version__,
        "config": cfg.to_dict(),
    }
    if out_dir is not None:
        metrics.write_results(out_dir, per_class, summary, extra=extra)
        if save_predictions:
            save_predictions_file(Predictions.concat(parts), Path(out_dir) / "predictions.npz")
    return {
        **summary["means"],
        "counts": summary["counts"],
        "n_classes": summary["n_classes"],
        "per_class": per_class,
        **extra,
        "means": summary["means"],
    }


def original_resolution(preds: Predictions, data) -> tuple[np.ndarray, np.ndarray]:
    """SPEC 6.6 option: maps resized (bilinear) to each image's original mask size, masks read unresized."""
    import torch.nn.functional as F
    from PIL import Image

    by_path = {str(data.root / r["image_path"]): r for r in data.records}
    maps, masks = [], []
    for anomaly_map, path in zip(preds.anomaly_map, preds.image_path):
        record = by_path[path]
        with Image.open(path) as image:
            width, height = image.size
        if record.get("mask_path"):
            with Image.open(data.root / record["mask_path"]) as mask_image:
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


# ---------------------------------------------------------------------------------- single images
def predict_images(
    model,
    cfg: Config,
    paths,
    out_dir,
    object_name: str = "object",
    domain: str = "industrial",
    baseline: bool = False,
    vmax: float = 1.0,
) -> list[dict]:
    """Score images one batch at a time with the inductive normalisation (no test-set statistics).

    Writes `out_dir/scores.csv` and `out_dir/overlays/<name>.png` (colour scale fixed to
    [0, vmax] of the inductive map, so colours compare across images). An image that cannot be
    read is reported in its row's `error` and the others are still scored.
    Returns one row per input image: image_path, pred_score, raw_score, max_anomaly, overlay, error.
    """
    from PIL import Image

    from aaclip.data.dataset import CLIP_MEAN, CLIP_STD, AnomalyDataset
    from aaclip.viz import denormalize, overlay

    files = expand_image_paths(paths)
    out_dir = Path(out_dir)
    overlay_dir = out_dir / "overlays"
    reader = AnomalyDataset(
        [{"image_path": str(Path(p).resolve()), "label": 0, "class_name": object_name} for p in files],
        root="/",
        image_size=cfg.image_size,
    )
    model.eval()
    anchors = anchors_for(model, cfg, [object_name], baseline)[0]
    rows, used_names = [], set()
    for start in range(0, len(files), cfg.batch_size):
        batch_rows, images = [], []
        for i in range(start, min(start + cfg.batch_size, len(files))):
            row = {"image_path": str(files[i]), "pred_score": None, "raw_score": None, "max_anomaly": None}
            try:
                images.append(reader[i]["image"])
                row.update(overlay=None, error="")
            except AAClipError as err:
                row.update(overlay=None, error=str(err))
            batch_rows.append(row)
        good = [r for r in batch_rows if not r["error"]]
        if good:
            batch = torch.stack(images).to(model.device)
            raw_map, raw_score = score_batch(model, cfg, batch, anchors, domain, baseline)
            anomaly_map, pred_score = scoring.normalize_inductive(raw_map, raw_score, domain, n_levels=len(model.levels))
            pictures = denormalize(batch.cpu(), CLIP_MEAN, CLIP_STD)
            for row, amap, score, raw, picture in zip(good, anomaly_map, pred_score, raw_score, pictures):
                name = _unique_name(Path(row["image_path"]).stem, used_names)
                target = overlay_dir / f"{name}.png"
                with atomic_path(target) as tmp:
                    Image.fromarray(overlay(picture, amap.cpu().numpy(), vmin=0.0, vmax=vmax)).save(tmp, format="PNG")
                row.update(
                    pred_score=float(score),
                    raw_score=float(raw),
                    max_anomaly=float(amap.max()),
                    overlay=str(target.relative_to(out_dir)),
                )
        rows += batch_rows
    write_text(out_dir / "scores.csv", _rows_csv(rows))
    return rows


def expand_image_paths(paths) -> list[Path]:
    """Files as given; folders -> their image files (recursively, sorted)."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    files = []
    for path in map(Path, paths):
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        else:  # a missing file stays in the list: it is reported in its row like an unreadable one
            files.append(path)
    if not files:
        raise AAClipError(f"no images found in {', '.join(map(str, paths))}")
    return files


def _unique_name(stem: str, used: set) -> str:
    name, n = stem, 1
    while name in used:
        name, n = f"{stem}_{n}", n + 1
    used.add(name)
    return name


def _rows_csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    columns = ["image_path", "pred_score", "raw_score", "max_anomaly", "overlay", "error"]
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in columns})
    return buffer.getvalue()


# ---------------------------------------------------------------------------------- files for the explorer
def save_predictions_file(predictions: Predictions, path) -> Path:
    """`path` (.npz, compressed: float16 maps, bool masks, float32 scores) + `path.json` (index). No pickles."""
    path = Path(path).with_suffix(".npz")
    arrays = {
        "anomaly_map": predictions.anomaly_map.astype(np.float16),
        "raw_map": predictions.raw_map.astype(np.float16),
        "pred_score": predictions.pred_score.astype(np.float32),
        "raw_score": predictions.raw_score.astype(np.float32),
        "gt_mask": predictions.gt_mask.astype(bool),
        "gt_label": predictions.gt_label.astype(np.int64),
    }
    index = {
        "format": "aaclip-predictions/1",
        "class_name": list(predictions.class_name),
        "image_path": list(predictions.image_path),
        "domain": predictions.domain,
        "n_levels": predictions.n_levels,
        "normalize": predictions.normalize,
        "seconds": predictions.seconds,
    }
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(handle, **arrays)
    write_json(path.with_suffix(".json"), index)
    return path


save_predictions = save_predictions_file  # the name the book and the interfaces use


def load_predictions(path) -> Predictions:
    path = Path(path).with_suffix(".npz")
    index_path = path.with_suffix(".json")
    if not path.is_file() or not index_path.is_file():
        raise AAClipError(f"no saved predictions at {path} (+ {index_path.name}); run `aaclip test --save-predictions`")
    index = json.loads(index_path.read_text())
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    return Predictions(
        raw_map=arrays["raw_map"].astype(np.float32),
        raw_score=arrays["raw_score"],
        gt_mask=arrays["gt_mask"],
        gt_label=arrays["gt_label"],
        class_name=index["class_name"],
        image_path=index["image_path"],
        domain=index["domain"],
        n_levels=index["n_levels"],
        normalize=index["normalize"],
        anomaly_map=arrays["anomaly_map"].astype(np.float32),
        pred_score=arrays["pred_score"],
        seconds=index.get("seconds", 0.0),
    )
