"""The GPU check: what a CUDA machine measures in one short run, at the paper's size (random weights).

    bash benchmarks/gpu_check.sh                          # on a GPU: the whole plan, < 10 min on one H200
    python -m benchmarks.gpu_check --device cpu --backbone ViT-S-16 --image-size 64 --batch-sizes 1 2 \\
        --n-images 6 --compile off --json /tmp/gpu_check.json   # the same code at a tiny size (CI)

1. Inference: `aaclip.runs.inference.score_batch` (adapted features, level maps, blur, fusion, image
   score) in images/s and peak memory, for every batch size, precision (fp32, the default; bf16
   autocast) and `torch.compile` setting (off; on: the vision tower compiled).
2. One stage-2 step (`aaclip.runs.train.Trainer.run_epoch` on a one-batch epoch): seconds and peak
   memory, fp32 and bf16.
3. fp32 against bf16 on one fake class of `--n-images` images (a random texture with a drawn
   defect and its mask): the largest and mean difference of the raw and the normalised maps, and
   of every metric of the class (`aaclip.metrics.evaluate_class`), with the time the full
   evaluation of the class takes.
Weights are random: time, memory and the size of the fp32/bf16 difference do not depend on their
values in a way that matters here, and nothing is downloaded. The results (JSON) feed the book's
benchmarks page (`python -m benchmarks.run_all` includes them when present).
"""

from __future__ import annotations

import time

from benchmarks import harness


def main(argv=None) -> dict:
    p = harness.parser(__doc__)
    harness.model_arguments(p, batch_sizes=[1, 8, 32], repeats=5, warmup=2)
    p.add_argument("--compile", nargs="+", choices=["off", "on"], default=["off", "on"], dest="compile_modes")
    p.add_argument("--n-images", type=int, default=300, help="images of the fake class for the fp32/bf16 comparison")
    args = p.parse_args(argv)
    started = time.perf_counter()
    device = harness.setup_device(args)
    info = harness.machine(device)

    import torch

    from aaclip.config import ModelConfig
    from aaclip.model import AAClip

    torch.manual_seed(args.seed)
    model_cfg = ModelConfig(backbone=args.backbone, pretrained=args.pretrained, image_size=args.image_size)
    model = AAClip.from_config(model_cfg, device=device, seed=args.seed).eval()
    inference = [measure_inference(model, device, args, b, p, c)
                 for c in args.compile_modes for p in args.precisions for b in args.batch_sizes]
    step = [measure_step(model, device, args, p) for p in args.precisions]
    comparison = compare_precisions(model, device, args) if {"fp32", "bf16"} <= set(args.precisions) else None
    return harness.write_results(
        args.json, "gpu_check", info, started, argv,
        settings={"backbone": args.backbone, "pretrained": args.pretrained, "image_size": args.image_size,
                  "repeats": args.repeats, "warmup": args.warmup, "memory_method": harness.PeakMemory.method(device),
                  "inference_call": "aaclip.runs.inference.score_batch",
                  "step": "aaclip.runs.train.Trainer.run_epoch (stage 2, one batch)"},
        model=model.describe(), inference=inference, stage2_step=step, fp32_vs_bf16=comparison, targets=[],
    )  # fmt: skip


def random_images(n: int, size: int, seed: int):
    import torch

    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def measure_inference(model, device: str, args, batch_size: int, precision: str, compile_mode: str) -> dict:
    """images/s and peak memory of score_batch at one setting (compiled: AA-CLIP's image features)."""
    import torch

    from aaclip.runs.inference import Method, anchors_for, score_batch

    method = Method("AA-CLIP", adapted_text=True, image="adapted")
    anchors = anchors_for(model, method, ["object"], precision)[[0] * batch_size]
    images = random_images(batch_size, args.image_size, args.seed).to(device)

    def call():
        score_batch(model, method, images, anchors, "industrial", precision)

    compile_s = None
    if compile_mode == "on":
        model.image_features = torch.compile(type(model).image_features.__get__(model))  # this instance only
        start = time.perf_counter()
        call()  # the first call compiles
        harness.synchronize(device)
        compile_s = time.perf_counter() - start
    try:
        for _ in range(args.warmup):
            call()
        times, peaks = [], []
        for _ in range(args.repeats):
            seconds, peak = harness.timed(call, device)
            times.append(seconds)
            peaks.append(peak)
    finally:
        if compile_mode == "on":
            del model.image_features  # the plain method again
            torch.compiler.reset()
    summary = harness.summary(times, peaks, batch_size)
    print(f"inference {precision} compile={compile_mode} batch {batch_size}: {summary['items_per_s']:.1f} images/s, "
          f"peak {summary['peak_mib']:.0f} MiB", flush=True)
    return {"batch_size": batch_size, "precision": precision, "compile": compile_mode, "compile_s": compile_s, **summary}


def measure_step(model, device: str, args, precision: str) -> dict:
    """One stage-2 step through the library's own loop: seconds and peak memory."""
    import tempfile
    from pathlib import Path

    from aaclip.config import Config
    from aaclip.runs.train import Trainer
    from benchmarks.training import synthetic_epoch

    cfg = Config().replace({"model.backbone": args.backbone, "model.pretrained": args.pretrained,
                            "model.image_size": args.image_size, "runtime.device": device, "train.precision": precision})
    trainer = Trainer(cfg, Path(tempfile.gettempdir()), progress=False)
    trainer.model, trainer.trainable = model, {id(p) for p in model.adapter_parameters()}
    state = trainer.prepare_stage(2, dataset=synthetic_epoch(cfg.stage2.batch_size, args.image_size, ["candle"], args.seed))
    trainer.run_epoch(state, 1)  # warm-up
    times, peaks = [], []
    for epoch in range(2, 2 + args.repeats):
        seconds, peak = harness.timed(lambda e=epoch: trainer.run_epoch(state, e), device)
        times.append(seconds)
        peaks.append(peak)
    summary = harness.summary(times, peaks, cfg.stage2.batch_size)
    print(f"stage-2 step {precision}: {summary['median_s']:.3f} s, peak {summary['peak_mib']:.0f} MiB", flush=True)
    return {"precision": precision, "batch_size": cfg.stage2.batch_size, **summary}


def fake_class(n: int, size: int, seed: int):
    """(images (n, 3, S, S) normalised-like, masks (n, S, S) bool, labels (n,)): half of them with a drawn defect."""
    import numpy as np
    import torch

    rng = np.random.default_rng(seed)
    images = random_images(n, size, seed) * 0.3
    masks = np.zeros((n, size, size), bool)
    ys, xs = np.mgrid[0:size, 0:size]
    for i in range(1, n, 2):
        cy, cx, r = rng.uniform(0.2 * size, 0.8 * size, 2).tolist() + [rng.uniform(0.04, 0.12) * size]
        masks[i] = (ys - cy) ** 2 + (xs - cx) ** 2 <= r * r
        images[i][:, torch.from_numpy(masks[i])] = 2.0
    return images, masks, np.arange(n) % 2


def compare_precisions(model, device: str, args) -> dict:
    """fp32 against bf16 on one fake class: map and metric differences, and the full evaluation's time."""
    import numpy as np

    from aaclip import metrics, scoring
    from aaclip.runs.inference import Method, anchors_for, score_batch

    method = Method("AA-CLIP", adapted_text=True, image="adapted")
    images, masks, labels = fake_class(args.n_images, args.image_size, args.seed)
    batch = max(args.batch_sizes)
    out = {}
    for precision in ("fp32", "bf16"):
        start = time.perf_counter()
        anchors = anchors_for(model, method, ["object"], precision)
        raw_maps, raw_scores = [], []
        for first in range(0, len(images), batch):
            part = images[first : first + batch].to(device)
            raw_map, raw_score = score_batch(model, method, part, anchors[[0] * len(part)], "industrial", precision)
            raw_maps.append(raw_map.float().cpu().numpy())
            raw_scores.append(raw_score.float().cpu().numpy())
        raw_map, raw_score = np.concatenate(raw_maps), np.concatenate(raw_scores)
        anomaly_map, pred_score = scoring.normalize_transductive(raw_map, raw_score, ["object"] * len(raw_map), "industrial")
        values = metrics.evaluate_class(pred_score, labels, anomaly_map, masks, "exact")
        harness.synchronize(device)
        out[precision] = {"raw_map": raw_map, "anomaly_map": anomaly_map, "metrics": values,
                          "evaluation_s": time.perf_counter() - start}
    a, b = out["fp32"], out["bf16"]
    result = {
        "n_images": args.n_images,
        "raw_map_max_abs_difference": float(np.abs(a["raw_map"] - b["raw_map"]).max()),
        "raw_map_mean_abs_difference": float(np.abs(a["raw_map"] - b["raw_map"]).mean()),
        "anomaly_map_max_abs_difference": float(np.abs(a["anomaly_map"] - b["anomaly_map"]).max()),
        "metrics": {"fp32": _plain(a["metrics"]), "bf16": _plain(b["metrics"])},
        "metric_differences": {k: _plain({k: b["metrics"][k] - a["metrics"][k]})[k] for k in metrics.METRIC_NAMES},
        "evaluation_s": {"fp32": a["evaluation_s"], "bf16": b["evaluation_s"]},
    }
    print(f"fp32 vs bf16 on {args.n_images} images: raw maps differ by up to {result['raw_map_max_abs_difference']:.4f}",
          flush=True)
    return result


def _plain(values: dict) -> dict:
    return {k: (None if v != v else float(v)) for k, v in values.items()}


if __name__ == "__main__":
    harness.main_guard(main)
