"""Pixel metrics of one class: aaclip.metrics against scikit-learn on the flattened arrays.

    python -m benchmarks.metrics                      # 300 maps of 518x518 (80M pixels), as the issue asks
    python -m benchmarks.metrics --n-maps 20 --size 128 --repeats 5 --json /tmp/metrics.json

scikit-learn computes pixel AUROC (`roc_auc_score`), AP (`average_precision_score`) and
F1-max (`precision_recall_curve`); aaclip computes the same three plus AUPRO (`--aupro`).
Times are medians over repeats; peak memory is what tracemalloc sees allocated above the
inputs during a call (numpy reports its buffers to tracemalloc). The maps are synthetic but
shaped like real ones: a random 14-pixel-patch grid upsampled bilinearly, defects as
elliptical regions in half of the images, min-max normalised over the class, float32.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
import tracemalloc

import numpy as np
import sklearn
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from aaclip.io import write_json
from aaclip.metrics import pixel_metrics


def synthetic_class(n_maps: int, size: int, seed: int = 0, levels: int = 0):
    """(anomaly_map float32 (N, S, S), gt_mask bool (N, S, S)); `levels` > 0 quantises scores (ties)."""
    rng = np.random.default_rng(seed)
    grid = max(2, size // 14)
    rows, cols = np.mgrid[0:size, 0:size]
    maps = np.empty((n_maps, size, size), dtype=np.float32)
    masks = np.zeros((n_maps, size, size), dtype=bool)
    for i in range(n_maps):
        if i % 2:
            for _ in range(rng.integers(1, 4)):
                cy, cx = rng.uniform(0, size, 2)
                ry, rx = rng.uniform(size / 24, size / 6, 2)
                masks[i] |= ((rows - cy) / ry) ** 2 + ((cols - cx) / rx) ** 2 <= 1
        maps[i] = _upsample(rng.random((grid, grid)), size) + masks[i] * rng.uniform(0.2, 0.8)
    maps -= maps.min()
    maps /= maps.max()
    if levels:
        maps[:] = np.round(maps * levels) / levels
    return maps, masks


def _upsample(grid: np.ndarray, size: int) -> np.ndarray:
    """Bilinear, align_corners=True (book:method-scoring)."""
    at = np.linspace(0, grid.shape[0] - 1, size)
    low = np.minimum(at.astype(int), grid.shape[0] - 2)
    frac = at - low
    rows = grid[low] * (1 - frac)[:, None] + grid[low + 1] * frac[:, None]
    return rows[:, low] * (1 - frac) + rows[:, low + 1] * frac


def sklearn_pixel_metrics(anomaly_map: np.ndarray, gt_mask: np.ndarray) -> dict:
    scores, labels = anomaly_map.ravel(), gt_mask.ravel()
    precision, recall, _ = precision_recall_curve(labels, scores)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = 2 * precision * recall / (precision + recall)
    return {
        "pixel_auroc": float(roc_auc_score(labels, scores)),
        "pixel_ap": float(average_precision_score(labels, scores)),
        "pixel_f1_max": float(np.max(f1[np.isfinite(f1)])),
    }


def measure(fn, repeats: int, label: str):
    """(result, times, peak bytes above the memory in use before each call)."""
    times, peaks, result = [], [], None
    for r in range(repeats):
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
        peaks.append(tracemalloc.get_traced_memory()[1] - before)
        print(f"  {label} run {r + 1}/{repeats}: {times[-1]:.2f} s, peak {peaks[-1] / 2**20:.0f} MiB", flush=True)
    return result, times, max(peaks)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-maps", type=int, default=300)
    parser.add_argument("--size", type=int, default=518)
    parser.add_argument("--repeats", type=int, default=3, help="runs of aaclip.metrics (median reported)")
    parser.add_argument("--sklearn-repeats", type=int, default=1, help="runs of scikit-learn (minutes each at full size)")
    parser.add_argument("--aupro", choices=["exact", "legacy", "off"], default="exact")
    parser.add_argument("--levels", type=int, default=0, help="quantise scores to this many levels (0: continuous)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args(argv)

    maps, masks = synthetic_class(args.n_maps, args.size, args.seed, args.levels)
    distinct = int(np.unique(maps).size)
    print(f"{args.n_maps} maps of {args.size}x{args.size} = {maps.size / 1e6:.1f}M pixels, "
          f"{masks.mean():.1%} anomalous, {distinct} distinct scores", flush=True)
    tracemalloc.start()
    ours, our_times, our_peak = measure(lambda: pixel_metrics(maps, masks, aupro=args.aupro), args.repeats, "aaclip")
    reference, sk_times, sk_peak = measure(lambda: sklearn_pixel_metrics(maps, masks), args.sklearn_repeats, "sklearn")
    tracemalloc.stop()

    figures = {
        "n_maps": args.n_maps,
        "size": args.size,
        "n_pixels": int(maps.size),
        "anomalous_fraction": float(masks.mean()),
        "distinct_scores": distinct,
        "aupro": args.aupro,
        "input_mib": (maps.nbytes + masks.nbytes) / 2**20,
        "aaclip_seconds": statistics.median(our_times),
        "aaclip_times": our_times,
        "sklearn_seconds": statistics.median(sk_times),
        "sklearn_times": sk_times,
        "speedup": statistics.median(sk_times) / statistics.median(our_times),
        "aaclip_peak_mib": our_peak / 2**20,
        "sklearn_peak_mib": sk_peak / 2**20,
        "max_abs_difference": max(abs(ours[k] - reference[k]) for k in reference),
        "aaclip_metrics": ours,
        "sklearn_metrics": reference,
        "environment": {"python": platform.python_version(), "numpy": np.__version__,
                        "scikit-learn": sklearn.__version__, "cpus": os.cpu_count(), "machine": platform.machine()},
    }
    print(f"aaclip.metrics : {figures['aaclip_seconds']:.2f} s (median of {args.repeats}), "
          f"peak {figures['aaclip_peak_mib']:.0f} MiB (AUROC, AP, F1-max, AUPRO {args.aupro})")
    print(f"scikit-learn   : {figures['sklearn_seconds']:.2f} s (median of {args.sklearn_repeats}), "
          f"peak {figures['sklearn_peak_mib']:.0f} MiB (AUROC, AP, F1-max)")
    print(f"speed-up       : {figures['speedup']:.1f}x; inputs {figures['input_mib']:.0f} MiB; "
          f"largest difference from scikit-learn {figures['max_abs_difference']:.1e}")
    if args.json:
        write_json(args.json, figures)
    return figures


if __name__ == "__main__":
    main(sys.argv[1:])
