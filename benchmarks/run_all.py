"""Run every benchmark, write `benchmarks/results/*.json` and the book's table (`table.md`).

    python -m benchmarks.run_all                  # what `make bench` runs: the plan for this device
    python -m benchmarks.run_all --device cuda    # on a GPU: bf16 and larger batches too
    python -m benchmarks.run_all --plan full      # the issue's full set on CPU (hours on 2 cores)
    python -m benchmarks.run_all --quick --out /tmp/bench   # tiny sizes: checks that everything runs

Each benchmark runs as its own process (`inference.py`, `training.py`, `evaluation.py`,
`book_build.py`), so one's memory never counts in another's peak. The results go to a staging
folder first and replace the previous ones only when every script succeeded; then `table.md`
is written from them. A missed target is reported, not an error.

Plans (the issue's figures at ViT-L-14-336, 518 px, random weights):
- `cpu` (default on CPU, sized for < 15 min on 2 cores): inference fp32 batch 1, training
  batch 2, one warm-up and few repeats; batch 8 and bf16 autocast are left to `--plan full`
  and the GPU (this figure's cost is listed with the "not measured" entries of the results).
- `gpu` (default on CUDA): fp32 and bf16, inference batch 1, 8, 32, training batch 2 and 8,
  more repeats.
- `full`: the `gpu` plan's settings on any device.
- `quick`: a small open_clip ViT (ViT-S-16, random weights) at 64 px, one repeat: minutes become seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import harness
from aaclip.errors import AAClipError
from aaclip.io import write_json, write_text

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
BENCHMARKS = ("inference", "training", "evaluation", "book_build")
VIT_L = ["--backbone", "ViT-L-14-336", "--image-size", "518"]
TINY = ["--backbone", "ViT-S-16", "--image-size", "64"]  # a small open_clip ViT, random weights
FULL_METRICS = ["--n-maps", "300", "--size", "518", "--repeats", "3", "--sklearn-repeats", "1"]
PLANS = {
    "cpu": {
        "inference": [*VIT_L, "--batch-sizes", "1", "--precisions", "fp32", "--repeats", "2", "--warmup", "1"],
        "training": [*VIT_L, "--batch-sizes", "2", "--steps", "1", "--repeats", "1", "--warmup", "1"],
        "evaluation": [*FULL_METRICS, "--pipeline", "train"],
        "book_build": [],
    },
    "full": {
        "inference": [*VIT_L, "--batch-sizes", "1", "8", "32", "--precisions", "fp32", "bf16", "--repeats", "10", "--warmup", "3"],
        "training": [*VIT_L, "--batch-sizes", "2", "8", "--steps", "10", "--repeats", "3", "--warmup", "1"],
        "evaluation": [*FULL_METRICS, "--pipeline", "train"],
        "book_build": [],
    },
    "quick": {
        "inference": [*TINY, "--batch-sizes", "1", "2", "--precisions", "fp32", "bf16", "--repeats", "1", "--warmup", "1"],
        "training": [*TINY, "--batch-sizes", "2", "--steps", "1", "--repeats", "1", "--warmup", "1"],
        "evaluation": ["--n-maps", "6", "--size", "64", "--repeats", "1", "--sklearn-repeats", "1", "--pipeline", "auto"],
        "book_build": [],
    },
}
PLANS["gpu"] = PLANS["full"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda or cuda:N")
    p.add_argument("--plan", choices=sorted(PLANS), default=None, help="default: gpu on CUDA, cpu on CPU")
    p.add_argument("--quick", action="store_true", help="the quick plan (tiny sizes)")
    p.add_argument("--only", nargs="+", choices=BENCHMARKS, default=list(BENCHMARKS), help="run these benchmarks only")
    p.add_argument("--out", type=Path, default=RESULTS, help=f"results folder (default {RESULTS.relative_to(harness.ROOT)})")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads in every script")
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    plan = "quick" if args.quick else args.plan or ("gpu" if device.startswith("cuda") else "cpu")
    started = time.perf_counter()
    load_before = harness.load_average()
    print(f"benchmarks: plan {plan} on {device}; load average {load_before}", flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".run-", suffix=".tmp", dir=args.out))  # ignored by git
    try:
        runs = {name: run_script(name, PLANS[plan][name], device, staging, args.threads) for name in args.only}
        record = {
            "plan": plan,
            "device": device,
            "command": " ".join(["python -m benchmarks.run_all", *(argv if argv is not None else sys.argv[1:])]),
            "load_average_before": load_before,
            "load_average_after": harness.load_average(),
            "scripts": runs,
            "total_s": round(time.perf_counter() - started, 1),
        }
        write_json(staging / "run.json", record)
        for path in staging.iterdir():
            os.replace(path, args.out / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    results = load_results(args.out)
    write_text(args.out / "table.md", table(results))
    print(f"\nwrote {args.out}/*.json and table.md in {time.perf_counter() - started:.0f} s\n")
    print(table(results))
    return 0


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def run_script(name: str, plan_args: list[str], device: str, out: Path, threads: int | None) -> dict:
    """Run `python -m benchmarks.<name>` in its own process; raise naming the script if it fails."""
    module = f"benchmarks.{name}"
    command = [sys.executable, "-m", module, *plan_args, "--device", device, "--json", str(out / f"{name}.json")]
    if threads:
        command += ["--threads", str(threads)]
    shown = " ".join(["python", "-m", module, *plan_args, "--device", device])
    print(f"\n== {name}: {shown}", flush=True)
    start = time.perf_counter()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONHASHSEED": "0"}
    finished = subprocess.run(command, cwd=harness.ROOT, env=env)
    seconds = round(time.perf_counter() - start, 1)
    if finished.returncode != 0:
        raise AAClipError(f"{module} failed (exit {finished.returncode}) after {seconds} s; "
                          f"the previous results are unchanged. Command: {shown}")
    return {"command": shown, "seconds": seconds}


def load_results(folder: Path) -> dict:
    results = {}
    for name in (*BENCHMARKS, "gpu_check", "probe", "heldout_aux", "run"):
        path = folder / f"{name}.json"
        if path.is_file():
            results[name] = json.loads(path.read_text())
    return results


# ---------------------------------------------------------------------------------- the table
def table(results: dict) -> str:
    """The markdown the book's appendix includes: headings start at level 2 (the page holds the title)."""
    run = results.get("run", {})
    lines = ["## Latest run", ""]
    first = next((r for r in results.values() if "machine" in r), None)
    if first:
        m = first["machine"]
        lines.append(
            f"Measured {m['date']} on {m['device_name']} ({m['cpu_count']} CPU cores), torch {m['torch']}"
            f"{_threads(results)}, "
            f"open_clip {m['open_clip']}. Last invocation: plan `{run.get('plan', '?')}` "
            f"(`{run.get('command', 'python -m benchmarks.run_all')}`, running {', '.join(run.get('scripts', {})) or '?'}), "
            f"{_minutes(run.get('total_s'))}; load average (1, 5, 15 min) before it "
            f"{_load(run.get('load_average_before'))}, after it {_load(run.get('load_average_after'))}. "
            "Random backbone weights (speed and memory do not depend on their values); medians over the "
            "repeats shown; every ratio compares two figures of the same run."
        )
        lines.append("")
    lines += targets_section(results)
    for name, section in (("inference", inference_section), ("training", training_section),
                          ("evaluation", evaluation_section), ("book_build", book_section), ("gpu_check", gpu_section),
                          ("probe", probe_section), ("heldout_aux", heldout_section)):
        if name in results:
            lines += section(results[name])
    lines += not_measured_section(results)
    return "\n".join(lines).rstrip() + "\n"


def targets_section(results: dict) -> list[str]:
    rows = [(name, t) for name in ("inference", "training") if name in results for t in results[name]["targets"]]
    if not rows:
        return []
    lines = ["### Targets", "", "| benchmark | figure | measured | target | |", "| --- | --- | ---: | ---: | --- |"]
    for name, t in rows:
        lines.append(f"| {name} | {t['name']} | {t['value']:.2f}x | <= {t['limit']}x | {'met' if t['met'] else '**missed**'} |")
    return lines + [""]


def measured(r: dict) -> str:
    """When and under what load one script ran (each section may come from a separate run)."""
    m = r["machine"]
    return (f"*Measured {m['date']}, {r['wall_s']:.0f} s; load average {_load(m.get('load_average_start'))} at the start, "
            f"{_load(m.get('load_average_end'))} at the end. Command: `{r['command']}`.*")


def inference_section(r: dict) -> list[str]:
    s = r["settings"]
    lines = [
        f"### Inference: {s['backbone']} at {s['image_size']} px",
        "",
        measured(r),
        "",
        f"Plain = open_clip `encode_image`; AA-CLIP = `aaclip.runs.inference.score_batch` (adapted features, four "
        f"level maps, blur, upsampling, image score). {s['warmup']} untimed warm-up call(s) per path and "
        f"setting; peak memory: {s['memory_method']}.",
        "",
        "| precision | batch | repeats | plain ms/image | AA-CLIP ms/image | AA-CLIP / plain | AA-CLIP images/s | plain peak MiB | AA-CLIP peak MiB |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in r["results"]:
        a, b = row["plain"], row["aaclip"]
        lines.append(
            f"| {row['precision']} | {row['batch_size']} | {a['repeats']} | {a['ms_per_item']:,.1f} | {b['ms_per_item']:,.1f} | "
            f"{row['ratio']:.3f}x | {b['items_per_s']:.3g} | {a['peak_mib']:,.0f} | {b['peak_mib']:,.0f} |"
        )
    return lines + [""]


def training_section(r: dict) -> list[str]:
    s = r["settings"]
    lines = [
        f"### Training: one stage-2 step, {s['backbone']} at {s['image_size']} px",
        "",
        measured(r),
        "",
        f"`aaclip.runs.train.Trainer.run_epoch` (stage 2, {s['precision']} autocast, {s['optimizer']}): frozen backbone "
        f"(ours) against the same step with `requires_grad=True` on the backbone, so that backward also computes "
        f"the gradients of its {r['vision_params']:,} vision weights (the released code). {s['warmup_epochs']} untimed warm-up epoch(s); {s['steps_per_epoch']} step(s) per "
        f"timed epoch; peak memory: {s['memory_method']}.",
        "",
        "| batch | repeats | frozen s/step | backbone-gradient s/step | frozen / backbone-gradient | frozen peak MiB | backbone-gradient peak MiB |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in r["results"]:
        a, b = row["frozen"], row["backbone_grad"]
        lines.append(
            f"| {row['batch_size']} | {a['repeats']} | {a['median_s']:,.3f} | {b['median_s']:,.3f} | {row['ratio']:.3f}x | "
            f"{a['peak_mib']:,.0f} | {b['peak_mib']:,.0f} |"
        )
    return lines + [""]


def evaluation_section(r: dict) -> list[str]:
    m = r["metrics"]
    lines = [
        f"### Evaluation: metrics of one class ({m['n_maps']} maps at {m['size']} px, {m['n_pixels'] / 1e6:.1f}M pixels)",
        "",
        measured(r),
        "",
        "| implementation | metrics | repeats | median s | peak MiB |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for key, label in (("aaclip_no_aupro", "aaclip.metrics"), ("aaclip_exact", "aaclip.metrics"), ("sklearn", "scikit-learn")):
        e = m[key]
        lines.append(f"| {label} | {e['metrics']} | {len(e['seconds'])} | {e['median_s']:,.2f} | {e['peak_mib']:,.0f} |")
    lines += [
        "",
        f"Exact AUPRO on its own (the difference of the two aaclip medians): {m['aupro_exact_alone_s']:.2f} s. "
        f"aaclip.metrics is {m['speedup_like_for_like']:.1f}x faster than scikit-learn for the same three metrics "
        f"({m['speedup_with_aupro']:.1f}x including exact AUPRO); largest difference from scikit-learn's values "
        f"{m['max_abs_difference']:.1e}.",
        "",
    ]
    pipe = r["pipeline"]
    if not pipe.get("measured"):
        return lines + [f"Whole test pipeline: not measured ({pipe['why']}).", ""]
    lines += [
        "### Evaluation: the whole test pipeline (`aaclip.runs.evaluate.evaluate`) at miniature scale",
        "",
        f"Run evaluated: {pipe['source']}; {pipe['image_size']} px, {pipe['normalize']} normalisation, "
        f"{pipe['aupro']} AUPRO; time from loading the checkpoint to writing the result files.",
        "",
        "| dataset | images | classes | seconds | ms/image (all) | ms/image (inference only) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for d in pipe["datasets"]:
        lines.append(f"| {d['dataset']} | {d['n_images']} | {d['n_classes']} | {d['seconds']:.1f} | "
                     f"{d['ms_per_image']:.0f} | {d['inference_ms_per_image']:.0f} |")
    if "training_s" in pipe:
        world = "was already built" if pipe["world_was_cached"] else f"was built in {pipe['world_build_s']:.0f} s"
        lines += ["", f"(The smoke world {world}; training the run took {pipe['training_s']:.0f} s; neither is counted above.)"]
    return lines + [""]


def book_section(r: dict) -> list[str]:
    b = r["results"]
    lines = ["### The book at miniature scale: execution time per notebook", ""]
    if not b["built"]:
        return lines + [f"Not built ({b['why']}).", ""]
    lines += [
        f"From `{b['timings_file']}`, written by the `aaclip book` build of {b['built_at']} (profile `{b['profile']}`, "
        f"parameters `{json.dumps(b['parameters'])}`).",
        "",
        "| notebook | seconds |",
        "| --- | ---: |",
    ]
    lines += [f"| {name} | {seconds:.1f} |" for name, seconds in b["notebooks"].items()]
    lines.append(f"| **all notebooks** | **{b['notebooks_total_s']:.1f}** |")
    if b.get("total_s") is not None:
        lines.append(f"| whole build (with the HTML) | {b['total_s']:.1f} |")
    return lines + [""]


def probe_section(r: dict) -> list[str]:
    """`benchmarks/probe.py`'s ceiling of the miniature (kept in the results folder; it needs the default world)."""
    s, res = r["settings"], r["results"]
    lines = ["### The miniature's ceiling: a linear probe on the frozen tiny CLIP", "", measured(r), "",
             f"{s['classifier']} on the patch tokens of each level; a patch is defective if >= 1/4 of its pixels are. "
             f"Backbone sha256 {s['backbone'][:12]}. Patch AUROC ({{ref}}`protocol-miniature-clip`):", "",
             "| level | held-out mini-aux classes | mini-target |", "| --- | ---: | ---: |"]
    lines += [f"| {level} | {v['heldout_aux']:.3f} | {v['target']:.3f} |" for level, v in res["levels"].items()]
    maps = ", ".join(f"{name} {v['mean']:.3f}" for name, v in res["map_pixel_auroc"].items())
    return lines + ["", f"The probe's decision value as a level map (blurred and upsampled as scored), pixel AUROC: {maps}.", ""]


def heldout_section(r: dict) -> list[str]:
    """`benchmarks/heldout_aux.py`'s choice of a setting on held-out auxiliary classes (it needs the default world)."""
    s = r["settings"]
    folds = "; ".join(", ".join(f) for f in s["folds"])
    lines = [f"### A setting chosen on held-out {s['dataset']} classes", "", measured(r), "",
             f"Profile `{s['profile']}`, folds (held out) {folds}; training seeds {', '.join(map(str, s['seeds']))}; "
             f"{s['normalize']}, {s['epoch']} epoch. Mean over the folds, ± the sd over the seeds "
             "({ref}`the protocol <protocol-heldout-aux>`):", "",
             "| candidate | image AUROC | pixel AUROC | AUPRO |", "| --- | ---: | ---: | ---: |"]
    for name, v in r["results"].items():
        cells = " | ".join(f"{v['mean'][m]:.3f} ± {v['sd'][m]:.3f}" for m in ("image_auroc", "pixel_auroc", "pixel_aupro"))
        lines.append(f"| `{name}` | {cells} |")
    return lines + [""]


def gpu_section(r: dict) -> list[str]:
    """`benchmarks/gpu_check.sh`'s figures (kept in the results folder when a GPU run made them)."""
    s = r["settings"]
    lines = [f"### GPU check: {s['backbone']} at {s['image_size']} px on {r['machine']['device_name']}", "", measured(r), "",
             "| precision | torch.compile | batch | images/s | ms/image | peak MiB | compile s |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for row in r["inference"]:
        compiled = "" if row["compile_s"] is None else f"{row['compile_s']:.1f}"
        lines.append(f"| {row['precision']} | {row['compile']} | {row['batch_size']} | {row['items_per_s']:.1f} | "
                     f"{row['ms_per_item']:.1f} | {row['peak_mib']:,.0f} | {compiled} |")
    lines += ["", "| stage-2 step | batch | seconds | peak MiB |", "| --- | ---: | ---: | ---: |"]
    lines += [f"| {row['precision']} | {row['batch_size']} | {row['median_s']:.3f} | {row['peak_mib']:,.0f} |"
              for row in r["stage2_step"]]
    c = r.get("fp32_vs_bf16")
    if c:
        diffs = ", ".join(f"{k} {v:+.4f}" for k, v in c["metric_differences"].items() if v is not None)
        lines += ["", f"fp32 against bf16 on a fake class of {c['n_images']} images: raw maps differ by up to "
                      f"{c['raw_map_max_abs_difference']:.4f} (mean {c['raw_map_mean_abs_difference']:.5f}), normalised maps "
                      f"by up to {c['anomaly_map_max_abs_difference']:.4f}; metrics (bf16 minus fp32): {diffs}. The full "
                      f"evaluation of the class took {c['evaluation_s']['fp32']:.1f} s in fp32, {c['evaluation_s']['bf16']:.1f} s in bf16."]
    return lines + [""]


def not_measured_section(results: dict) -> list[str]:
    run = results.get("run", {})
    lines = ["### Not measured in this run", ""]
    if "gpu_check" not in results and not str(run.get("device", "cpu")).startswith("cuda"):
        lines.append("- **GPU** (images/s and peak memory on CUDA, bf16 against fp32, torch.compile, larger batches): "
                     "not measured: no GPU was available. On a CUDA machine: `bash benchmarks/gpu_check.sh` (under 10 "
                     "minutes), or `python -m benchmarks.run_all --device cuda`.")
    if run.get("plan") == "cpu":
        lines.append("- **Inference at batch 8 and under bf16 autocast, training at batch 8** on CPU: left out of the "
                     "15-minute CPU plan (a ViT-L-14-336 forward at 518 takes tens of seconds per image on 2 cores, and "
                     "bf16 autocast several times longer on a CPU without native bf16). "
                     "`python -m benchmarks.run_all --plan full` measures them (hours on 2 cores).")
    if run.get("plan") == "quick":
        lines.append("- Everything at the issue's sizes: this was a `--quick` run (tiny backbone at 64 px).")
    return lines + [""] if len(lines) > 2 else []


def _threads(results: dict) -> str:
    threads = {r["machine"].get("torch_threads") for r in results.values() if "machine" in r} - {None}
    return f" ({'/'.join(map(str, sorted(threads)))} CPU threads)" if threads else ""


def _minutes(seconds) -> str:
    if seconds is None:
        return "duration unknown"
    return f"{int(seconds // 60)} min {seconds % 60:.0f} s in all"


def _load(load) -> str:
    return " / ".join(f"{x:.2f}" for x in load) if load else "unknown"


if __name__ == "__main__":
    try:
        sys.exit(main())
    except AAClipError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
