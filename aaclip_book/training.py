"""Chapters 2 and 3: what each training stage did, read from the run's own history and weights."""

from __future__ import annotations

import numpy as np
import pandas as pd

from aaclip_book import plots, runs, samples, unawareness


def history_frame(history: list[dict]) -> pd.DataFrame:
    """One row per optimisation step, with a running step index per stage (for loss curves)."""
    frame = pd.DataFrame(history)
    if not frame.empty:
        frame["stage_step"] = frame.groupby("stage").cumcount() + 1
    return frame


def epoch_losses(frame: pd.DataFrame, stage: int) -> pd.DataFrame:
    """Mean of every loss term per epoch of one stage."""
    part = frame[frame["stage"] == stage]
    return part.groupby("epoch")[plots.loss_columns(part)].mean().round(4)


def stage_numbers(cfg, result, frame: pd.DataFrame, stage: int) -> dict:
    """Steps, epochs and seconds of one stage, for the chapter's prose."""
    part = cfg.stage1 if stage == 1 else cfg.stage2
    return {
        f"stage{stage}_steps": int((frame["stage"] == stage).sum()) if not frame.empty else 0,
        f"stage{stage}_epochs": part.epochs,
        f"stage{stage}_seconds": float(result.seconds.get(f"stage{stage}", float("nan"))),
    }


# --------------------------------------------------------------------------- chapter 2: the anchors
def anchors_before_after(model, cfg) -> pd.DataFrame:
    """Anchor cosines per class before (plain CLIP) and after stage 1, for seen and unseen classes."""
    frame = unawareness.anchor_cosine_table(model, cfg, roles(cfg))
    return frame.replace({"method": {"CLIP": "before", "AA-CLIP": "after"}})


def roles(cfg) -> dict[str, str]:
    return {cfg.train.dataset: "seen", cfg.eval.datasets[0]: "unseen"}


def moved_numbers(before_after: pd.DataFrame) -> dict:
    moved = before_after.groupby(["role", "method"])["cosine"].mean().unstack()
    return {f"{when}_{role}": float(moved.loc[role, when]) for role in moved.index for when in ("before", "after")}


def direction_numbers(agreement: pd.DataFrame) -> dict:
    """{"dir_seen_unseen_before": ..., "dir_seen_unseen_after": ...} for the prose."""
    key = lambda pair: pair.replace(" x ", "_")
    return {f"dir_{key(pair)}_{when}": float(agreement.loc[pair, method])
            for pair in agreement.index for method, when in (("CLIP", "before"), ("AA-CLIP", "after"))}


def orthogonality_effect(model, cfg, progress: bool = False) -> tuple[pd.DataFrame, dict]:
    """Stage 1 with and without the orthogonality term: per-class anchor cosines of both and plain CLIP.

    The comparison run trains stage 1 only, with `stage1.orth_weight = 0`, in its own folder.
    """
    no_orth_cfg = cfg.replace({"stage1.orth_weight": 0.0, "stage2.enabled": False,
                               "runtime.save_path": f"{cfg.runtime.save_path}-stage1-no-orth"})
    no_orth, _ = runs.trained(no_orth_cfg, progress)
    label = f"orth_weight {cfg.stage1.orth_weight:g}"
    reference = unawareness.anchor_cosine_table(model, cfg, roles(cfg)).replace({"method": {"AA-CLIP": label}})
    without = unawareness.anchor_cosine_table(no_orth, no_orth_cfg, roles(cfg)).query("method == 'AA-CLIP'")
    frame = pd.concat([reference, without.assign(method="orth_weight 0")])
    effect = frame.groupby(["role", "method"])["cosine"].mean().unstack()
    numbers = {"orth_unseen": float(effect.loc["unseen", label]), "no_orth_unseen": float(effect.loc["unseen", "orth_weight 0"])}
    return frame, numbers


def orthogonality_palette(cfg) -> dict:
    return {"CLIP": plots.METHOD_COLOURS["CLIP"], f"orth_weight {cfg.stage1.orth_weight:g}": plots.METHOD_COLOURS["AA-CLIP"],
            "orth_weight 0": "#9ecae1"}


# --------------------------------------------------------------------------- chapter 3: the patches
def example_level_maps(model, cfg, dataset, rows: int = 4):
    """Anomalous target images, each level's map and their sum (AA-CLIP)."""
    anomalous = [i for i in samples.pick_images(dataset, per_class=1, seed=cfg.train.seed) if dataset.records[i]["label"]]
    chosen = anomalous[:rows]
    maps = unawareness.level_predictions(model, cfg, dataset, chosen, "AA-CLIP")
    pictures, _ = samples.pictures(dataset, chosen)
    return plots.level_maps_figure(pictures, maps, [f"block {b}" for b in model.levels], rows=rows)


def example_heatmaps(cfg, dataset, anomalous: int = 8, normal: int = 4):
    """Final transductive maps of anomalous and normal target images, from the saved predictions."""
    from aaclip.runs.evaluate import load_predictions

    predictions = load_predictions(runs.ensure_predictions(cfg, dataset.info.name))[0]
    rng = np.random.default_rng(cfg.train.seed)
    labels = predictions.labels()
    chosen = [*rng.permutation(np.flatnonzero(labels == 1))[:anomalous], *rng.permutation(np.flatnonzero(labels == 0))[:normal]]
    indices = samples.indices_of(dataset, [predictions.image_path[i] for i in chosen])
    images, masks = samples.pictures(dataset, indices)
    titles = [samples.title(dataset, j, float(predictions.pred_score[i])) for i, j in zip(chosen, indices)]
    return plots.heatmap_figure(images, predictions.anomaly_map[chosen], masks, titles)
