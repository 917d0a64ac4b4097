"""The book's figures. Each function takes numbers the chapters computed and returns a Figure.

Figures are built with `matplotlib.figure.Figure` (not pyplot), so a notebook shows one only where
it asks to (`glue(...)` or `display(fig)`), never twice. One colour per method throughout:
plain CLIP grey, AA-CLIP blue.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from aaclip.metrics import METRIC_TITLES
from aaclip.viz import mask_outline, overlay

METHOD_COLOURS = {"CLIP": "#8c8c8c", "AA-CLIP": "#1f6fb4"}
PIXEL_COLOURS = {"defect pixel": "#d62728", "normal pixel": "#2ca02c", "defect": "#d62728", "normal": "#2ca02c"}
HISTORY_KEYS = ("stage", "epoch", "step", "lr", "stage_step")


def figure(width: float, height: float, **subplots) -> tuple[Figure, np.ndarray]:
    """A Figure with a grid of axes (always a 2-D array), in the book's style."""
    sns.set_theme(context="notebook", style="whitegrid", font_scale=0.9)
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    axes = fig.subplots(squeeze=False, **subplots)
    return fig, axes


def with_outline(image: np.ndarray, mask: np.ndarray, colour=(255, 255, 255)) -> np.ndarray:
    out = np.array(image, copy=True)
    out[mask_outline(mask)] = colour
    return out


# --------------------------------------------------------------------------- chapter 0
def sample_grid_figure(images, masks, titles, ncols: int = 6) -> Figure:
    """Images with their ground-truth mask outlined in red (normal images have none; `masks=None`: no outlines)."""
    n = len(images)
    nrows = int(np.ceil(n / ncols))
    fig, axes = figure(1.6 * ncols, 1.8 * nrows, nrows=nrows, ncols=ncols)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, mask, title in zip(axes.flat, images, masks if masks is not None else [None] * n, titles):
        ax.imshow(image if mask is None else with_outline(image, mask, (255, 0, 0)))
        ax.set_title(title, fontsize=8)
    return fig


# --------------------------------------------------------------------------- chapters 2 and 3
def loss_columns(frame: pd.DataFrame) -> list[str]:
    """The logged loss terms ("loss" = the total, then its parts) present in a history frame."""
    return [c for c in frame.columns if c not in HISTORY_KEYS and frame[c].notna().any()]


def loss_curve_figure(history: pd.DataFrame, stage: int, smooth: int = 10) -> Figure:
    """Every logged loss of one stage against the step (running mean over `smooth` steps)."""
    frame = history[history["stage"] == stage]
    parts = loss_columns(frame)
    fig, axes = figure(7, 3.2)
    ax = axes[0, 0]
    for column in parts:
        values = frame[column].rolling(smooth, min_periods=1).mean()
        ax.plot(frame["stage_step"], values, label=column, linewidth=2 if column == "loss" else 1.2)
    epochs = frame.groupby("epoch")["stage_step"].max()
    for step in epochs.to_numpy()[:-1]:
        ax.axvline(step, color="#bbbbbb", linewidth=0.8, linestyle=":")
    ax.set_xlabel(f"stage-{stage} step (dotted: epoch ends)")
    ax.set_ylabel("loss (running mean)")
    ax.legend(fontsize=8, ncols=2)
    return fig


def anchor_cosine_figure(frame: pd.DataFrame, hue: str = "method", palette=None) -> Figure:
    """cos(t_normal, t_abnormal) per class, one panel per role (seen / unseen classes).

    Points, not bars, on a y-range fitted to the data: plain CLIP's cosines all sit just below 1,
    and bars from 0 would hide every difference.
    """
    roles = list(dict.fromkeys(frame["role"]))
    fig, axes = figure(4.2 * len(roles), 3.4, ncols=len(roles), sharey=True)
    for ax, role in zip(axes[0], roles):
        part = frame[frame["role"] == role]
        sns.pointplot(part, x="class_name", y="cosine", hue=hue, ax=ax, palette=palette or METHOD_COLOURS,
                      linestyle="none", dodge=0.35, markers="o", markersize=6)
        ax.set_title(f"{role} classes ({part['dataset'].iloc[0]})")
        ax.set_xlabel("")
        ax.set_ylabel("cos(normal anchor, abnormal anchor)")
        ax.tick_params(axis="x", rotation=45)
        ax.legend(fontsize=8)
    return fig


# --------------------------------------------------------------------------- chapter 1
def level_separation_figure(frame: pd.DataFrame) -> Figure:
    """Pixel AUROC of each level's map and of the fused map, CLIP vs AA-CLIP; 0.5 is chance."""
    fig, axes = figure(6.5, 3.2)
    ax = axes[0, 0]
    sns.barplot(frame, x="level", y="pixel_auroc", hue="method", ax=ax, palette=METHOD_COLOURS)
    ax.axhline(0.5, color="black", linewidth=0.8, linestyle="--")
    ax.set_ylim(0, 1)
    ax.set_xlabel("")
    ax.set_ylabel("pixel AUROC")
    ax.legend(fontsize=8)
    return fig


def score_histogram_figure(samples: dict[str, pd.DataFrame]) -> Figure:
    """Standardised anomaly-map values of defect vs normal pixels, one panel per method."""
    fig, axes = figure(4 * len(samples), 3, ncols=len(samples), sharey=True)
    for ax, (method, frame) in zip(axes[0], samples.items()):
        sns.histplot(frame, x="score", hue="pixel", stat="density", common_norm=False, bins=40,
                     element="step", ax=ax, palette=PIXEL_COLOURS)
        ax.set_title(method)
        ax.set_xlabel("anomaly map value (standardised)")
    return fig


def tsne_figure(frames: dict[str, pd.DataFrame]) -> Figure:
    """t-SNE of patch features: colour = defect or normal patch, marker = seen or unseen class."""
    fig, axes = figure(4.6 * len(frames), 4.2, ncols=len(frames))
    for ax, (method, frame) in zip(axes[0], frames.items()):
        sns.scatterplot(frame, x="x", y="y", hue="patch", style="role", ax=ax, s=14, alpha=0.8,
                        palette=PIXEL_COLOURS, linewidth=0)
        ax.set_title(method)
        ax.set_xticks([]), ax.set_yticks([])
        ax.set_xlabel(""), ax.set_ylabel("")
        ax.legend(fontsize=7, markerscale=1.2)
    return fig


# --------------------------------------------------------------------------- chapter 3
def level_maps_figure(pictures, maps, level_names, rows: int = 4, titles: list[str] | None = None) -> Figure:
    """Per image: the picture (uint8, mask outlined), the map of every level, and the fused map.

    `maps`: a Batch with `gt_mask`, `level_maps` and `raw_map` (their sum) for those pictures.

    Each map is stretched over its own range (1st to 99.5th percentile): the levels differ in
    offset and scale, and what this figure shows is where within the image each level responds.
    """
    n_levels = maps.level_maps.shape[1]
    rows = min(rows, len(maps))
    cols = n_levels + 2
    fig, axes = figure(1.55 * cols, 1.6 * rows, nrows=rows, ncols=cols)
    columns = [maps.level_maps[:rows, l] for l in range(n_levels)] + [maps.raw_map[:rows]]
    names = [*level_names, "fused (sum)"]
    gt_mask = maps.masks()
    for r in range(rows):
        axes[r, 0].imshow(with_outline(pictures[r], gt_mask[r], (255, 0, 0)))
        axes[r, 0].set_title(titles[r] if titles else maps.class_name[r], fontsize=8)
        for c, (values, name) in enumerate(zip(columns, names), start=1):
            lo, hi = np.percentile(values[r], [1, 99.5])
            axes[r, c].imshow(values[r], cmap="jet", vmin=lo, vmax=max(hi, lo + 1e-6))
            axes[r, c].contour(gt_mask[r], levels=[0.5], colors="white", linewidths=0.7)
            if r == 0:
                axes[r, c].set_title(name, fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    return fig


def heatmap_figure(images, anomaly_maps, masks, titles, ncols: int = 6, alpha: float = 0.5) -> Figure:
    """Overlays of normalised anomaly maps on a fixed [0, 1] scale, ground truth outlined in white."""
    n = len(images)
    nrows = int(np.ceil(n / ncols))
    fig, axes = figure(1.6 * ncols, 1.8 * nrows, nrows=nrows, ncols=ncols)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, amap, mask, title in zip(axes.flat, images, anomaly_maps, masks, titles):
        ax.imshow(with_outline(overlay(image, amap, 0.0, 1.0, alpha), mask))
        ax.set_title(title, fontsize=8)
    return fig


# --------------------------------------------------------------------------- chapter 4
def class_metric_figure(frame: pd.DataFrame, metrics=("pixel_auroc", "image_auroc"), normalize: str = "transductive") -> Figure:
    """Per-class bars, CLIP beside AA-CLIP, one row per metric and one column per dataset."""
    part = frame[frame["normalize"] == normalize]
    datasets = list(dict.fromkeys(part["dataset"]))
    widths = [max(2.5, 0.55 * part[part["dataset"] == d]["class_name"].nunique() + 1) for d in datasets]
    fig, axes = figure(sum(widths), 2.8 * len(metrics), nrows=len(metrics), ncols=len(datasets),
                       width_ratios=widths, sharey="row")
    for r, metric in enumerate(metrics):
        for c, dataset in enumerate(datasets):
            ax = axes[r, c]
            sns.barplot(part[part["dataset"] == dataset], x="class_name", y=metric, hue="method", ax=ax,
                        palette=METHOD_COLOURS, errorbar=("pi", 100))  # whiskers: the seeds' range
            ax.axhline(0.5, color="black", linewidth=0.8, linestyle="--")
            ax.set_ylim(0, 1)
            ax.set_title(dataset if r == 0 else "")
            ax.set_xlabel("")
            ax.set_ylabel(METRIC_TITLES[metric] if c == 0 else "")
            ax.tick_params(axis="x", rotation=45)
            if (r, c) != (0, 0) and ax.get_legend() is not None:
                ax.get_legend().remove()
    return fig


def normalisation_figure(means: pd.DataFrame, metric: str = "image_auroc") -> Figure:
    """A dataset-level metric under both normalisations, per method."""
    part = means.assign(label=means["dataset"] + " / " + means["method"])
    fig, axes = figure(6, 0.5 * part["label"].nunique() + 1.2)
    sns.barplot(part, y="label", x=metric, hue="normalize", ax=axes[0, 0],
                palette={"transductive": "#1f6fb4", "inductive": "#ff7f0e"})
    axes[0, 0].set_xlim(0, 1)
    axes[0, 0].set_xlabel(METRIC_TITLES[metric])
    axes[0, 0].set_ylabel("")
    return fig


# --------------------------------------------------------------------------- chapter 5
def ablation_figure(frame: pd.DataFrame, metrics=("pixel_auroc", "image_auroc")) -> Figure:
    """Each variant's mean over seeds as a bar, every seed as a dot, the reference's mean as a dashed line."""
    frame = frame.assign(label=frame["group"] + ": " + frame["variant"])
    labels = list(dict.fromkeys(frame["label"]))
    fig, axes = figure(4.2 * len(metrics), 0.32 * len(labels) + 1.2, ncols=len(metrics), sharey=True)
    reference = frame[frame["group"] == "reference"]
    rows = [labels.index(label) for label in frame["label"]]
    for ax, metric in zip(axes[0], metrics):
        means = frame.groupby("label", sort=False)[metric].mean().reindex(labels)
        groups = frame.drop_duplicates("label").set_index("label")["group"].reindex(labels)
        ax.barh(range(len(labels)), means, color=["#1f6fb4" if g == "reference" else "#9ecae1" for g in groups])
        ax.scatter(frame[metric], rows, s=9, color="#333333", zorder=3, linewidths=0)
        if len(reference):
            ax.axvline(float(reference[metric].mean()), color="black", linestyle="--", linewidth=0.9)
        ax.set_xlim(0, 1)
        ax.set_xlabel(METRIC_TITLES[metric])
    axes[0, 0].set_yticks(range(len(labels)), labels)
    axes[0, 0].invert_yaxis()  # the axes share y: inverting one puts the reference on top in all
    return fig
