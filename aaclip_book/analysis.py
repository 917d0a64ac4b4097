"""The measurements the book's chapters show, computed from the library's own model and scoring.

Each function answers one question a chapter asks (how far apart are the anchors? how well does
each level separate defect pixels? what do the ablations cost?) and returns numbers or a
DataFrame; `aaclip.plots` draws them. Nothing here re-implements the method: features, anchors,
maps and metrics come from `aaclip.model`, `aaclip.evaluate`, `aaclip.scoring` and `aaclip.metrics`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from aaclip.config import Config
from aaclip.errors import AAClipError

METRICS = ("image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "pixel_ap", "pixel_f1_max", "pixel_aupro")

# SPEC 8: AA-CLIP's published numbers (VisA full shot -> target, the released log; MVTec-AD -> VisA
# from the paper), as (pixel AUROC, image AUROC) in percent; None where the set has no normal images.
PUBLISHED = {
    "MVTec": (91.9, 90.5),
    "BTAD": (97.0, 94.3),
    "MPDD": (96.6, 77.5),
    "Brain": (95.7, 79.3),
    "Liver": (97.9, 68.8),
    "Retina": (95.3, 81.8),
    "ClinicDB": (89.6, None),
    "ColonDB": (83.6, None),
    "Kvasir": (87.1, None),
    "CVC-300": (96.8, None),
    "VisA": (95.5, 84.6),
}
# SPEC 8: peers on MVTec-AD as published, (image AUROC, pixel AUROC, AUPRO) in percent.
PUBLISHED_PEERS_MVTEC = {
    "WinCLIP": (91.8, 85.1, 64.6),
    "APRIL-GAN": (86.1, 87.6, 44.0),
    "AnomalyCLIP": (91.5, 91.1, 81.4),
}


# --------------------------------------------------------------------------- runs
def trained_model(cfg: Config, progress: bool = True):
    """Train (or find the finished run in cfg.save_path) and return (model in eval mode, TrainResult)."""
    from aaclip.checkpoint import load_model
    from aaclip.train import train

    result = train(cfg, progress=progress)
    model = result.model if result.model is not None else load_model(result.save_path, cfg)[0]
    model.eval()
    return model, result


def history_frame(history: list[dict]) -> pd.DataFrame:
    """One row per optimisation step, with a running step index per stage (for loss curves)."""
    frame = pd.DataFrame(history)
    if not frame.empty:
        frame["stage_step"] = frame.groupby("stage").cumcount() + 1
    return frame


HISTORY_KEYS = ("stage", "epoch", "step", "lr", "stage_step")


def loss_columns(frame: pd.DataFrame) -> list[str]:
    """The logged loss terms ("loss" = the total, then its parts) present in a history frame."""
    return [c for c in frame.columns if c not in HISTORY_KEYS and frame[c].notna().any()]


def epoch_losses(frame: pd.DataFrame, stage: int) -> pd.DataFrame:
    """Mean of every loss term per epoch of one stage."""
    part = frame[frame["stage"] == stage]
    return part.groupby("epoch")[loss_columns(part)].mean()


def prompt_names(cfg: Config, dataset: str) -> dict[str, str]:
    from aaclip.data.registry import get_dataset

    return dict(get_dataset(dataset, cfg.data_root).prompt_names)


# --------------------------------------------------------------------------- text side
@torch.no_grad()
def anchor_cosines(model, cfg: Config, datasets: dict[str, str]) -> pd.DataFrame:
    """cos(t_normal, t_abnormal) per class, plain CLIP vs the adapted text encoder.

    datasets: {dataset name: role} (e.g. {"mini-aux": "seen", "mini-target": "unseen"}).
    Near 1 means the text side cannot tell "a damaged X" from "an X" (anomaly unawareness).
    """
    rows = []
    for dataset, role in datasets.items():
        names = prompt_names(cfg, dataset)
        for adapted, method in ((False, "CLIP"), (True, "AA-CLIP")):
            anchors = model.text_anchors(list(names.values()), adapted=adapted).float()
            cosine = (anchors[..., 0] * anchors[..., 1]).sum(dim=-1).cpu().numpy()
            rows += [
                {"dataset": dataset, "role": role, "class_name": c, "method": method, "cosine": float(v)}
                for c, v in zip(names, cosine)
            ]
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- patch side
@dataclass
class LevelMaps:
    """Per-image maps of one method on a few images, every level separately, at the input size."""

    images: np.ndarray  # uint8 (n, S, S, 3)
    gt_mask: np.ndarray  # bool (n, S, S)
    gt_label: np.ndarray  # (n,)
    class_name: list[str]
    image_path: list[str]
    levels: np.ndarray  # float32 (n, L, S, S): SPEC 6.1-6.2 level maps (blurred), upsampled
    fused: np.ndarray  # float32 (n, S, S): their sum, the raw anomaly map of SPEC 6.3
    level_names: list[str]


@torch.no_grad()
def level_maps(model, cfg: Config, dataset, indices, baseline: bool = False) -> LevelMaps:
    """The map of every level for dataset[indices] (AA-CLIP, or plain CLIP with baseline=True)."""
    from aaclip import evaluate, scoring
    from aaclip.model import autocast
    from aaclip.viz import denormalize

    info = dataset.info
    items = [dataset[i] for i in indices]
    classes = [item["class_name"] for item in items]
    anchors = evaluate.anchors_for(model, cfg, [info.prompt_names[c] for c in classes], baseline)
    images = torch.stack([item["image"] for item in items]).to(model.device)
    with autocast(model.device, cfg.precision):
        seg, _ = evaluate.features(model, cfg, images, baseline)
    grid = scoring.gaussian_blur(scoring.level_maps(seg, anchors), info.domain)
    up = F.interpolate(grid, size=(model.image_size,) * 2, mode="bilinear", align_corners=True)
    mean, std = dataset.normalize.mean, dataset.normalize.std
    return LevelMaps(
        images=denormalize(images.cpu(), mean, std),
        gt_mask=np.stack([item["gt_mask"][0].numpy() != 0 for item in items]),
        gt_label=np.array([item["gt_label"] for item in items]),
        class_name=classes,
        image_path=[item["image_path"] for item in items],
        levels=up.float().cpu().numpy(),
        fused=up.sum(dim=1).float().cpu().numpy(),
        level_names=[f"block {b}" for b in model.levels],
    )


def pick_images(dataset, per_class: int, seed: int = 0, anomalous_first: bool = True) -> list[int]:
    """Up to `per_class` indices per class, anomalous images first, drawn with a fixed seed."""
    rng = np.random.default_rng(seed)
    chosen = []
    for name in dataset.class_names:
        idx = [i for i, r in enumerate(dataset.records) if r["class_name"] == name]
        bad = [i for i in idx if dataset.records[i]["label"] == 1]
        good = [i for i in idx if dataset.records[i]["label"] == 0]
        rng.shuffle(bad), rng.shuffle(good)
        order = bad + good if anomalous_first else good + bad
        chosen += sorted(order[:per_class], key=lambda i: -dataset.records[i]["label"])
    return chosen


def level_separation(model, cfg: Config, dataset, indices) -> pd.DataFrame:
    """Pixel AUROC and AP of each level's map and of the fused map, plain CLIP vs AA-CLIP.

    How well the patch similarities alone separate defect pixels from normal ones: plain CLIP
    near 0.5 is the patch side of anomaly unawareness.
    """
    from aaclip.metrics import pixel_metrics

    rows = []
    for baseline, method in ((True, "CLIP"), (False, "AA-CLIP")):
        maps = level_maps(model, cfg, dataset, indices, baseline)
        for name, values in [*zip(maps.level_names, maps.levels.transpose(1, 0, 2, 3)), ("fused", maps.fused)]:
            scores = pixel_metrics(values, maps.gt_mask, aupro="off")
            rows.append({"method": method, "level": name, "pixel_auroc": scores["pixel_auroc"], "pixel_ap": scores["pixel_ap"]})
    return pd.DataFrame(rows)


def pixel_score_samples(maps: LevelMaps, n: int = 4000, seed: int = 0) -> pd.DataFrame:
    """Fused-map values of up to n defect and n normal pixels, each standardised over the sample."""
    rng = np.random.default_rng(seed)
    values, mask = maps.fused.reshape(-1), maps.gt_mask.reshape(-1)
    rows = []
    for flag, kind in ((True, "defect pixel"), (False, "normal pixel")):
        pool = np.flatnonzero(mask == flag)
        take = rng.choice(pool, size=min(n, pool.size), replace=False) if pool.size else pool
        rows.append(pd.DataFrame({"score": values[take], "pixel": kind}))
    frame = pd.concat(rows, ignore_index=True)
    frame["score"] = (frame["score"] - frame["score"].mean()) / (frame["score"].std() + 1e-12)
    return frame


@torch.no_grad()
def patch_embedding(model, cfg: Config, datasets: dict[str, object], baseline: bool, per_class: int = 3,
                    patches_per_image: int = 12, seed: int = 0) -> pd.DataFrame:
    """t-SNE of last-level patch features of anomalous images: defect vs normal patches, seen vs unseen.

    datasets: {role: AnomalyDataset}. A patch counts as defective when at least half of its pixels
    are in the mask and as normal when none is. Returns x, y, role, class_name, patch.
    """
    from sklearn.manifold import TSNE

    from aaclip import evaluate
    from aaclip.model import autocast

    rng = np.random.default_rng(seed)
    feats, rows = [], []
    for role, dataset in datasets.items():
        indices = [i for i in pick_images(dataset, per_class, seed) if dataset.records[i]["label"] == 1]
        for start in range(0, len(indices), cfg.batch_size):
            items = [dataset[i] for i in indices[start : start + cfg.batch_size]]
            images = torch.stack([item["image"] for item in items]).to(model.device)
            with autocast(model.device, cfg.precision):
                seg, _ = evaluate.features(model, cfg, images, baseline)
            last = seg[-1].float().cpu()  # (B, N, D)
            g = int(round(last.shape[1] ** 0.5))
            for item, tokens in zip(items, last):
                fraction = F.adaptive_avg_pool2d(item["gt_mask"][None], g).reshape(-1)
                for kind, pool in (("defect", torch.nonzero(fraction >= 0.5)), ("normal", torch.nonzero(fraction == 0))):
                    pool = pool.reshape(-1).numpy()
                    take = rng.choice(pool, size=min(patches_per_image // 2, pool.size), replace=False)
                    feats.append(tokens[take].numpy())
                    rows += [{"role": role, "class_name": item["class_name"], "patch": kind}] * len(take)
    x = np.concatenate(feats)
    perplexity = float(min(30, max(5, (len(x) - 1) // 4)))
    xy = TSNE(n_components=2, init="pca", perplexity=perplexity, max_iter=500, random_state=seed).fit_transform(x)
    frame = pd.DataFrame(rows)
    frame["x"], frame["y"] = xy[:, 0], xy[:, 1]
    return frame


def separability(frame: pd.DataFrame, seed: int = 0) -> float:
    """Cross-validated accuracy of a nearest-centroid rule telling defect from normal patches in 2-D."""
    from sklearn.model_selection import cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    labels = (frame["patch"] == "defect").to_numpy()
    folds = int(min(5, np.bincount(labels.astype(int)).min()))
    if folds < 2:
        return float("nan")
    return float(cross_val_score(KNeighborsClassifier(5), frame[["x", "y"]].to_numpy(), labels, cv=folds).mean())


# --------------------------------------------------------------------------- results
def results_dir(cfg: Config, dataset: str, method: str, normalize: str) -> Path:
    return Path(cfg.save_path) / "results" / dataset / f"{method}-{normalize}"


def evaluate_methods(model, cfg: Config, dataset: str, baseline_model=None, progress: bool = True) -> pd.DataFrame:
    """Per-class metrics of AA-CLIP and plain CLIP under both normalisations (aaclip.evaluate.test).

    Writes each run's per_class.csv/summary.json under `results_dir`, and AA-CLIP's transductive
    predictions (predictions.npz) for the heatmap explorer. Returns a long DataFrame:
    dataset, method, normalize, class_name, one column per metric.
    """
    from aaclip.evaluate import test

    rows = []
    for method in ("CLIP", "AA-CLIP"):
        for normalize in ("transductive", "inductive"):
            run_cfg = cfg.replace(normalize=normalize)
            summary = test(
                run_cfg, dataset, baseline=method == "CLIP", out_dir=results_dir(cfg, dataset, method, normalize),
                model=baseline_model if method == "CLIP" else model,
                save_predictions=(method, normalize) == ("AA-CLIP", "transductive"), progress=progress,
            )
            for class_name, values in summary["per_class"].items():
                rows.append({"dataset": dataset, "method": method, "normalize": normalize, "class_name": class_name,
                             **{m: values[m] for m in METRICS}})
    return pd.DataFrame(rows)


def dataset_means(frame: pd.DataFrame) -> pd.DataFrame:
    """Unweighted means over classes, NaN skipped (SPEC 8), with the number of classes used."""
    keys = ["dataset", "method", "normalize"]
    means = frame.groupby(keys, sort=False)[list(METRICS)].mean()
    counts = frame.groupby(keys, sort=False)[list(METRICS)].count().add_suffix("_n")
    return pd.concat([means, counts], axis=1).reset_index()


def published_comparison(means: pd.DataFrame) -> pd.DataFrame:
    """Ours (transductive, as released) beside SPEC 8's published AA-CLIP numbers, in percent."""
    ours = means[(means["method"] == "AA-CLIP") & (means["normalize"] == "transductive")]
    rows = []
    for _, row in ours.iterrows():
        published = PUBLISHED.get(row["dataset"], (None, None))
        rows.append({
            "dataset": row["dataset"],
            "pixel AUROC (ours)": 100 * row["pixel_auroc"], "pixel AUROC (published)": published[0],
            "image AUROC (ours)": 100 * row["image_auroc"], "image AUROC (published)": published[1],
        })
    return pd.DataFrame(rows)


def saved_predictions(model, cfg: Config, dataset: str, progress: bool = True):
    """AA-CLIP's transductive predictions on `dataset`: loaded if chapter 4 saved them, else computed."""
    from aaclip.evaluate import load_predictions, test

    path = results_dir(cfg, dataset, "AA-CLIP", "transductive") / "predictions.npz"
    if not path.is_file():
        test(cfg.replace(normalize="transductive"), dataset, out_dir=path.parent, model=model,
             save_predictions=True, progress=progress)
    return load_predictions(path)


# --------------------------------------------------------------------------- ablations
@dataclass(frozen=True)
class Ablation:
    group: str  # what the ablation asks, e.g. "stages"
    name: str  # the variant, e.g. "stage 1 only"
    changes: dict  # Config fields that differ from the reference run (empty: the reference itself)


def ablation_schedule(cfg: Config) -> dict:
    """What every variant shares: a short schedule (1 stage-1 epoch, up to 2 stage-2 epochs), no
    augmentation, and a k-shot training file (16-shot, or the largest even k <= 16 the training
    set holds), so that the dozen runs cost minutes, not hours. The reference row uses it too."""
    k = max([k for k in (16, 8, 4, 2) if k <= largest_shot(cfg)], default=None)
    if k is None:
        raise AAClipError(f"{cfg.train_dataset} has a class without both a normal and an anomalous image")
    return {"stage1_epochs": min(cfg.stage1_epochs, 1), "stage2_epochs": min(cfg.stage2_epochs, 2), "augment": False, "shot": k}


def largest_shot(cfg: Config) -> int:
    """The largest k for which every training class has k/2 normal and k/2 anomalous images."""
    from aaclip.data.metadata import read_metadata
    from aaclip.data.registry import metadata_path

    records = read_metadata(metadata_path(cfg.data_root, cfg.train_dataset))
    counts = pd.crosstab(pd.Series([r["class_name"] for r in records]), pd.Series([r["label"] for r in records]))
    return 2 * int(counts.reindex(columns=[0, 1], fill_value=0).min().min())


def ablations(cfg: Config, vision_depth: int, schedule: dict) -> tuple[list[Ablation], list[str]]:
    """SPEC's switches and the paper's ablations as changes of the reference run; and the variants
    this training set cannot support (a k-shot larger than its smallest class), with the reason."""
    quarter = max(1, vision_depth // 4)
    variants = [
        Ablation("reference", f"both stages, {schedule['shot']}-shot (reference)", {}),
        Ablation("stages", "stage 1 only", {"train_stage2": False}),
        Ablation("stages", "stage 2 only", {"train_stage1": False}),
        Ablation("orthogonal loss", "no orthogonal loss", {"orth_weight": 0.0}),
        Ablation("adapter weight", "w = 0.02", {"adapter_weight": 0.02}),
        Ablation("adapter weight", "w = 0.5", {"adapter_weight": 0.5}),
        Ablation("adapted layers", f"{max(1, quarter // 2)} image block(s)", {"image_adapt_until": max(1, quarter // 2)}),
        Ablation("adapted layers", f"{2 * quarter} image blocks", {"image_adapt_until": 2 * quarter}),
        Ablation("levels", "last level only", {"levels": [vision_depth]}),
        Ablation("stage-1 loss", "paper's stage-1 loss", {"stage1_loss": "paper"}),
        Ablation("activation", "QuickGELU", {"activation": "quick_gelu"}),
    ]
    skipped, largest = [], largest_shot(cfg)
    for k in (2, 16, 64):
        if k == schedule["shot"]:
            continue
        if k <= largest:
            variants.append(Ablation("shots", f"{k}-shot", {"shot": k}))
        else:
            skipped.append(f"{k}-shot: {cfg.train_dataset} has a class with only {largest // 2} normal or anomalous images")
    variants.append(Ablation("shots", "full split", {"shot": -1}))
    return variants, skipped


def ablation_config(cfg: Config, ablation: Ablation, schedule: dict) -> Config:
    """The variant's Config: the shared schedule, its changes, and its own save path beside the run."""
    slug = "".join(ch if ch.isalnum() else "-" for ch in ablation.name.lower()).strip("-")
    return cfg.replace(**{**schedule, **ablation.changes}, save_path=f"{cfg.save_path}-ablations/{slug}")


def ensure_shots(cfg: Config, ks) -> None:
    """Write the k-shot files of the training set that are missing or stale (`aaclip.data.shots.stale_shots`)."""
    from aaclip.data.shots import make_shots, stale_shots

    stale = stale_shots(cfg.data_root, cfg.train_dataset, list(ks), cfg.seed)
    if stale:
        make_shots(cfg.data_root, cfg.train_dataset, stale, seed=cfg.seed)


def run_ablation(cfg: Config, ablation: Ablation, schedule: dict, dataset: str, progress: bool = False) -> dict:
    """Train the variant (cached per save path) and test it on `dataset` (transductive, as released)."""
    from aaclip.evaluate import test

    variant = ablation_config(cfg, ablation, schedule)
    model, result = trained_model(variant, progress=progress)
    summary = test(variant.replace(normalize="transductive"), dataset, model=model, progress=progress)
    return {
        "group": ablation.group, "variant": ablation.name,
        **{m: summary[m] for m in ("image_auroc", "pixel_auroc", "pixel_aupro")},
        "train_seconds": sum(result.seconds.values()), "cached": result.cached,
    }


def vision_depth(cfg: Config) -> int:
    """Number of vision blocks of cfg's backbone (loads it once; the ablations size their variants by it)."""
    from aaclip.backbone import load_backbone

    return load_backbone(cfg, device="cpu").vision_depth


# --------------------------------------------------------------------------- pictures and evidence
def pictures(dataset, indices) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images (n, S, S, 3), bool masks (n, S, S)) of dataset[indices], as the model sees them."""
    from aaclip.viz import denormalize

    items = [dataset[i] for i in indices]
    images = denormalize(torch.stack([item["image"] for item in items]), dataset.normalize.mean, dataset.normalize.std)
    return images, np.stack([item["gt_mask"][0].numpy() != 0 for item in items])


def pretraining_twins(world: dict, pairs: int = 6) -> tuple[np.ndarray, list[str]]:
    """The miniature's first twin pairs as its tiny CLIP saw them: (uint8 images (2 * pairs, S, S, 3), titles),
    the unmarked pictures first and their marked twins after, in the same order.

    `world` is the world's summary (its seed and size say which pictures were drawn).
    """
    from aaclip.miniature import catalog, generate

    size = catalog.SIZES[world["size"]]["image_px"]
    order = [2 * pair for pair in range(pairs)] + [2 * pair + 1 for pair in range(pairs)]
    drawn = [generate.pretrain_picture(i, world["seed"], size) for i in order]
    titles = [picture.scene.class_name + (f"\n+ {picture.mark}" if picture.mark else "") for picture, _ in drawn]
    return np.stack([pixels for _, pixels in drawn]), titles


def indices_of(dataset, image_paths) -> list[int]:
    """Dataset indices of predictions' image paths (absolute, as the dataset items report them)."""
    where = {str(dataset.root / r["image_path"]): i for i, r in enumerate(dataset.records)}
    return [where[str(p)] for p in image_paths]


def split_table(datasets: dict[str, object], roles: dict[str, str]) -> pd.DataFrame:
    """Per dataset and class: role, domain, normal and anomalous test images, descriptive name."""
    rows = []
    for name, dataset in datasets.items():
        for class_name in dataset.class_names:
            labels = [r["label"] for r in dataset.records if r["class_name"] == class_name]
            rows.append({"dataset": name, "role": roles[name], "domain": dataset.info.domain, "class_name": class_name,
                         "prompt name": dataset.info.prompt_names[class_name],
                         "normal": labels.count(0), "anomalous": labels.count(1)})
    return pd.DataFrame(rows)


def class_accuracy(model, cfg: Config, dataset) -> float:
    """Zero-shot class recognition of plain CLIP: "a photo of a {name}." against the dataset's classes."""
    from aaclip.miniature.evidence import zero_shot_accuracy
    from aaclip.model import autocast

    with autocast(model.device, cfg.precision):
        return zero_shot_accuracy(model.clip, model.backbone.tokenizer, dataset, cfg.batch_size, model.device)["accuracy"]


def unawareness_evidence(model, cfg: Config, dataset) -> dict:
    """Plain CLIP on a target set: knows the classes (accuracy) but not the anomalies (AUROCs near 0.5)."""
    from aaclip.evaluate import test

    summary = test(cfg, dataset, baseline=True, model=model, progress=False)
    cosines = anchor_cosines(model, cfg, {dataset.info.name: "target"})
    return {
        "class_accuracy": class_accuracy(model, cfg, dataset),
        "baseline_image_auroc": summary["image_auroc"],
        "baseline_pixel_auroc": summary["pixel_auroc"],
        "anchor_cosine": float(cosines[cosines["method"] == "CLIP"]["cosine"].mean()),
    }

