"""The ceiling on the miniature: what a linear probe reads from the frozen tiny CLIP's patch features.

    python -m benchmarks.probe --json benchmarks/results/probe.json --data-root data/miniature

AA-CLIP aligns what its frozen backbone already sees (book:protocol-miniature-clip); this measures what
that is. A patch of the 8 px grid is labelled defective when at least a quarter of its pixels are
in the mask. A logistic regression (C = 0.1, balanced classes) on the standardised patch tokens
(after ln_post) of the feature levels, each alone and all four concatenated:

- trained on four mini-aux classes, tested on the other three (`heldout_aux`, patch AUROC);
- trained on all of mini-aux, tested zero-shot on mini-target (`target`, patch AUROC) and, with its
  decision value as the level map (blurred and upsampled as book:method-scoring), per-class pixel
  AUROC on mini-target and mini-scan (`map_pixel_auroc`), comparable with AA-CLIP's figures.
"""

from __future__ import annotations

import numpy as np

from benchmarks import harness

HELDOUT_TRAIN = ("ring", "plate", "stripes", "mesh")  # the other three mini-aux classes are held out


def main(argv=None) -> dict:
    p = harness.parser(__doc__)
    p.add_argument("--data-root", default="data/miniature", help="a miniature world (aaclip miniature)")
    p.add_argument("--profile", default="miniature")
    args = p.parse_args(argv)
    started = __import__("time").perf_counter()
    device = harness.setup_device(args)
    info = harness.machine(device)

    import torch

    from aaclip.config import Config
    from aaclip.model import AAClip

    cfg = Config.load(args.profile, {"runtime.data_root": args.data_root})
    model = AAClip.from_config(cfg.model, cfg.runtime.data_root, device).eval()
    with torch.no_grad():
        aux, target, scan = (patch_features(model, cfg, name) for name in ("mini-aux", "mini-target", "mini-scan"))
    levels = [str(level) for level in model.levels]
    results = {"levels": {}, "map_pixel_auroc": {}}
    for level in [*levels, "all"]:
        results["levels"][level] = probe_scores(aux, target, level, levels)
    for name, data in (("mini-target", target), ("mini-scan", scan)):
        results["map_pixel_auroc"][name] = map_auroc(aux, data, levels, model, cfg)
    return harness.write_results(args.json, "probe", info, started, argv, settings={
        "data_root": args.data_root, "backbone": model.describe()["weights_sha256"], "levels": model.levels,
        "label": "patch defective if >= 1/4 of its pixels are", "classifier": "LogisticRegression(C=0.1, balanced)",
    }, results=results)  # fmt: skip


def patch_features(model, cfg, name: str) -> dict:
    """Per patch: ln_post tokens at every level, the defect label, the class; and the masks and grid."""
    import torch
    import torch.nn.functional as F

    from aaclip.batch import Batch
    from aaclip.data.dataset import load_dataset

    b = model.backbone
    data = load_dataset(cfg.runtime.data_root, name, b.image_size, b.mean, b.std)
    loader = torch.utils.data.DataLoader(data, batch_size=32, shuffle=False, collate_fn=Batch.collate)
    feats, labels, classes, masks = {str(l): [] for l in model.levels}, [], [], []
    for batch in loader:
        tokens, _ = model.plain_level_tokens(batch.image.to(model.device))
        for level, t in zip(model.levels, tokens):
            feats[str(level)].append(t.cpu().numpy())
        mask = batch.masks().astype(np.float32)
        share = F.avg_pool2d(torch.from_numpy(mask)[:, None], b.patch_size)[:, 0].flatten(1)
        labels.append((share >= 0.25).numpy())
        classes += [c for c in batch.class_name for _ in range(share.shape[1])]
        masks.append(batch.masks())
    flat = {k: np.concatenate(v).reshape(-1, v[0].shape[-1]) for k, v in feats.items()}
    return {"features": flat, "labels": np.concatenate(labels).reshape(-1), "classes": np.array(classes),
            "masks": np.concatenate(masks), "image_classes": np.array([r["class_name"] for r in data.records]),
            "domain": data.info.domain, "grid": b.grid_size}


def design(data: dict, level: str, levels: list[str]) -> np.ndarray:
    return np.concatenate([data["features"][l] for l in levels], 1) if level == "all" else data["features"][level]


def fit(x: np.ndarray, y: np.ndarray):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000, class_weight="balanced")).fit(x, y)


def probe_scores(aux: dict, target: dict, level: str, levels: list[str]) -> dict:
    from sklearn.metrics import roc_auc_score

    x, y = design(aux, level, levels), aux["labels"]
    train = np.isin(aux["classes"], HELDOUT_TRAIN)
    held = fit(x[train], y[train])
    full = fit(x, y)
    return {"heldout_aux": round(float(roc_auc_score(y[~train], held.decision_function(x[~train]))), 3),
            "target": round(float(roc_auc_score(target["labels"], full.decision_function(design(target, level, levels)))), 3)}


def map_auroc(aux: dict, data: dict, levels: list[str], model, cfg) -> dict:
    """The all-level probe's decision values as a map (blur + upsample as scoring does): per-class pixel AUROC."""
    import torch
    from sklearn.metrics import roc_auc_score

    from aaclip import scoring

    probe = fit(design(aux, "all", levels), aux["labels"])
    g, n = data["grid"], len(data["masks"])
    values = probe.decision_function(design(data, "all", levels)).reshape(n, 1, g, g)
    grids = scoring.gaussian_blur(torch.tensor(values, dtype=torch.float32), data["domain"])
    maps = scoring.fuse_levels(grids, cfg.model.image_size).numpy()
    per_class = {}
    for name in dict.fromkeys(data["image_classes"].tolist()):
        rows = data["image_classes"] == name
        per_class[name] = round(float(roc_auc_score(data["masks"][rows].ravel(), maps[rows].ravel())), 3)
    return {"mean": round(float(np.mean(list(per_class.values()))), 3), "per_class": per_class}


if __name__ == "__main__":
    harness.main_guard(main)
