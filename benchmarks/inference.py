"""Inference: plain OpenCLIP `encode_image` beside AA-CLIP's full map and score, in one run.

    python -m benchmarks.inference --json benchmarks/results/inference.json        # ViT-L-14-336 at 518
    python -m benchmarks.inference --device cuda --batch-sizes 1 8 32 --repeats 10 --warmup 3 --json out.json

- plain: `clip.encode_image(images)`, open_clip's own forward (what a CLIP user already runs);
- AA-CLIP: `aaclip.runs.inference.score_batch`, the very call evaluation times per batch: adapted
  features (book:method-features), the level maps, blur, upsampling and sum and the raw image
  score (book:method-scoring) for an industrial class.
Both run under `torch.no_grad()` and the same autocast (`--precisions fp32 bf16`). Weights are
random (`pretrained="none"`): time and memory do not depend on their values, and nothing is
downloaded. For each (precision, batch size): `--warmup` untimed calls of each path, then
`--repeats` rounds that each time both paths, in alternating order (plain first in odd rounds,
AA-CLIP first in even ones), so a change in machine load hits both alike.
Target (issue 6): AA-CLIP at most 1.15x the plain forward (median time per image).
"""

from __future__ import annotations

import time

from benchmarks import harness

TARGET_RATIO = 1.15


def main(argv=None) -> dict:
    p = harness.parser(__doc__)
    harness.model_arguments(p, batch_sizes=[1, 8], repeats=3, warmup=1)
    args = p.parse_args(argv)
    started = time.perf_counter()
    device = harness.setup_device(args)
    info = harness.machine(device)

    import torch

    from aaclip.config import ModelConfig
    from aaclip.model import AAClip, autocast
    from aaclip.runs.inference import Method, anchors_for, score_batch

    model_cfg = ModelConfig(backbone=args.backbone, pretrained=args.pretrained, image_size=args.image_size)
    torch.manual_seed(args.seed)
    model = AAClip.from_config(model_cfg, device=device).eval()
    method = Method("AA-CLIP", adapted_text=True, image="adapted")
    rows = []
    for precision in args.precisions:
        anchors = anchors_for(model, method, ["object"], precision)  # once per class, as evaluation does
        for batch_size in args.batch_sizes:
            gen = torch.Generator().manual_seed(args.seed)
            images = torch.randn(batch_size, 3, args.image_size, args.image_size, generator=gen).to(device)
            batch_anchors = anchors[[0] * batch_size]

            def plain():
                with torch.no_grad(), autocast(device, precision):
                    model.clip.encode_image(images)

            def aaclip():
                score_batch(model, method, images, batch_anchors, "industrial", precision)

            rows.append(compare(plain, aaclip, device, precision, batch_size, args))
    ratios = [row["ratio"] for row in rows]
    return harness.write_results(
        args.json,
        "inference",
        info,
        started,
        argv,
        settings={
            "backbone": args.backbone,
            "pretrained": "none (random weights)" if args.pretrained == "none" else args.pretrained,
            "image_size": args.image_size,
            "batch_sizes": args.batch_sizes,
            "precisions": args.precisions,
            "repeats": args.repeats,
            "warmup": args.warmup,
            "memory_method": harness.PeakMemory.method(device),
            "aaclip_call": "aaclip.runs.inference.score_batch (features + maps + score)",
            "plain_call": "open_clip CLIP.encode_image",
        },
        model=model.describe(),
        results=rows,
        targets=[harness.target("AA-CLIP / plain time per image (worst setting)", max(ratios), TARGET_RATIO)],
    )


def compare(plain, aaclip, device: str, precision: str, batch_size: int, args) -> dict:
    """Warm both paths up, then time them in alternation; the ratio is AA-CLIP's median over plain's."""
    for _ in range(args.warmup):
        plain()
        aaclip()
    times = {"plain": [], "aaclip": []}
    peaks = {"plain": [], "aaclip": []}
    for r in range(args.repeats):
        for name, fn in harness.alternate([("plain", plain), ("aaclip", aaclip)], r):
            seconds, peak = harness.timed(fn, device)
            times[name].append(seconds)
            peaks[name].append(peak)
        print(
            f"{precision} batch {batch_size} round {r + 1}/{args.repeats}: plain {times['plain'][-1]:.3f} s, "
            f"AA-CLIP {times['aaclip'][-1]:.3f} s",
            flush=True,
        )
    plain_s = harness.summary(times["plain"], peaks["plain"], batch_size)
    aaclip_s = harness.summary(times["aaclip"], peaks["aaclip"], batch_size)
    return {
        "precision": precision,
        "batch_size": batch_size,
        "plain": plain_s,
        "aaclip": aaclip_s,
        "ratio": aaclip_s["median_s"] / plain_s["median_s"],
        "target_met": aaclip_s["median_s"] / plain_s["median_s"] <= TARGET_RATIO,
    }


if __name__ == "__main__":
    harness.main_guard(main)
