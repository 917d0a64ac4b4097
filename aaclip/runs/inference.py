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
def anchors_for(model, method: Method, prompt_names: list[str], precision: str = "fp32") -> torch.Tensor:
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


def score_batch(model, method: Method, images, anchors, domain: str, precision: str = "fp32"):
    """Raw anomaly maps (B, S, S) and raw image scores (B,) for one batch (book:method-scoring)."""
    grids, raw_score = score_grids(model, method, images, anchors, domain, precision)
    return scoring.fuse_levels(grids, model.image_size), raw_score


def score_grids(model, method: Method, images, anchors, domain: str, precision: str = "fp32"):
    """The blurred level grids (B, L, g, g) and raw image scores (B,): the raw maps before upsampling."""
    with torch.no_grad(), autocast(model.device, precision):
        seg, det = features(model, method, images)
    return scoring.level_grids(seg, anchors, domain), scoring.raw_image_score(det, anchors)


def predict_levels(model, method: Method, batch: Batch, prompt_names: dict[str, str], domain: str,
                   precision: str = "fp32") -> Batch:
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

    Returns a Batch with gt_mask, gt_label, names, level_grids, raw_map, raw_score, anomaly_map and
    pred_score (numpy); the images themselves are not kept. `timing`, if given, receives "seconds": the
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
        grids, raw_score = score_grids(
            model, method, batch.image.to(model.device), anchors[index], info.domain, eval_cfg.precision
        )
        raw_map = scoring.fuse_levels(grids, model.image_size)
        seconds += time.perf_counter() - start
        parts.append(batch.replace(
            image=None, gt_mask=batch.masks(), gt_label=batch.labels(), level_grids=grids.float().cpu().numpy(),
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
SCORE_COLUMNS = ("image_path", "relative_path", "pred_score", "pred_label", "threshold", "raw_score", "max_anomaly",
                 "overlay", "error")
HEAT_NOTE = ("heat: the inductive map, on one fixed 0-1 scale for every image (not stretched per image): "
             "the probability the segmentation loss trains, from the mean over levels of the logit difference")


def predict_images(
    model,
    method: Method,
    paths,
    out_dir,
    object_name: str = "object",
    domain: str = "industrial",
    batch_size: int = 8,
    precision: str = "fp32",
    threshold: float | None = None,
    checkpoint: str | None = None,
    progress: bool = True,
) -> list[dict]:
    """Score images one batch at a time with the inductive normalisation (no test-set statistics).

    Writes `out_dir/overlays/<relative path>.png` (each at the image's own size, with a colour bar of
    the fixed [0, 1] scale and the score in the picture), `scores.csv` (SCORE_COLUMNS, one row per
    input image; `pred_label` only with a `threshold`) and `summary.md`. Relative paths keep the
    inputs' own folders, so two images never share an overlay. An image that cannot be read is
    reported in its row's `error` and the others are still scored.
    """
    from PIL import Image
    from tqdm.auto import tqdm

    from aaclip.data.dataset import AnomalyDataset, read_rgb
    from aaclip.viz import annotated_overlay

    backbone = model.backbone
    files = expand_image_paths(paths)
    relative = relative_names(files, paths)
    out_dir = Path(out_dir)
    reader = AnomalyDataset(
        [{"image_path": str(Path(p).resolve()), "label": 0, "class_name": object_name} for p in files],
        root="/", image_size=backbone.image_size, mean=backbone.mean, std=backbone.std,
    )  # fmt: skip
    model.eval()
    anchors = anchors_for(model, method, [object_name], precision)[0]
    rows = []
    bar = tqdm(total=len(files), desc="scoring images", unit="image", disable=not progress)
    for start in range(0, len(files), batch_size):
        batch_rows, images = [], []
        for i in range(start, min(start + batch_size, len(files))):
            row = dict.fromkeys(SCORE_COLUMNS, None) | {"image_path": str(files[i]), "relative_path": relative[i], "error": ""}
            try:
                images.append(reader[i].image[0])
            except AAClipError as err:
                row["error"] = str(err)
            batch_rows.append(row)
        good = [r for r in batch_rows if not r["error"]]
        if good:
            batch = torch.stack(images).to(model.device)
            raw_map, raw_score = score_batch(model, method, batch, anchors, domain, precision)
            anomaly_map, pred_score = scoring.normalize_inductive(raw_map, raw_score, domain, n_levels=len(model.levels))
            for row, amap, score, raw in zip(good, anomaly_map, pred_score, raw_score):
                label = None if threshold is None else int(float(score) >= threshold)
                row.update(pred_score=float(score), pred_label=label, threshold=threshold, raw_score=float(raw),
                           max_anomaly=float(amap.max()))
                picture = read_rgb(Path(row["image_path"]))  # the original size: the overlay is drawn on it
                target = out_dir / "overlays" / Path(row["relative_path"]).with_suffix(".png")
                with atomic_path(target) as tmp:
                    lines = [score_line(row), HEAT_NOTE.split(":")[0] + ": inductive map, fixed 0-1 scale"]
                    Image.fromarray(annotated_overlay(picture, amap.cpu().numpy(), lines)).save(tmp, format="PNG")
                row["overlay"] = str(target.relative_to(out_dir))
        rows += batch_rows
        bar.update(len(batch_rows))
    bar.close()
    write_text(out_dir / "scores.csv", _rows_csv(rows))
    write_text(out_dir / "summary.md", predict_summary(rows, object_name, domain, threshold, checkpoint, backbone))
    return rows


def score_line(row: dict) -> str:
    text = f"score {row['pred_score']:.3f}"
    if row["threshold"] is not None:
        verdict = "anomalous" if row["pred_label"] else "normal"
        text += f": {verdict} (threshold {row['threshold']:.3f})"
    return text


def relative_names(files: list[Path], inputs) -> list[str]:
    """Each file's path relative to what was given: inside a folder given alone, else below the inputs'
    common folder. Distinct files keep distinct names, so no overlay overwrites another."""
    import os

    inputs = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    given = [Path(p).resolve() for p in inputs]
    base = given[0] if len(given) == 1 and given[0].is_dir() else Path(os.path.commonpath([g if g.is_dir() else g.parent for g in given]))
    return [Path(f).resolve().relative_to(base).as_posix() for f in files]


def predict_summary(rows: list[dict], object_name: str, domain: str, threshold, checkpoint, backbone) -> str:
    """summary.md of a predict run: what was scored, with what, how to read the numbers, the highest scores."""
    scored = sorted((r for r in rows if not r["error"]), key=lambda r: -r["pred_score"])
    failed = [r for r in rows if r["error"]]
    lines = [
        f"# aaclip predict: {len(scored)} of {len(rows)} images scored",
        "",
        f"Run: {checkpoint or 'given model'}; backbone {backbone.name}, weights sha256 {backbone.weights.sha256}.",
        f"Prompts name the images \"{object_name}\"; {domain} domain (its blur and score rule).",
        "",
        "Scores are **inductive** (the book's Method page, Normalisation): each image is scored alone, with "
        "fixed transforms, so a score does not depend on the other images given. `aaclip test` on labelled "
        "images reports this mode beside the released, transductive one.",
        f"The overlays' {HEAT_NOTE}.",
        "",
    ]
    if threshold is None:
        lines.append("No threshold was given, so no image is labelled: pass `--threshold T`, or `--thresholds` with "
                     "the output of `aaclip test` on labelled images of the same kind.")
    else:
        anomalous = sum(r["pred_label"] for r in scored)
        lines.append(f"Threshold {threshold:.4f}: {anomalous} of {len(scored)} images labelled anomalous.")
    lines += ["", "| image | score | label | map max | overlay |", "| --- | ---: | --- | ---: | --- |"]
    for row in scored[:20]:
        label = "" if row["pred_label"] is None else ("anomalous" if row["pred_label"] else "normal")
        lines.append(f"| {row['relative_path']} | {row['pred_score']:.4f} | {label} | {row['max_anomaly']:.4f} | {row['overlay']} |")
    if len(scored) > 20:
        lines.append(f"\nThe {len(scored) - 20} others: `scores.csv`.")
    if failed:
        lines += ["", f"## {len(failed)} images could not be read", ""] + [f"- {r['error']}" for r in failed]
    return "\n".join(lines) + "\n"


def labelling(threshold: float | None, test_out, object_name: str | None) -> tuple[float | None, str]:
    """(threshold, object name) for `predict`: as given, or the inductive image F1-max threshold of an
    `aaclip test` output (the mean over its classes) with the prompt name that threshold was chosen with."""
    import json

    if threshold is not None and test_out is not None:
        raise AAClipError("give --threshold or --thresholds, not both")
    if test_out is None:
        return threshold, object_name or "object"
    path = Path(test_out) / "summary.json"
    if not path.is_file():
        raise AAClipError(f"--thresholds {test_out}: no summary.json there; give the --out folder of `aaclip test`")
    summary = json.loads(path.read_text())
    modes = {summary.get("normalize"): summary.get("thresholds")}
    other = summary.get("other_normalization") or {}
    modes[other.get("normalize")] = other.get("thresholds")
    values = [c["image_threshold"] for c in (modes.get("inductive") or {}).values() if c.get("image_threshold") is not None]
    if not values:
        raise AAClipError(f"{path}: no inductive image threshold (its classes need normal and anomalous images)")
    names = sorted(set((summary.get("prompt_names") or {}).values()))
    if object_name is not None and names and object_name not in names:
        raise AAClipError(f"{path}: its threshold was chosen with prompts naming {', '.join(map(repr, names))}; "
                          f"--object {object_name!r} would score other prompts: drop --object or give that name")
    return float(np.mean(values)), object_name or (names[0] if len(names) == 1 else "object")


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


def _rows_csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=SCORE_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in SCORE_COLUMNS})
    return buffer.getvalue()
