"""Chapter 5: which parts of AA-CLIP matter, each variant trained at every seed and compared with the reference.

Every variant changes one thing of the reference run and shares its schedule (`ablation_schedule`),
so that the dozen variants times the seeds cost minutes, not hours. A variant's difference from the
reference counts as an effect only when it exceeds twice the pooled seed standard deviation of the
two (book:protocol-reporting); the table says so, and, where the paper reports an effect, whether
the miniature reproduces it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from aaclip.config import Config
from aaclip.errors import AAClipError
from aaclip_book import runs

FIGURES = ("image_auroc", "pixel_auroc", "pixel_aupro")


@dataclass(frozen=True)
class Ablation:
    group: str  # what the ablation asks, e.g. "stages"
    name: str  # the variant, e.g. "stage 1 only"
    changes: dict  # Config fields ("group.field") that differ from the reference run; empty: the reference
    paper: str = ""  # the effect the paper reports for this change ("lower"), if it reports one


def ablation_schedule(cfg: Config) -> dict:
    """What every variant shares: the reference schedule without augmentation, on a k-shot subset
    (16-shot, or the largest even k <= 16 the training set holds) when the training set is larger."""
    k = max([k for k in (16, 8, 4, 2) if k <= largest_shot(cfg)], default=None)
    if k is None:
        raise AAClipError(f"{cfg.train.dataset} has a class without both a normal and an anomalous image")
    return {"stage1.epochs": min(cfg.stage1.epochs, 1), "stage2.epochs": min(cfg.stage2.epochs, 2),
            "train.augment": False, "train.shot": k}


def largest_shot(cfg: Config) -> int:
    """The largest k for which every training class has k/2 normal and k/2 anomalous images."""
    from aaclip.data.metadata import count_labels, read_metadata
    from aaclip.data.registry import metadata_path

    counts = count_labels(read_metadata(metadata_path(cfg.runtime.data_root, cfg.train.dataset)))
    return 2 * min(min(normal, anomalous) for normal, anomalous in counts.values())


def variants(cfg: Config, vision_depth: int, schedule: dict) -> tuple[list[Ablation], list[str]]:
    """The paper's ablations and the library's switches as changes of the reference run; and the
    k-shot variants this training set cannot support, each with the reason."""
    quarter = max(1, vision_depth // 4)
    chosen = [
        Ablation("reference", f"both stages, {schedule['train.shot']}-shot (reference)", {}),
        Ablation("stages", "stage 1 only", {"stage2.enabled": False}),
        Ablation("stages", "stage 2 only", {"stage1.enabled": False}, paper="lower"),
        Ablation("orthogonal loss", "no orthogonal loss", {"stage1.orth_weight": 0.0}, paper="lower"),
        Ablation("adapter weight", "w = 0.02", {"model.adapter_weight": 0.02}, paper="lower"),
        Ablation("adapter weight", "w = 0.5", {"model.adapter_weight": 0.5}, paper="lower"),
        Ablation("adapted layers", f"{max(1, quarter // 2)} image block(s)", {"model.image_adapt_until": max(1, quarter // 2)}),
        Ablation("adapted layers", f"{2 * quarter} image blocks", {"model.image_adapt_until": 2 * quarter}),
        Ablation("levels", "last level only", {"model.levels": [vision_depth]}, paper="lower"),
        Ablation("stage-1 loss", "paper's stage-1 loss", {"stage1.loss": "paper"}),
        Ablation("activation", "QuickGELU", {"model.activation": "quick_gelu"}),
    ]
    skipped, largest = [], largest_shot(cfg)
    for k in (2, 16, 64):
        if k == schedule["train.shot"]:
            continue
        if k <= largest:
            chosen.append(Ablation("shots", f"{k}-shot", {"train.shot": k}))
        else:
            skipped.append(f"{k}-shot: {cfg.train.dataset} has a class with only {largest // 2} normal or anomalous images")
    chosen.append(Ablation("shots", "full split", {"train.shot": -1}))
    return chosen, skipped


def variant_config(cfg: Config, ablation: Ablation, schedule: dict, seed: int) -> Config:
    """The variant's Config at a training seed: the shared schedule, its changes, its own folder."""
    slug = "".join(ch if ch.isalnum() else "-" for ch in ablation.name.lower()).strip("-")
    return cfg.replace({**schedule, **ablation.changes, "train.seed": seed,
                        "runtime.save_path": f"{cfg.runtime.save_path}-ablations/{slug}-seed{seed}"})


def plan(book) -> tuple[list[Ablation], list[str], dict]:
    """(variants, skipped variants with reasons, shared schedule) for this book's reference run."""
    from aaclip.backbone import load_backbone

    schedule = ablation_schedule(book.cfg)
    depth = load_backbone(book.cfg.model, book.cfg.runtime.data_root).vision_depth
    chosen, skipped = variants(book.cfg, depth, schedule)
    return chosen, skipped, schedule


def ensure_shots(cfg: Config, chosen: list[Ablation], schedule: dict) -> None:
    """Write the k-shot training files the variants need that are missing or stale."""
    from aaclip.data.shots import make_shots, stale_shots

    ks = sorted({schedule["train.shot"], *[v.changes["train.shot"] for v in chosen if "train.shot" in v.changes]})
    stale = stale_shots(cfg.runtime.data_root, cfg.train.dataset, ks, cfg.train.seed)
    if stale:
        make_shots(cfg.runtime.data_root, cfg.train.dataset, stale, seed=cfg.train.seed)


def plan_numbers(chosen: list[Ablation], schedule: dict, book) -> dict:
    recipe = ", ".join(f"{k} = {v}" for k, v in schedule.items())
    return {"n_variants": len(chosen), "n_seeds": len(book.seeds), "recipe": recipe, "ablation_dataset": book.target}


def run_all(book, chosen: list[Ablation], schedule: dict) -> pd.DataFrame:
    """Every variant at every seed, trained (or reused) and tested on the first target (transductive):
    one row per variant and seed with the dataset means (over classes) and the training time."""
    jobs = [(ablation, seed) for ablation in chosen for seed in book.seeds]
    cfgs = [variant_config(book.cfg, ablation, schedule, seed) for ablation, seed in jobs]
    rows = pd.DataFrame(runs.tested_runs(cfgs, [book.target], book.workers, progress=book.progress))
    means = rows.groupby("run", sort=False)[[*FIGURES, "train_seconds"]].mean()
    return pd.DataFrame([{"group": ablation.group, "variant": ablation.name, "seed": seed,
                          **means.loc[cfg.runtime.save_path].to_dict()} for (ablation, seed), cfg in zip(jobs, cfgs)])


def variant_stats(table: pd.DataFrame) -> pd.DataFrame:
    """Mean and sd over seeds of each figure, per (group, variant), the reference first."""
    return table.groupby(["group", "variant"], sort=False)[list(FIGURES)].agg(["mean", "std"])


def effect_table(table: pd.DataFrame, chosen: list[Ablation]) -> pd.DataFrame:
    """Per variant: mean ± sd over seeds of each figure, the difference from the reference, whether it
    exceeds 2 pooled sd, and, where the paper reports an effect, whether the miniature reproduces it.
    With a single seed there is no noise estimate: no difference is marked and no verdict given."""
    stats = variant_stats(table)
    reference = stats.iloc[0]
    rows = []
    for ablation in chosen:
        row = stats.loc[(ablation.group, ablation.name)]
        out = {"group": ablation.group, "variant": ablation.name}
        for metric in FIGURES:
            mean, sd = row[(metric, "mean")], row[(metric, "std")]
            delta, _ = difference(row, reference, metric)
            out[metric] = f"{100 * mean:.1f}" + (f" ± {100 * sd:.1f}" if sd == sd else "")
            out[f"Δ {metric}"] = f"{100 * delta:+.1f}" + (" *" if ablation.changes and beyond_noise(row, reference, metric) else "")
        out["paper"] = f"paper: {ablation.paper}; " + verdict(ablation, row, reference) if ablation.paper else ""
        rows.append(out)
    return pd.DataFrame(rows).set_index(["group", "variant"])


def difference(row, reference, metric: str) -> tuple[float, float | None]:
    """(variant mean - reference mean, pooled sd of the two); the sd is None unless both have 2+ seeds."""
    delta = row[(metric, "mean")] - reference[(metric, "mean")]
    sds = row[(metric, "std")], reference[(metric, "std")]
    if any(sd != sd for sd in sds):  # NaN: a single seed
        return delta, None
    return delta, math.sqrt((sds[0] ** 2 + sds[1] ** 2) / 2)


def beyond_noise(row, reference, metric: str) -> bool:
    delta, noise = difference(row, reference, metric)
    return noise is not None and abs(delta) > 2 * noise


def verdict(ablation: Ablation, row, reference) -> str:
    """'reproduced', 'not reproduced', 'within seed noise' or 'one seed, no noise estimate' for a variant
    the paper reports on (pixel AUROC)."""
    delta, noise = difference(row, reference, "pixel_auroc")
    if noise is None:
        return "one seed, no noise estimate"
    if abs(delta) <= 2 * noise:
        return "here within seed noise"
    return "reproduced" if (delta < 0) == (ablation.paper == "lower") else "not reproduced"


def findings(table: pd.DataFrame, chosen: list[Ablation]) -> dict:
    """What the prose says: the variants whose pixel AUROC differs from the reference beyond 2 sd, and
    the paper's reported effects by verdict ("none" where a list is empty)."""
    stats = variant_stats(table)
    reference = stats.iloc[0]
    row = lambda a: stats.loc[(a.group, a.name)]
    named = lambda names: ", ".join(names) or "none"
    effects = [a.name for a in chosen if a.changes and beyond_noise(row(a), reference, "pixel_auroc")]
    reported = [(a.name, verdict(a, row(a), reference)) for a in chosen if a.paper]
    return {
        "n_effects": len(effects), "effects": named(effects), "n_reported": len(reported),
        "reproduced": named([n for n, v in reported if v == "reproduced"]),
        "not_reproduced": named([n for n, v in reported if v == "not reproduced"]),
        "within_noise": named([n for n, v in reported if v not in ("reproduced", "not reproduced")]),
    }  # fmt: skip


def reference_numbers(table: pd.DataFrame) -> dict:
    ref = table[table["group"] == "reference"]
    return {
        "ref_pixel_auroc": float(100 * ref["pixel_auroc"].mean()),
        "ref_image_auroc": float(100 * ref["image_auroc"].mean()),
        "ref_pixel_auroc_sd": float(100 * ref["pixel_auroc"].std()) if len(ref) > 1 else 0.0,  # one seed: none
        "total_minutes": float(table["train_seconds"].sum() / 60),
    }
