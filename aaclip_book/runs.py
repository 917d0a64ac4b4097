"""The book's training runs: trained once, shared by the chapters, spread over processes when that helps.

    model, result = trained(book.cfg)                        # the reference run (train or reuse)
    rows = tested_runs(book, [book.seed_config(s) for s in book.seeds], book.cfg.eval.datasets)

Every run is the library's own `aaclip.runs.train.train` and `aaclip.runs.evaluate.evaluate`; a run
folder that already holds a finished run with the same identity is reused, so a second build of the
book trains nothing. Independent runs (seeds, ablation variants) go to `book.workers` processes,
each on the profile's thread count: on two quiet cores that halves the wall time, and beside another
busy process it still uses what the machine gives.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

from aaclip.config import Config

RESULTS_DIR = "results"


def trained(cfg: Config, progress: bool = False):
    """(model in eval mode, TrainResult) of the run `cfg` describes: trained now, or the finished one reused."""
    from aaclip.runs.checkpoint import load_run
    from aaclip.runs.train import train

    result = train(cfg, progress=progress)
    model = result.model if result.model is not None else load_run(result.save_path, device=cfg.resolve_device())[0]
    return model.eval(), result


def dataset(model, cfg: Config, name: str):
    """A test dataset read with the model's own preprocessing (its input size, mean and std)."""
    from aaclip.data.dataset import load_dataset

    backbone = model.backbone
    return load_dataset(cfg.runtime.data_root, name, backbone.image_size, backbone.mean, backbone.std)


def results_dir(cfg: Config, dataset_name: str, method: str, normalize: str) -> Path:
    return results_folder(cfg.runtime.save_path, dataset_name, method, normalize)


def results_folder(save_path, dataset_name: str, method: str, normalize: str) -> Path:
    """Where `test_run` writes one run's results on one dataset (for a row's `run`, its save path)."""
    return Path(save_path) / RESULTS_DIR / dataset_name / f"{method}-{normalize}"


def test_run(cfg: Config, datasets, normalizations=("transductive",), baseline: bool = False,
             save_predictions: bool = False, progress: bool = False) -> list[dict]:
    """Train (or reuse) the run of `cfg` and test it on each dataset under each normalisation.

    Returns one row per class: run (folder), seed, dataset, method, normalize, class_name and the metrics; the
    result files go to `results_dir`, with AA-CLIP's transductive predictions when asked.
    """
    from aaclip.model import AAClip
    from aaclip.runs.evaluate import evaluate
    from aaclip.runs.inference import BASELINE, Method

    cfg.apply_threads()
    if baseline:  # plain CLIP: nothing to train
        model = AAClip.from_config(cfg.model, cfg.runtime.data_root, cfg.resolve_device())
        method, train_seconds, checkpoint = BASELINE, 0.0, None
    else:
        model, result = trained(cfg, progress)
        method, train_seconds, checkpoint = Method.of_run(cfg), sum(result.seconds.values()), str(result.checkpoint)
    rows = []
    for name in datasets:
        data = dataset(model, cfg, name)
        for normalize in normalizations:
            eval_cfg = replace(cfg.eval, normalize=normalize)
            keep = save_predictions and normalize == "transductive"  # the explorer shows CLIP's maps too
            out = results_dir(cfg, name, method.name, normalize)
            tested = evaluate(model, data, method, eval_cfg, out_dir=out, save_predictions=keep,
                              checkpoint=checkpoint, progress=progress)
            rows += [{"run": cfg.runtime.save_path, "seed": cfg.train.seed, "dataset": name, "method": method.name,
                      "normalize": normalize, "class_name": c, **values, "train_seconds": train_seconds}
                     for c, values in tested.per_class.items()]
    return rows


def tested_runs(cfgs: list[Config], datasets, workers: int = 1, **options) -> list[dict]:
    """`test_run` for every config, in `workers` processes when there are several; rows in config order."""
    jobs = [(cfg, tuple(datasets), options) for cfg in cfgs]
    if workers <= 1 or len(jobs) <= 1:
        return [row for job in jobs for row in _test_job(job)]
    # spawn, not fork: a forked child of a process whose OpenMP threads already run can deadlock
    with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=multiprocessing.get_context("spawn")) as pool:
        return [row for rows in pool.map(_test_job, jobs) for row in rows]


def _test_job(job) -> list[dict]:
    cfg, datasets, options = job
    return test_run(cfg, datasets, **options)


def ensure_predictions(cfg: Config, dataset_name: str, baseline: bool = False, progress: bool = False) -> Path:
    """The file of AA-CLIP's (or plain CLIP's) transductive predictions on a dataset: saved by chapter 4,
    else made now (`aaclip.runs.evaluate.load_predictions` reads it)."""
    path = results_dir(cfg, dataset_name, "CLIP" if baseline else "AA-CLIP", "transductive") / "predictions.npz"
    if not path.is_file():
        test_run(cfg, [dataset_name], baseline=baseline, save_predictions=True, progress=progress)
    return path
