"""Inference: anomaly maps and image scores of a dataset or of loose images (book:method-scoring).

    method = Method.of_run(run_cfg)                    # AA-CLIP as that run was trained
    preds = predict(model, dataset, method, cfg.eval)  # a Batch with maps and scores, normalised
    rows = predict_images(model, method, ["part.png"], "out")  # scores.csv + heatmap overlays

Every path runs the same `features` -> `aaclip.scoring` chain; only where the features and the
anchors come from differs, which `Method` says:
- AA-CLIP: adapted image features, anchors from the adapted text encoder;
- plain CLIP (`BASELINE`): CLIP's patch tokens through its own projection and its CLS embedding,
  anchors from plain CLIP's text encoder (the "CLIP" row of every table);
- ablations follow the run's config: without stage 1 the anchors are plain CLIP's (as in
  training); without stage 2 the maps come from the stage-1 (V-V) features, the image score from
  CLIP's own embedding.
"""

from __future__ import annotations

import csv
import io
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from aaclip import scoring
from aaclip.batch import Batch
from aaclip.errors import AAClipError
from aaclip.io import atomic_path, write_text
from aaclip.model import autocast


@dataclass(frozen=True)
class Method:
    """Which features and anchors score an image."""

    name: str  # "AA-CLIP" or "CLIP": the row label of every table
    adapted_text: bool  # anchors from the adapted text encoder (stage 1 was trained)
    image: str  # "adapted" (stage 2 was trained) | "stage1" (the frozen V-V features) | "clip" (plain CLIP)

    @classmethod
    def of_run(cls, run_cfg) -> "Method":
        """AA-CLIP as the run `run_cfg` was trained (an ablation without a stage uses what stands in for it)."""
        return cls("AA-CLIP", run_cfg.stage1.enabled, "adapted" if run_cfg.stage2.enabled else "stage1")

    @property
    def baseline(self) -> bool:
        return self.image == "clip"


BASELINE = Method("CLIP", adapted_text=False, image="clip")


# ---------------------------------------------------------------------------------- features
def anchors_for(model, method: Method, prompt_names: list[str], precision: str = "auto") -> torch.Tensor:
    """Per-class anchors (C, D, 2), no grad (book:method-anchors)."""
    with torch.no_grad(), autocast(model.device, precision):
        anchors = model.text_anchors(prompt_names, adapted=method.adapted_text)
    return anchors.float()


def features(model, method: Method, images: torch.Tensor):
    """(seg: L x (B, N, D), det: (B, D)) for scoring; see the module docstring for the variants."""
    if method.image == "clip":
        return model.baseline_features(images)
    if method.image == "stage1":  # stage-1-only ablation: untrained seg/det projections would be noise
        return model.stage1_features(images, return_global=True)
    return model.image_features(images)


def score_batch(model, method: Method, images, anchors, domain: str, precision: str = "auto"):
    """Raw anomaly maps (B, S, S) and raw image scores (B,) for one batch (book:method-scoring)."""
    with torch.no_grad(), autocast(model.device, precision):
        seg, det = features(model, method, images)
    raw_map = scoring.raw_anomaly_map(seg, anchors, domain, model.image_size)
    return raw_map, scoring.raw_image_score(det, anchors)


def predict_levels(model, method: Method, batch: Batch, prompt_names: dict[str, str], domain: str,
                   precision: str = "auto") -> Batch:
    """The batch (images dropped) with `level_maps` (B, L, S, S): each level's blurred, upsampled map,
    and `raw_map`, their sum (book:method-scoring); for figures that look inside the fusion."""
    import torch.nn.functional as F

    anchors = anchors_for(model, method, [prompt_names[c] for c in batch.class_name], precision)
    with torch.no_grad(), autocast(model.device, precision):
        seg, _ = features(model, method, batch.image.to(model.device))
    grid = scoring.gaussian_blur(scoring.level_maps(seg, anchors), domain)
    up = F.interpolate(grid, size=(model.image_size,) * 2, mode="bilinear", align_corners=True).float().cpu()
    return batch.replace(image=None, gt_mask=batch.masks(), gt_label=batch.labels(),
                         level_maps=up.numpy(), raw_map=up.sum(dim=1).numpy())


# ---------------------------------------------------------------------------------- datasets
def predict(model, dataset, method: Method, eval_cfg, progress: bool = True, timing: dict | None = None) -> Batch:
    """Maps and scores of every image of an AnomalyDataset, normalised as `eval_cfg.normalize` says.

    Returns a Batch with gt_mask, gt_label, names, raw_map, raw_score, anomaly_map and pred_score
    (numpy); the images themselves are not kept. `timing`, if given, receives "seconds": the
    model's share of the wall time (features and scoring, data loading excluded).
    """
    from tqdm.auto import tqdm

    info = dataset.info
    if not len(dataset):
        raise AAClipError(f"dataset {info.name} has no images to evaluate")
    classes = dataset.class_names
    anchors = anchors_for(model, method, [info.prompt_names[c] for c in classes], eval_cfg.precision)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=eval_cfg.batch_size, shuffle=False, collate_fn=Batch.collate
    )
    parts, seconds = [], 0.0
    for batch in tqdm(loader, desc=f"{method.name} {info.name}", disable=not progress, leave=False):
        index = torch.tensor([classes.index(c) for c in batch.class_name], device=anchors.device)
        start = time.perf_counter()
        raw_map, raw_score = score_batch(
            model, method, batch.image.to(model.device), anchors[index], info.domain, eval_cfg.precision
        )
        seconds += time.perf_counter() - start
        parts.append(batch.replace(
            image=None, gt_mask=batch.masks(), gt_label=batch.labels(),
            raw_map=raw_map.float().cpu().numpy(), raw_score=raw_score.float().cpu().numpy(),
        ))  # fmt: skip
    if timing is not None:
        timing["seconds"] = timing.get("seconds", 0.0) + seconds
    return normalized(Batch.collate(parts), eval_cfg.normalize, info.domain, len(model.levels))


def normalized(predictions: Batch, mode: str, domain: str, n_levels: int) -> Batch:
    """The same predictions with anomaly_map and pred_score under `mode` (book:method-normalisation)."""
    if mode == "transductive":
        anomaly_map, pred_score = scoring.normalize_transductive(
            predictions.raw_map, predictions.raw_score, predictions.class_name, domain
        )
    else:
        anomaly_map, pred_score = scoring.normalize_inductive(
            predictions.raw_map, predictions.raw_score, domain, n_levels=n_levels
        )
    return predictions.replace(anomaly_map=anomaly_map, pred_score=pred_score)


# ---------------------------------------------------------------------------------- single images
def predict_images(
    model,
    method: Method,
    paths,
    out_dir,
    object_name: str = "object",
    domain: str = "industrial",
    batch_size: int = 8,
    precision: str = "auto",
    vmax: float = 1.0,
) -> list[dict]:
    """Score images one batch at a time with the inductive normalisation (no test-set statistics).

    Writes `out_dir/scores.csv` and `out_dir/overlays/<name>.png` (colour scale fixed to
    [0, vmax] of the inductive map, so colours compare across images). An image that cannot be
    read is reported in its row's `error` and the others are still scored.
    Returns one row per input image: image_path, pred_score, raw_score, max_anomaly, overlay, error.
    """
    from PIL import Image

    from aaclip.data.dataset import AnomalyDataset
    from aaclip.viz import denormalize, overlay

    backbone = model.backbone
    files = expand_image_paths(paths)
    out_dir = Path(out_dir)
    overlay_dir = out_dir / "overlays"
    reader = AnomalyDataset(
        [{"image_path": str(Path(p).resolve()), "label": 0, "class_name": object_name} for p in files],
        root="/", image_size=backbone.image_size, mean=backbone.mean, std=backbone.std,
    )  # fmt: skip
    model.eval()
    anchors = anchors_for(model, method, [object_name], precision)[0]
    rows, used_names = [], set()
    for start in range(0, len(files), batch_size):
        batch_rows, images = [], []
        for i in range(start, min(start + batch_size, len(files))):
            row = {"image_path": str(files[i]), "pred_score": None, "raw_score": None, "max_anomaly": None}
            try:
                images.append(reader[i].image[0])
                row.update(overlay=None, error="")
            except AAClipError as err:
                row.update(overlay=None, error=str(err))
            batch_rows.append(row)
        good = [r for r in batch_rows if not r["error"]]
        if good:
            batch = torch.stack(images).to(model.device)
            raw_map, raw_score = score_batch(model, method, batch, anchors, domain, precision)
            anomaly_map, pred_score = scoring.normalize_inductive(raw_map, raw_score, domain, n_levels=len(model.levels))
            pictures = denormalize(batch.cpu(), backbone.mean, backbone.std)
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
    from aaclip.data.metadata import IMAGE_SUFFIXES

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
