"""Training: one stage-2 step with the frozen backbone (ours) beside the same step with backbone
gradients enabled (what the released code does: it forgets to freeze CLIP, book:method-backbone).

    python -m benchmarks.training --json benchmarks/results/training.json          # ViT-L-14-336, 518, batch 2
    python -m benchmarks.training --device cuda --batch-sizes 2 8 --steps 10 --repeats 3 --json out.json

Both configurations run the library's own stage-2 loop, `aaclip.runs.train.Trainer.run_epoch` on
the state `Trainer.prepare_stage(2, dataset)` sets up (adapted features, book:method-stage2's loss
on the frozen anchors, backward, Adam on the image adapters only, the MultiStepLR step), over an
in-memory epoch of `--steps` batches of random images with half-anomalous masks. The only difference: for "backbone gradients" every
CLIP parameter has `requires_grad=True`, so backward also computes (and accumulates) the
gradients of the frozen vision tower (300M weights at ViT-L; the text tower is not in stage 2's
graph, its anchors being fixed) that the optimiser never uses. Backbone gradients are
released before each frozen epoch, as in our training, where they never exist.

Timing: `--warmup` untimed epochs of the backbone-gradient configuration (it runs every kernel
either configuration uses), then `--repeats` rounds, each timing a frozen epoch and then a
backbone-gradient epoch (the order alternates from round to round, so a drifting load favours
neither); seconds per step = epoch time / steps. Target (issue 6): ours at most
0.6x the released configuration.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from aaclip.runs.train import Trainer

from benchmarks import harness

TARGET_RATIO = 0.6


def main(argv=None) -> dict:
    p = harness.parser(__doc__)
    p.add_argument("--backbone", default="ViT-L-14-336", help="open_clip model name (default ViT-L-14-336)")
    p.add_argument("--pretrained", default="none", help="weights: none (random, the default: time does not depend on them), a tag, file or folder")
    p.add_argument("--image-size", type=int, default=518)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[2], help="stage-2 batch sizes (the paper's: 2)")
    p.add_argument("--steps", type=int, default=1, help="optimisation steps per timed epoch")
    p.add_argument("--repeats", type=int, default=3, help="timed epochs per configuration (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed epochs per batch size before timing")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="training precision: fp32 (released, the default) or bf16 autocast")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    started = time.perf_counter()
    device = harness.setup_device(args)
    info = harness.machine(device)

    import torch

    from aaclip.config import Config
    from aaclip.data.registry import get_dataset

    cfg = Config().replace({
        "model.backbone": args.backbone, "model.pretrained": args.pretrained, "model.image_size": args.image_size,
        "runtime.device": device, "train.precision": args.precision, "train.seed": args.seed,
    })  # fmt: skip
    classes = list(get_dataset(cfg.train.dataset).classes[:2])
    torch.manual_seed(args.seed)
    trainer = Trainer(cfg, Path(tempfile.gettempdir()), progress=False)
    model = trainer.build_model()
    rows = [compare(trainer, batch_size, classes, device, args) for batch_size in args.batch_sizes]
    losses = [h["loss"] for h in trainer.history]
    return harness.write_results(
        args.json,
        "training",
        info,
        started,
        argv,
        settings={
            "backbone": args.backbone,
            "pretrained": "none (random weights)" if args.pretrained == "none" else args.pretrained,
            "image_size": args.image_size,
            "batch_sizes": args.batch_sizes,
            "steps_per_epoch": args.steps,
            "repeats": args.repeats,
            "warmup_epochs": args.warmup,
            "precision": effective_precision(device, cfg.train.precision),
            "optimizer": f"Adam(lr={cfg.stage2.lr}, betas={tuple(cfg.train.betas)}) on the image adapters",
            "step": "aaclip.runs.train.Trainer.run_epoch (stage 2)",
            "memory_method": harness.PeakMemory.method(device),
            "per_item": "median_s and items_per_s are per step; ms_per_item per image",
        },
        model=model.describe(),
        results=rows,
        trainable_image_params=sum(p.numel() for p in model.image_parameters()),
        vision_params=sum(p.numel() for p in model.clip.visual.parameters()),
        backbone_params=sum(p.numel() for p in model.clip.parameters()),
        losses_finite=bool(all(map(_finite, losses))),
        steps_run=len(losses),
        targets=[harness.target("frozen / backbone-gradient seconds per step (worst batch size)",
                                max(r["ratio"] for r in rows), TARGET_RATIO)],
    )


def compare(trainer, batch_size: int, classes: list[str], device: str, args) -> dict:
    """Warm up with backbone gradients, then time frozen and backbone-gradient epochs in alternation."""
    from dataclasses import replace

    model = trainer.model
    adapter_ids = {id(p) for p in [*model.text_parameters(), *model.image_parameters()]}
    backbone = list(model.clip.parameters())
    trainer.cfg = trainer.cfg.replace({"stage2.batch_size": batch_size})
    state = trainer.prepare_stage(2, dataset=synthetic_epoch(args.steps * batch_size, args.image_size, classes, args.seed))
    state = replace(state, epochs=0)
    epochs_run = 0

    def configure(backbone_grads: bool) -> None:
        for param in backbone:
            param.requires_grad_(backbone_grads)
            if not backbone_grads:
                param.grad = None
        trainer.trainable = adapter_ids | ({id(p) for p in backbone} if backbone_grads else set())

    def run_epoch() -> None:
        nonlocal epochs_run
        epochs_run += 1
        trainer.run_epoch(state, epochs_run)

    configure(backbone_grads=True)
    for _ in range(args.warmup):
        run_epoch()
    times = {"frozen": [], "backbone_grad": []}
    peaks = {"frozen": [], "backbone_grad": []}
    for r in range(args.repeats):
        for name in harness.alternate(list(times), r):
            configure(backbone_grads=name == "backbone_grad")
            seconds, peak = harness.timed(run_epoch, device)
            times[name].append(seconds / args.steps)
            peaks[name].append(peak)
        print(f"batch {batch_size} round {r + 1}/{args.repeats}: frozen {times['frozen'][-1]:.3f} s/step, "
              f"backbone gradients {times['backbone_grad'][-1]:.3f} s/step", flush=True)
    configure(backbone_grads=False)
    frozen = harness.summary(times["frozen"], peaks["frozen"], batch_size)
    reference = harness.summary(times["backbone_grad"], peaks["backbone_grad"], batch_size)
    ratio = frozen["median_s"] / reference["median_s"]
    return {"batch_size": batch_size, "frozen": frozen, "backbone_grad": reference, "ratio": ratio,
            "target_met": ratio <= TARGET_RATIO}


def synthetic_epoch(n: int, size: int, classes: list[str], seed: int) -> list:
    """Items shaped like AnomalyDataset's (each a Batch of one): random images; every second one
    anomalous with a square defect."""
    import torch

    from aaclip.batch import Batch

    gen = torch.Generator().manual_seed(seed)
    items = []
    for i in range(n):
        mask = torch.zeros(1, size, size, dtype=torch.bool)
        if i % 2:
            mask[:, size // 4 : size // 2, size // 3 : 2 * size // 3] = True
        items.append(Batch(image_path=[f"synthetic/{i}.png"], class_name=[classes[i % len(classes)]],
                           gt_label=torch.tensor([i % 2]), image=torch.randn(1, 3, size, size, generator=gen), gt_mask=mask))
    return items


def effective_precision(device: str, precision: str) -> str:
    """What `aaclip.model.autocast` does with `precision` on this device."""
    return precision


def _finite(x: float) -> bool:
    return x == x and abs(x) != float("inf")


if __name__ == "__main__":
    harness.main_guard(main)
