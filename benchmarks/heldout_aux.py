"""Choosing a training setting without the target: held-out auxiliary classes (book:protocol-heldout-aux).

    python -m benchmarks.heldout_aux --json benchmarks/results/heldout_aux.json \\
        --candidate stage1.orth_weight=0.1 --candidate stage1.orth_weight=1.0

Each fold holds out some classes of the auxiliary set (default: one object and one texture of
mini-aux, three folds that hold out six of its seven classes once each), trains every candidate
setting on the others and tests it on the held-out ones (transductive, last epoch). Stage 2's
milestones are scaled with its iteration count, so a fold's schedule keeps the profile's shape.
The summary gives, per candidate, the mean over folds at each training seed, then the mean and the
standard deviation of those over the seeds. No target dataset is read.
"""

from __future__ import annotations

import math
import statistics
import tempfile
from pathlib import Path

import yaml

from aaclip.errors import AAClipError
from benchmarks import harness

FOLDS = ("ring,stripes", "plate,mesh", "cookie,marble")  # mini-aux: each an object and a texture
METRICS = ("image_auroc", "pixel_auroc", "pixel_aupro")


def main(argv=None) -> dict:
    p = harness.parser(__doc__)
    p.add_argument("--data-root", default=None, help="where the auxiliary set and the backbone are (default: the profile's)")
    p.add_argument("--profile", default="miniature")
    p.add_argument("--dataset", default=None, help="the auxiliary set (default: the profile's train.dataset)")
    p.add_argument("--folds", nargs="+", default=list(FOLDS), help="comma-separated held-out classes, one per fold")
    p.add_argument("--candidate", action="append", required=True,
                   help="KEY=VALUE[;KEY=VALUE...] config overrides of one candidate (values read as YAML)")
    p.add_argument("--seeds", type=int, nargs="+", default=[111, 0, 1])
    p.add_argument("--workers", type=int, default=1, help="training processes at once (each on the profile's threads)")
    p.add_argument("--work-dir", type=Path, default=None, help="where fold data and runs go (default: a temporary one)")
    args = p.parse_args(argv)
    started = __import__("time").perf_counter()
    info = harness.machine(harness.setup_device(args, uses_torch=False))

    from aaclip.config import Config
    from aaclip.data.metadata import read_metadata
    from aaclip.data.registry import get_dataset, metadata_path

    base = Config.load(args.profile, {"runtime.device": args.device, **({"runtime.data_root": args.data_root}
                                                                       if args.data_root else {}),
                                      **({"runtime.threads": args.threads} if args.threads else {})})
    candidates = {text: parse_candidate(text) for text in args.candidate}
    for text, changes in candidates.items():  # every key and value checked before any training
        base.replace(changes)
    aux = args.dataset or base.train.dataset
    root = Path(base.runtime.data_root)
    dataset_info = get_dataset(aux, root)
    records = read_metadata(metadata_path(root, aux))
    folds = [parse_fold(text, dataset_info.prompt_names, aux) for text in args.folds]
    with tempfile.TemporaryDirectory(prefix="heldout-aux-") as tmp:
        work = args.work_dir or Path(tmp)
        per_run = run_folds(base, work, root / dataset_info.folder, records, dataset_info, folds, candidates, args)
    results = summarise(per_run, candidates, args.seeds)
    return harness.write_results(args.json, "heldout_aux", info, started, argv, settings={
        "profile": args.profile, "data_root": str(root), "threads": base.runtime.threads, "dataset": aux, "folds": [list(f) for f in folds],
        "seeds": args.seeds, "normalize": base.eval.normalize, "epoch": "last",
    }, results=results)  # fmt: skip


def parse_candidate(text: str) -> dict:
    """'stage1.orth_weight=1.0;stage1.epochs=4' -> {"stage1.orth_weight": 1.0, "stage1.epochs": 4}."""
    changes = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise AAClipError(f"--candidate {text!r}: write KEY=VALUE (e.g. stage1.orth_weight=1.0), got {part!r}")
        changes[key.strip()] = yaml.safe_load(value)
    return changes


def parse_fold(text: str, prompt_names: dict, aux: str) -> tuple[str, ...]:
    held = tuple(c.strip() for c in text.split(",") if c.strip())
    unknown = [c for c in held if c not in prompt_names]
    if not held or unknown:
        raise AAClipError(f"--folds {text!r}: {', '.join(unknown) or 'no class'} not a class of {aux} "
                          f"(its classes: {', '.join(prompt_names)})")
    if len(held) == len(prompt_names):
        raise AAClipError(f"--folds {text!r}: holds out every class of {aux}; nothing is left to train on")
    return held


def write_subset(root: Path, name: str, source: Path, records: list[dict], info, classes) -> int:
    """A dataset folder `root/name` with only `classes` (their folders linked, not copied); returns its size."""
    from aaclip.data.metadata import write_metadata
    from aaclip.data.registry import custom_info, metadata_filename, write_custom_info

    folder = root / name
    folder.mkdir(parents=True)
    for c in classes:
        (folder / c).symlink_to((source / c).resolve(), target_is_directory=True)
    kept = [r for r in records if r["class_name"] in classes]
    write_metadata(folder / metadata_filename(), kept)
    names = {c: info.prompt_names[c] for c in classes}
    write_custom_info(folder, custom_info(name, names, info.domain, info.has_masks, made_by="benchmarks.heldout_aux"))
    return len(kept)


def scaled_milestones(milestones: list[int], n_full: int, n_fold: int, epochs: int, batch_size: int) -> list[int]:
    """Stage 2's milestones at the same share of the fold's iterations as of the full set's."""
    full, fold = epochs * math.ceil(n_full / batch_size), epochs * math.ceil(n_fold / batch_size)
    return [max(1, round(m * fold / full)) for m in milestones]


def run_folds(base, work: Path, source: Path, records, info, folds, candidates, args) -> list[dict]:
    """Train and test every candidate x fold x seed; one row per (candidate, fold, seed), metrics class-averaged."""
    from aaclip_book.runs import tested_runs

    data_root = work / "data"
    data_root.mkdir(parents=True, exist_ok=True)
    backbone = Path(base.runtime.data_root) / base.model.pretrained
    if backbone.exists() and not (data_root / base.model.pretrained).exists():  # a folder relative to data_root
        (data_root / base.model.pretrained).symlink_to(backbone.resolve())
    rows = []
    for k, held in enumerate(folds):
        train_classes = [c for c in info.prompt_names if c not in held]
        n_fold = write_subset(data_root, f"fold{k}-train", source, records, info, train_classes)
        write_subset(data_root, f"fold{k}-heldout", source, records, info, held)
        s2 = base.stage2
        milestones = scaled_milestones(s2.milestones, len(records), n_fold, s2.epochs, s2.batch_size)
        jobs = {}
        for c, (text, changes) in enumerate(candidates.items()):
            for seed in args.seeds:
                save = work / "runs" / f"fold{k}" / f"candidate{c}-seed{seed}"
                jobs[str(save)] = (text, seed, base.replace({
                    "runtime.data_root": str(data_root), "train.dataset": f"fold{k}-train", "train.seed": seed,
                    "stage2.milestones": milestones, **changes, "runtime.save_path": str(save)}))
        tested = tested_runs([cfg for _, _, cfg in jobs.values()], [f"fold{k}-heldout"], workers=args.workers)
        for save, (text, seed, _) in jobs.items():
            per_class = [r for r in tested if r["run"] == save]
            rows.append({"candidate": text, "fold": ",".join(held), "seed": seed,
                         **{m: statistics.fmean(r[m] for r in per_class) for m in METRICS}})
        print(f"fold {k + 1}/{len(folds)} ({', '.join(held)} held out): {len(jobs)} runs", flush=True)
    return rows


def summarise(rows: list[dict], candidates: dict, seeds: list[int]) -> dict:
    """Per candidate: each run, the fold mean at each seed, and mean / sd of those over the seeds."""
    out = {}
    for text in candidates:
        mine = [r for r in rows if r["candidate"] == text]
        by_seed = {s: {m: statistics.fmean(r[m] for r in mine if r["seed"] == s) for m in METRICS} for s in seeds}
        out[text] = {
            "runs": mine,
            "by_seed": {str(s): v for s, v in by_seed.items()},
            "mean": {m: statistics.fmean(v[m] for v in by_seed.values()) for m in METRICS},
            "sd": {m: statistics.stdev(v[m] for v in by_seed.values()) if len(seeds) > 1 else 0.0 for m in METRICS},
        }
    return out


if __name__ == "__main__":
    harness.main_guard(main)
