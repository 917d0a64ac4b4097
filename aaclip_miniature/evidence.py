"""What the miniature must show before anything is trained on it (the premise of the paper).

- `native_class_accuracy`: the tiny CLIP recognises the target world's classes zero-shot, with the
  prompt "a photo of a {name}." (it knows the classes);
- `anchor_cosine`: its normal and abnormal text anchors (book:method-anchors) of the target classes
  are nearly the same direction (it cannot tell "a damaged nut" from "a nut");
- `baseline_aurocs`: the plain tiny CLIP scored with the same prompts and no adapters is near
  chance on the target world (it is anomaly-unaware). Scored by `aaclip.runs.evaluate.evaluate`,
  the same code that scores AA-CLIP, so the book compares like with like.
"""

from __future__ import annotations

import torch


def native_class_accuracy(
    model, tokenizer, data_root, dataset: str = "mini-target", image_size: int = 64, batch_size: int = 64
) -> dict:
    """Zero-shot class recognition on a dataset's images (read by the data layer, as any dataset)."""
    from aaclip.data.dataset import load_dataset
    from aaclip.runs.evaluate import class_accuracy as zero_shot
    from aaclip_miniature.tiny_clip import MEAN, STD

    return zero_shot(model, tokenizer, load_dataset(data_root, dataset, image_size, MEAN, STD), batch_size)


@torch.no_grad()
def anchor_cosine(model, tokenizer, prompt_names: dict[str, str]) -> dict:
    """Cosine between each class's normal and abnormal anchors (1.0 = the prompts are indistinguishable)."""
    from aaclip.prompts import anchor_cosines, text_anchors

    cosines = anchor_cosines(text_anchors(model.encode_text, tokenizer, list(prompt_names.values())))
    per_class = {c: float(v) for c, v in zip(prompt_names, cosines)}
    return {"mean": float(cosines.mean()), "per_class": per_class}


def baseline_aurocs(cfg, datasets: tuple[str, ...] = ("mini-target", "mini-scan"), progress: bool = True) -> dict:
    """Plain CLIP with the same prompts, no adapters: dataset means and per-class figures per dataset."""
    from dataclasses import replace

    from aaclip.data.dataset import load_dataset
    from aaclip.model import AAClip
    from aaclip.runs.evaluate import evaluate
    from aaclip.runs.inference import BASELINE

    model = AAClip.from_config(cfg.model, cfg.runtime.data_root, device="cpu", seed=cfg.train.seed)
    backbone, eval_cfg = model.backbone, replace(cfg.eval, aupro="off")  # AUROCs only
    results = {}
    for name in datasets:
        data = load_dataset(cfg.runtime.data_root, name, backbone.image_size, backbone.mean, backbone.std)
        result = evaluate(model, data, BASELINE, eval_cfg, progress=progress)
        results[name] = {
            "image_auroc": result.means["image_auroc"],
            "pixel_auroc": result.means["pixel_auroc"],
            "per_class": {
                c: {"image_auroc": m["image_auroc"], "pixel_auroc": m["pixel_auroc"]} for c, m in result.per_class.items()
            },
        }
    return results
