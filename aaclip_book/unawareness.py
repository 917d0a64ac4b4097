"""Chapter 1: where anomaly unawareness comes from, on the text side and on the patch side.

Each function answers one question and returns numbers or a DataFrame; `plots` draws them.
Features, anchors, maps and metrics all come from the library (`aaclip.model`, `aaclip.runs`,
`aaclip.scoring`, `aaclip.metrics`): nothing here re-implements the method.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from aaclip.runs.inference import BASELINE, Method, features, predict_levels
from aaclip_book import samples

METHODS = ("CLIP", "AA-CLIP")


def method_of(name: str, cfg) -> Method:
    return BASELINE if name == "CLIP" else Method.of_run(cfg)


# --------------------------------------------------------------------------- text side
@torch.no_grad()
def anchor_cosine_table(model, cfg, roles: dict[str, str]) -> pd.DataFrame:
    """cos(t_normal, t_abnormal) per class, plain CLIP vs the adapted text encoder.

    roles: {dataset name: role} (e.g. {"mini-aux": "seen", "mini-target": "unseen"}).
    Near 1 means the text side cannot tell "a damaged X" from "an X" (anomaly unawareness).
    """
    from aaclip.data.registry import get_dataset
    from aaclip.prompts import anchor_cosines as cosines_of
    from aaclip.runs.inference import anchors_for

    rows = []
    for dataset, role in roles.items():
        names = get_dataset(dataset, cfg.runtime.data_root).prompt_names
        for method in METHODS:
            anchors = anchors_for(model, method_of(method, cfg), list(names.values()), cfg.eval.precision)
            rows += [{"dataset": dataset, "role": role, "class_name": c, "method": method, "cosine": float(v)}
                     for c, v in zip(names, cosines_of(anchors).cpu().numpy())]
    return pd.DataFrame(rows)


@torch.no_grad()
def direction_agreement(model, cfg, roles: dict[str, str]) -> pd.DataFrame:
    """How much the classes' anomaly directions agree, plain CLIP vs the adapted text encoder.

    A class's anomaly direction is its abnormal anchor minus its normal one, normalised: the
    direction in which a patch feature must move to score as anomalous. Per pair of roles (e.g.
    seen x seen, seen x unseen), the mean cosine between the directions of two different classes:
    near 1, one shared meaning of "abnormal"; near 0, one unrelated direction per class.
    """
    from aaclip.data.registry import get_dataset
    from aaclip.runs.inference import anchors_for

    rows = []
    for method in METHODS:
        directions = {}
        for dataset, role in roles.items():
            names = list(get_dataset(dataset, cfg.runtime.data_root).prompt_names.values())
            anchors = anchors_for(model, method_of(method, cfg), names, cfg.eval.precision)  # (C, D, 2)
            directions[role] = F.normalize((anchors[..., 1] - anchors[..., 0]).float(), dim=-1)  # (C, D)
        kept = list(directions)
        for i, first in enumerate(kept):
            for second in kept[i:]:
                cos = directions[first] @ directions[second].T  # (C1, C2)
                if first == second:  # leave out each class with itself
                    cos = cos[~torch.eye(len(cos), dtype=torch.bool)]
                rows.append({"pair": f"{first} x {second}", "method": method, "agreement": float(cos.mean())})
    return pd.DataFrame(rows).pivot(index="pair", columns="method", values="agreement")[list(METHODS)]


def mean_cosines(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean anchor cosine per role (rows) and method (columns)."""
    return frame.groupby(["role", "method"])["cosine"].mean().unstack()


def cosine_numbers(means: pd.DataFrame, prefix: str = "cos") -> dict:
    """{"cos_unseen_AACLIP": ..., ...} for glue."""
    return {f"{prefix}_{role}_{method.replace('-', '')}": float(v) for (role, method), v in means.stack().items()}


def anchor_change_sentence(means: pd.DataFrame) -> str:
    """The sentence the measured change of the unseen classes' anchor cosine supports."""
    drop = means.loc["unseen", "CLIP"] - means.loc["unseen", "AA-CLIP"]
    if drop > 0.02:
        return f"a drop of {drop:.3f}: stage 1's notion of 'abnormal' carries over to classes it never saw"
    return f"a change of only {-drop:+.3f}: with this run the unseen anchors stayed almost parallel"


# --------------------------------------------------------------------------- patch side
def level_predictions(model, cfg, dataset, indices, method: str):
    """Each level's map and their sum on dataset[indices] (a Batch with level_maps and raw_map)."""
    info = dataset.info
    return predict_levels(model, method_of(method, cfg), dataset.batch(indices), info.prompt_names, info.domain,
                          cfg.eval.precision)


def level_separation(model, cfg, dataset, indices) -> pd.DataFrame:
    """Pixel AUROC and AP of each level's map and of the fused map, plain CLIP vs AA-CLIP.

    How well the patch similarities alone separate defect pixels from normal ones: plain CLIP
    near 0.5 is the patch side of anomaly unawareness.
    """
    from aaclip.metrics import pixel_metrics

    rows = []
    for method in METHODS:
        maps = level_predictions(model, cfg, dataset, indices, method)
        names = [f"block {b}" for b in model.levels]
        for name, values in [*zip(names, maps.level_maps.transpose(1, 0, 2, 3)), ("fused", maps.raw_map)]:
            scores = pixel_metrics(values, maps.masks(), aupro="off")
            rows.append({"method": method, "level": name, "pixel_auroc": scores["pixel_auroc"], "pixel_ap": scores["pixel_ap"]})
    return pd.DataFrame(rows)


def fused_numbers(separation: pd.DataFrame) -> dict:
    fused = separation[separation["level"] == "fused"].set_index("method")["pixel_auroc"]
    return {"clip_fused_auroc": float(fused["CLIP"]), "aaclip_fused_auroc": float(fused["AA-CLIP"])}


def pixel_score_samples(model, cfg, dataset, indices, n: int = 4000, seed: int = 0) -> dict[str, pd.DataFrame]:
    """Per method: fused-map values of up to n defect and n normal pixels, standardised over the sample."""
    samples_by_method = {}
    for method in METHODS:
        maps = level_predictions(model, cfg, dataset, indices, method)
        rng = np.random.default_rng(seed)
        values, mask = maps.raw_map.reshape(-1), maps.masks().reshape(-1)
        parts = []
        for flag, kind in ((True, "defect pixel"), (False, "normal pixel")):
            pool = np.flatnonzero(mask == flag)
            take = rng.choice(pool, size=min(n, pool.size), replace=False) if pool.size else pool
            parts.append(pd.DataFrame({"score": values[take], "pixel": kind}))
        frame = pd.concat(parts, ignore_index=True)
        frame["score"] = (frame["score"] - frame["score"].mean()) / (frame["score"].std() + 1e-12)
        samples_by_method[method] = frame
    return samples_by_method


@torch.no_grad()
def patch_embeddings(model, cfg, sets: dict, per_class: int = 3, patches_per_image: int = 12,
                     seed: int = 0) -> dict[str, pd.DataFrame]:
    """Per method: a t-SNE of last-level patch features of anomalous images, defect vs normal patches.

    sets: {role: AnomalyDataset}. A patch counts as defective when at least half of its pixels
    are in the mask and as normal when none is. Each frame has x, y, role, class_name, patch.
    """
    return {method: _patch_embedding(model, cfg, sets, method_of(method, cfg), per_class, patches_per_image, seed)
            for method in METHODS}


def _patch_embedding(model, cfg, sets, method, per_class, patches_per_image, seed) -> pd.DataFrame:
    from sklearn.manifold import TSNE

    from aaclip.model import autocast

    rng = np.random.default_rng(seed)
    feats, rows = [], []
    for role, dataset in sets.items():
        indices = [i for i in samples.pick_images(dataset, per_class, seed) if dataset.records[i]["label"] == 1]
        for start in range(0, len(indices), cfg.eval.batch_size):
            batch = dataset.batch(indices[start : start + cfg.eval.batch_size])
            with autocast(model.device, cfg.eval.precision):
                seg, _ = features(model, method, batch.image.to(model.device))
            last = seg[-1].float().cpu()  # (B, N, D)
            g = int(round(last.shape[1] ** 0.5))
            fractions = F.adaptive_avg_pool2d(batch.gt_mask.float()[:, None], g).flatten(1)  # (B, N)
            for class_name, tokens, fraction in zip(batch.class_name, last, fractions):
                for kind, pool in (("defect", torch.nonzero(fraction >= 0.5)), ("normal", torch.nonzero(fraction == 0))):
                    pool = pool.reshape(-1).numpy()
                    take = rng.choice(pool, size=min(patches_per_image // 2, pool.size), replace=False)
                    feats.append(tokens[take].numpy())
                    rows += [{"role": role, "class_name": class_name, "patch": kind}] * len(take)
    x = np.concatenate(feats)
    perplexity = float(min(30, max(5, (len(x) - 1) // 4)))
    xy = TSNE(n_components=2, init="pca", perplexity=perplexity, max_iter=500, random_state=seed).fit_transform(x)
    frame = pd.DataFrame(rows)
    frame["x"], frame["y"] = xy[:, 0], xy[:, 1]
    return frame


def separability(frame: pd.DataFrame, seed: int = 0) -> float:
    """Cross-validated accuracy of a 5-nearest-neighbour rule telling defect from normal patches in 2-D."""
    from sklearn.model_selection import cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    labels = (frame["patch"] == "defect").to_numpy()
    folds = int(min(5, np.bincount(labels.astype(int)).min()))
    if folds < 2:
        return float("nan")
    return float(cross_val_score(KNeighborsClassifier(5), frame[["x", "y"]].to_numpy(), labels, cv=folds).mean())


def embedding_numbers(embeddings: dict[str, pd.DataFrame], seed: int = 0) -> dict:
    share = float((embeddings["CLIP"]["patch"] == "defect").mean())
    numbers = {f"knn_{m.replace('-', '')}": separability(frame, seed) for m, frame in embeddings.items()}
    return {**numbers, "majority_rate": max(share, 1 - share)}
