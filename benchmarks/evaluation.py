"""Evaluation cost: the metrics of one class beside scikit-learn, and the whole test pipeline.

    python -m benchmarks.evaluation --json benchmarks/results/evaluation.json   # 300 maps at 518
    python -m benchmarks.evaluation --n-maps 20 --size 64 --pipeline skip --json out.json

1. Metrics of one class of `--n-maps` maps at `--size` (issue 6: 300 at 518, 80M pixels), the
   synthetic class of `benchmarks/metrics.py` (its functions are reused, not copied):
   `aaclip.metrics.pixel_metrics` with `aupro="off"` (pixel AUROC, AP, F1-max: the same three
   scikit-learn computes, so that ratio is like for like) and with `aupro="exact"` (all four);
   exact AUPRO on its own = the difference of the two medians (it shares their sort).
   scikit-learn: `roc_auc_score`, `average_precision_score`, `precision_recall_curve` on the
   flattened arrays. Peak memory by tracemalloc above the inputs (numpy reports its buffers).
2. The whole test pipeline, `aaclip.runs.evaluate.evaluate` (read and preprocess the images,
   predict, normalise, all metrics with exact AUPRO, write the result files) after
   `aaclip.runs.checkpoint.load_run`, timed per test dataset at miniature scale. The run
   evaluated, in this order of preference: `--save-path`; a finished run of the book under
   `runs/` (miniature profile first, then smoke; the main run before ablations and seeds); with
   `--pipeline train`, the smoke profile trained into a temporary folder for this benchmark, on
   the smoke world (`data/miniature-smoke`, made by `aaclip miniature --size smoke` first if
   missing). The results say which run was used, and how long building and training took (not
   counted in the pipeline's time).
"""

from __future__ import annotations

import json
import shutil
import statistics
import tempfile
import time
import tracemalloc
from pathlib import Path

from benchmarks import harness
from benchmarks import metrics as metrics_bench
from aaclip.errors import AAClipError


def main(argv=None) -> dict:
    p = harness.parser(__doc__)
    p.add_argument("--n-maps", type=int, default=300)
    p.add_argument("--size", type=int, default=518)
    p.add_argument("--repeats", type=int, default=3, help="timed runs of aaclip.metrics per mode (median reported)")
    p.add_argument("--sklearn-repeats", type=int, default=1, help="timed runs of scikit-learn (median reported)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pipeline", choices=["auto", "train", "skip"], default="auto",
                   help="auto: evaluate an existing run, else skip; train: else build and train one at smoke size")
    p.add_argument("--save-path", type=Path, default=None, help="the trained run to evaluate (its folder or last.safetensors)")
    p.add_argument("--data-root", type=Path, default=None, help="data root of that run (default: the run's own)")
    args = p.parse_args(argv)
    started = time.perf_counter()
    device = harness.setup_device(args)
    info = harness.machine(device)
    if args.save_path and not args.save_path.exists():  # before minutes of metrics, not after
        raise AAClipError(f"--save-path {args.save_path}: no such folder or file")

    metric_figures = metric_times(args)
    pipeline = pipeline_times(args, device)
    return harness.write_results(
        args.json,
        "evaluation",
        info,
        started,
        argv,
        settings={
            "n_maps": args.n_maps,
            "size": args.size,
            "repeats": args.repeats,
            "sklearn_repeats": args.sklearn_repeats,
            "memory_method": "tracemalloc peak above the inputs (numpy buffers included)",
        },
        metrics=metric_figures,
        pipeline=pipeline,
        targets=[],
    )


# ---------------------------------------------------------------------------------- 1. metrics
def metric_times(args) -> dict:
    from aaclip.metrics import pixel_metrics

    maps, masks = metrics_bench.synthetic_class(args.n_maps, args.size, args.seed)
    print(f"metrics: {args.n_maps} maps of {args.size}x{args.size} = {maps.size / 1e6:.1f}M pixels", flush=True)
    tracemalloc.start()
    try:
        exact, exact_t, exact_peak = metrics_bench.measure(
            lambda: pixel_metrics(maps, masks, aupro="exact"), args.repeats, "aaclip, exact AUPRO")
        off, off_t, off_peak = metrics_bench.measure(
            lambda: pixel_metrics(maps, masks, aupro="off"), args.repeats, "aaclip, no AUPRO")
        reference, sk_t, sk_peak = metrics_bench.measure(
            lambda: metrics_bench.sklearn_pixel_metrics(maps, masks), args.sklearn_repeats, "scikit-learn")
    finally:
        tracemalloc.stop()
    exact_s, off_s, sk_s = map(statistics.median, (exact_t, off_t, sk_t))
    return {
        "n_maps": args.n_maps,
        "size": args.size,
        "n_pixels": int(maps.size),
        "anomalous_fraction": float(masks.mean()),
        "aaclip_exact": {"metrics": "pixel AUROC, AP, F1-max, AUPRO (exact)", "seconds": exact_t,
                         "median_s": exact_s, "peak_mib": exact_peak / harness.MIB},
        "aaclip_no_aupro": {"metrics": "pixel AUROC, AP, F1-max", "seconds": off_t,
                            "median_s": off_s, "peak_mib": off_peak / harness.MIB},
        "sklearn": {"metrics": "pixel AUROC, AP, F1-max", "seconds": sk_t,
                    "median_s": sk_s, "peak_mib": sk_peak / harness.MIB},
        "aupro_exact_alone_s": max(0.0, exact_s - off_s),
        "speedup_like_for_like": sk_s / off_s,
        "speedup_with_aupro": sk_s / exact_s,
        "max_abs_difference": max(abs(off[k] - reference[k]) for k in reference),
        "values": {"aaclip": exact, "sklearn": reference},
    }


# ---------------------------------------------------------------------------------- 2. pipeline
def pipeline_times(args, device: str) -> dict:
    """Seconds of loading and evaluating a trained miniature run, per test dataset."""
    try:
        run = find_run(args, device)
    except AAClipError as err:
        if args.save_path:
            raise  # the user named the run: say what is wrong with it
        return {"measured": False, "why": f"no run to evaluate: training one failed: {err}"}
    if run is None:
        return {"measured": False, "why": "no trained miniature run found (runs/<profile>/*/last.json) and --pipeline is not train"}
    cfg = run.pop("cfg")
    try:
        datasets = time_datasets(cfg)
    except AAClipError as err:  # report it and keep the other figures
        return {"measured": False, **run, "why": f"the evaluation failed: {err}"}
    finally:
        if run.get("temporary"):
            shutil.rmtree(run["save_path"], ignore_errors=True)
    return {"measured": True, **run, "image_size": cfg.model.image_size, "aupro": cfg.eval.aupro,
            "normalize": cfg.eval.normalize, "datasets": datasets}


def time_datasets(cfg) -> list[dict]:
    """One timed load-and-evaluate per test dataset of the run."""
    from aaclip.data.dataset import load_dataset
    from aaclip.runs.checkpoint import load_run
    from aaclip.runs.evaluate import evaluate
    from aaclip.runs.inference import Method

    datasets = []
    with tempfile.TemporaryDirectory(prefix="aaclip-bench-") as out:
        for name in cfg.eval.datasets:
            start = time.perf_counter()
            model, run_cfg = load_run(cfg.runtime.save_path, root=cfg.runtime.data_root, device=cfg.resolve_device())
            backbone = model.backbone
            data = load_dataset(cfg.runtime.data_root, name, backbone.image_size, backbone.mean, backbone.std)
            result = evaluate(model, data, Method.of_run(run_cfg), cfg.eval, out_dir=Path(out) / name, progress=False)
            seconds = time.perf_counter() - start
            datasets.append({
                "dataset": name,
                "seconds": seconds,
                "n_images": result.n_images,
                "n_classes": result.n_classes,
                "inference_ms_per_image": 1000.0 * result.seconds / max(result.n_images, 1),
                "ms_per_image": 1000.0 * seconds / max(result.n_images, 1),
                "pixel_auroc": result.means.get("pixel_auroc"),
                "image_auroc": result.means.get("image_auroc"),
            })
            print(f"pipeline {name}: {seconds:.1f} s for {result.n_images} images", flush=True)
    return datasets


def find_run(args, device: str) -> dict | None:
    """{"source", "save_path", "data_root", "cfg"} of the run to evaluate, or None."""
    from aaclip.runs.checkpoint import checkpoint_file, read_meta
    from aaclip.config import Config

    if args.pipeline == "skip":
        return None
    candidates = [args.save_path] if args.save_path else book_runs()
    for path in candidates:
        last = checkpoint_file(Path(path) / "last" if Path(path).is_dir() else path)
        if not last.is_file():
            continue
        meta = read_meta(last)
        run_cfg = Config.from_dict(meta["config"])
        data_root = args.data_root or _from_root(run_cfg.runtime.data_root)
        if not world_is_complete(run_cfg, data_root, meta):
            continue  # the run's world is gone, rebuilt since, or being rebuilt
        cfg = run_cfg.replace({"runtime.data_root": str(data_root), "runtime.save_path": str(last.parent),
                               "runtime.device": device})
        source = "given run" if args.save_path else f"the book's {run_cfg.runtime.profile} run"
        return {"source": source, "save_path": str(last.parent), "data_root": str(data_root), "cfg": cfg}
    if args.save_path:
        raise AAClipError(f"--save-path {args.save_path}: no finished run with its test data there")
    return train_smoke_run(device) if args.pipeline == "train" else None


def world_is_complete(run_cfg, data_root: Path, meta: dict) -> bool:
    """The run's test metadata and backbone are where its config says, and its training data are the
    ones it was trained on (the run identity its checkpoint records)."""
    from aaclip.data.registry import metadata_path
    from aaclip.runs.identity import data_digest

    if not all(Path(metadata_path(data_root, name)).is_file() for name in run_cfg.eval.datasets):
        return False
    try:
        current = data_digest(data_root, run_cfg.train.dataset, run_cfg.train.shot)
    except AAClipError:
        return False
    return meta.get("identity", {}).get("train_data") == current


def book_runs() -> list[Path]:
    """Finished runs under runs/: the miniature profile's, then the smoke profile's.

    Within a profile: the book's reference runs (folders named by the run identity's digest alone)
    first, then seed runs, ablations and other variants (the digest plus a suffix); newest first
    within each group.
    """
    found = []
    for rank, profile in enumerate(("miniature", "smoke")):
        for meta_file in (harness.ROOT / "runs" / profile).glob("*/last.json"):
            try:
                meta = json.loads(meta_file.read_text())
            except (OSError, ValueError):
                continue
            if meta.get("finished"):
                run = meta_file.parent
                found.append((rank, 0 if "-" not in run.name else 1, -meta_file.stat().st_mtime, run))
    return [path for *_, path in sorted(found)]


def train_smoke_run(device: str) -> dict:
    """Train the smoke profile into a temporary folder, on the smoke world at the profile's own data root.

    The world is `aaclip miniature --size smoke`'s (`data/miniature-smoke`): instant when it is
    already there, a minute (it pretrains the tiny CLIP) when not.
    """
    import subprocess
    import sys

    from aaclip.config import Config
    from aaclip.runs.train import train

    cfg = Config.load("smoke", {"runtime.device": device})
    data_root = _from_root(cfg.runtime.data_root)
    run = Path(tempfile.mkdtemp(prefix="aaclip-bench-run-"))
    print(f"pipeline: no trained miniature run found; training the smoke profile into {run}", flush=True)
    start = time.perf_counter()
    made = subprocess.run([sys.executable, "-m", "aaclip", "miniature", "--size", "smoke", "--out", str(data_root), "--quiet"],
                          capture_output=True, text=True)
    if made.returncode != 0:
        raise AAClipError(f"aaclip miniature --size smoke failed: {made.stderr.strip()[-500:]}")
    built = time.perf_counter()
    cfg = cfg.replace({"runtime.data_root": str(data_root), "runtime.save_path": str(run)})
    train(cfg, progress=False)
    return {
        "source": "a smoke-profile run trained for this benchmark (no trained miniature run was found)",
        "save_path": str(run),
        "temporary": True,  # deleted after the benchmark
        "data_root": str(data_root),
        "world_was_cached": "reused" in made.stdout,
        "world_build_s": built - start,
        "training_s": time.perf_counter() - built,
        "cfg": cfg,
    }


def _from_root(path: str) -> Path:
    path = Path(path)
    return path if path.is_absolute() else harness.ROOT / path


if __name__ == "__main__":
    harness.main_guard(main)
