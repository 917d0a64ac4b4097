"""Chapter 4: AA-CLIP against plain CLIP on every target set, over training seeds, both normalisations.

The protocol is book:protocol-reporting's: the last epoch, no selection on test data, every
training seed shown with the mean and standard deviation over seeds. Plain CLIP has nothing to
train, so its figures are the same at every seed.
"""

from __future__ import annotations

import pandas as pd
from IPython.display import Markdown

from aaclip.metrics import METRIC_NAMES, METRIC_TITLES, defect_type, image_auroc_by_type
from aaclip_book import runs

NORMALIZATIONS = ("transductive", "inductive")
UNDEFINED = "undefined"  # a metric with no value: image metrics of a set without normal images
HEADLINE = ("image_auroc", "pixel_auroc", "pixel_aupro")  # the three figures every summary shows

# book:protocol-published: AA-CLIP's published numbers (VisA full shot -> target, the released log;
# MVTec-AD -> VisA from the paper), as (pixel AUROC, image AUROC) in percent; None without normal images.
PUBLISHED = {
    "MVTec": (91.9, 90.5), "BTAD": (97.0, 94.3), "MPDD": (96.6, 77.5), "Brain": (95.7, 79.3),
    "Liver": (97.9, 68.8), "Retina": (95.3, 81.8), "ClinicDB": (89.6, None), "ColonDB": (83.6, None),
    "Kvasir": (87.1, None), "CVC-300": (96.8, None), "VisA": (95.5, 84.6),
}  # fmt: skip
# book:protocol-published: peers on MVTec-AD as published, (image AUROC, pixel AUROC, AUPRO legacy) in percent.
PUBLISHED_PEERS_MVTEC = {"WinCLIP": (91.8, 85.1, 64.6), "APRIL-GAN": (86.1, 87.6, 44.0), "AnomalyCLIP": (91.5, 91.1, 81.4)}


def per_class_results(book) -> pd.DataFrame:
    """Per class, seed, dataset, method and normalisation: the seven metrics (book:protocol-metrics).

    AA-CLIP is trained (or reused) at every seed of `book.seeds`, in `book.workers` processes; the
    reference seed's transductive predictions are saved for chapters 3 and 6.
    """
    cfgs = [book.seed_config(seed) for seed in book.seeds]
    datasets = book.cfg.eval.datasets
    aaclip = runs.tested_runs(cfgs, datasets, book.workers, normalizations=NORMALIZATIONS, save_predictions=True,
                              progress=book.progress)
    clip = runs.test_run(book.cfg, datasets, NORMALIZATIONS, baseline=True, progress=book.progress)
    return pd.DataFrame(aaclip + clip)


def seed_means(results: pd.DataFrame) -> pd.DataFrame:
    """Unweighted means over classes, NaN skipped (book:protocol-metrics), per seed; the `_n` columns
    count the classes behind each mean."""
    keys = ["dataset", "method", "normalize", "seed"]
    means = results.groupby(keys, sort=False)[list(METRIC_NAMES)].mean()
    counts = results.groupby(keys, sort=False)[list(METRIC_NAMES)].count().add_suffix("_n")
    return pd.concat([means, counts], axis=1).reset_index()


def over_seeds(means: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard deviation over training seeds of every dataset figure (sd 0 for plain CLIP)."""
    grouped = means.groupby(["dataset", "method", "normalize"], sort=False)[list(METRIC_NAMES)]
    stats = grouped.agg(["mean", "std"])
    stats.columns = [f"{metric}_{stat}" for metric, stat in stats.columns]
    for metric in METRIC_NAMES:  # one seed: sd 0; an undefined mean (no normal images) stays undefined
        defined = stats[f"{metric}_mean"].notna()
        stats.loc[defined, f"{metric}_std"] = stats.loc[defined, f"{metric}_std"].fillna(0.0)
    return stats.reset_index()


def mean_table(stats: pd.DataFrame) -> pd.DataFrame:
    """Every metric as 'mean ± sd' over seeds, in percent; rows (dataset, method, normalisation)."""
    table = stats.set_index(["dataset", "method", "normalize"])
    shown = {METRIC_TITLES[m]: [f"{100 * a:.1f} ± {100 * b:.1f}" if a == a else UNDEFINED
                                for a, b in zip(table[f"{m}_mean"], table[f"{m}_std"])] for m in METRIC_NAMES}
    return pd.DataFrame(shown, index=table.index)


def seed_table(means: pd.DataFrame, normalize: str = "transductive") -> pd.DataFrame:
    """The headline figures in percent, one column per seed, then mean ± sd: rows are (dataset, method)."""
    part = means[means["normalize"] == normalize]
    columns = {}
    for metric in HEADLINE:
        # dropna=False keeps a dataset whose image metrics are undefined (a polyp set: no normal images)
        wide = part.pivot_table(index=["dataset", "method"], columns="seed", values=metric, sort=False, dropna=False)
        for seed in wide.columns:
            columns[(METRIC_TITLES[metric], f"seed {seed}")] = (100 * wide[seed]).round(1)
        columns[(METRIC_TITLES[metric], "mean ± sd")] = [
            f"{100 * m:.1f} ± {100 * s:.1f}" if m == m else UNDEFINED
            for m, s in zip(wide.mean(axis=1), wide.std(axis=1).fillna(0.0))
        ]
    table = pd.DataFrame(columns)
    table.columns = pd.MultiIndex.from_tuples(table.columns)
    return table


def headline_numbers(stats: pd.DataFrame, dataset: str) -> dict:
    """Glue names for the first target set: `<metric>_<method>` (percent) and `<metric>_AACLIP_sd`."""
    part = stats[(stats["dataset"] == dataset) & (stats["normalize"] == "transductive")].set_index("method")
    numbers = {"first_dataset": dataset}
    for metric in HEADLINE:
        for method in ("CLIP", "AA-CLIP"):
            numbers[f"{metric}_{method.replace('-', '')}"] = float(100 * part.loc[method, f"{metric}_mean"])
        numbers[f"{metric}_AACLIP_sd"] = float(100 * part.loc["AA-CLIP", f"{metric}_std"])
    return numbers


def class_means(results: pd.DataFrame, normalize: str = "transductive") -> pd.DataFrame:
    """Per dataset, class and method: every metric's mean over seeds, in percent, in one table."""
    part = results[results["normalize"] == normalize]
    table = part.groupby(["dataset", "class_name", "method"], sort=False)[list(METRIC_NAMES)].mean().unstack("method")
    table.columns = [f"{METRIC_TITLES[m]} {method}" for m, method in table.columns]
    return (100 * table).round(1)


def defect_type_results(book, results: pd.DataFrame) -> pd.DataFrame:
    """book:protocol-defect-types, per dataset, method, seed and defect type: the image AUROC
    (transductive) read back from each run's predictions.csv, and whether the training set shows the type."""
    from aaclip.data.metadata import read_metadata
    from aaclip.data.registry import metadata_path

    train = read_metadata(metadata_path(book.cfg.runtime.data_root, book.cfg.train.dataset, book.cfg.train.shot))
    seen = {defect_type(r["image_path"]) for r in train if r["label"] == 1}
    rows = []
    part = results[results["normalize"] == "transductive"]
    for (run, seed, dataset, method), _ in part.groupby(["run", "seed", "dataset", "method"], sort=False):
        images = pd.read_csv(runs.results_folder(run, dataset, method, "transductive") / "predictions.csv")
        by_type = image_auroc_by_type(images["pred_score"], images["gt_label"], images["class_name"].astype(str),
                                      images["image_path"])
        rows += [{"dataset": dataset, "method": method, "seed": seed, "defect_type": kind,
                  # a training layout with one anomalous folder (VisA's "Anomaly") names no types
                  "seen": (kind in seen) if len(seen) > 1 else None, **values} for kind, values in by_type.items()]
    return pd.DataFrame(rows)


def defect_type_table(types: pd.DataFrame) -> pd.DataFrame:
    """Image AUROC per defect type in percent: plain CLIP, and AA-CLIP as mean ± sd over seeds."""
    keys = ["dataset", "defect_type"]
    clip = types[types["method"] == "CLIP"].set_index(keys)
    ours = types[types["method"] == "AA-CLIP"].groupby(keys, sort=False).agg(
        seen=("seen", "first"), images=("images", "first"), mean=("image_auroc", "mean"), sd=("image_auroc", "std"))
    names = ours.index.get_level_values("dataset")
    first = {name: i for i, name in enumerate(dict.fromkeys(names))}
    key = [(first[name], not (pd.notna(seen) and bool(seen))) for name, seen in zip(names, ours["seen"])]
    ours = ours.iloc[sorted(range(len(ours)), key=key.__getitem__)]  # per dataset, the seen types first
    table = pd.DataFrame({
        "seen in training": ours["seen"].map({True: "yes", False: "no"}).fillna("–"),
        "anomalous images": ours["images"],
        "CLIP": (100 * clip["image_auroc"].reindex(ours.index)).round(1),
        "AA-CLIP": [f"{100 * m:.1f} ± {100 * (s if s == s else 0.0):.1f}" for m, s in zip(ours["mean"], ours["sd"])],
    }, index=ours.index)
    return table


def defect_type_numbers(types: pd.DataFrame, dataset: str) -> dict:
    """Glue names: `types_<seen|unseen>_<method>`, the mean image AUROC (percent; over seeds, then types)
    of the defect types the training set shows and of the others, and `types_summary`, a sentence of them."""
    part = types[(types["dataset"] == dataset) & types["seen"].notna()]
    if part.empty:
        return {"types_summary": f"The training set's layout names no defect types (one folder holds all its "
                                 f"anomalies, as in VisA), so seen and unseen types cannot be told apart on {dataset}."}
    means = part.groupby(["method", "seen", "defect_type"])["image_auroc"].mean().groupby(["method", "seen"]).mean()
    numbers = {f"types_{'seen' if flag else 'unseen'}_{method.replace('-', '')}": float(100 * value)
               for (method, flag), value in means.items()}
    unseen = list(dict.fromkeys(part.loc[~part["seen"].astype(bool), "defect_type"]))
    if not unseen or len(unseen) == part["defect_type"].nunique():
        numbers["types_summary"] = (f"On {dataset}, every defect type is {'seen' if not unseen else 'unseen'} "
                                    "in training, so the table has no second group to compare with.")
        return numbers
    numbers["types_summary"] = (
        f"On {dataset}, AA-CLIP's image AUROC averages {numbers['types_seen_AACLIP']:.1f} over the defect types "
        f"it was trained on and {numbers['types_unseen_AACLIP']:.1f} over those it never saw ({', '.join(unseen)}); "
        f"plain CLIP's figures are {numbers['types_seen_CLIP']:.1f} and {numbers['types_unseen_CLIP']:.1f} "
        "(means over the seeds, then over the types).")
    return numbers


def normalisation_gap(stats: pd.DataFrame) -> pd.DataFrame:
    """Image AUROC (mean over seeds, %) under each normalisation, and inductive minus transductive."""
    modes = stats.pivot_table(index=["dataset", "method"], columns="normalize", values="image_auroc_mean", sort=False)
    modes["difference"] = modes["inductive"] - modes["transductive"]
    return (100 * modes).round(1)


def gap_numbers(gap: pd.DataFrame, dataset: str) -> dict:
    return {"inductive_gap": float(gap.loc[(dataset, "AA-CLIP"), "difference"])}


def normalisation_means(stats: pd.DataFrame) -> pd.DataFrame:
    """The long frame `plots.normalisation_figure` draws: dataset, method, normalize, image_auroc."""
    return stats.rename(columns={"image_auroc_mean": "image_auroc"})[["dataset", "method", "normalize", "image_auroc"]]


def published_comparison(book, stats: pd.DataFrame):
    """At paper scale, ours (transductive, mean over seeds) beside the published numbers; else a note."""
    if book.miniature:
        return Markdown(f"*Profile `{book.cfg.runtime.profile}` runs on synthetic data: no published numbers apply. "
                        "`aaclip book --profile paper` puts ours beside book:protocol-published.*")
    ours = stats[(stats["method"] == "AA-CLIP") & (stats["normalize"] == "transductive")].set_index("dataset")
    rows = [{"dataset": name, "pixel AUROC (ours)": 100 * row["pixel_auroc_mean"],
             "pixel AUROC (published)": PUBLISHED.get(name, (None, None))[0],
             "image AUROC (ours)": 100 * row["image_auroc_mean"],
             "image AUROC (published)": PUBLISHED.get(name, (None, None))[1]} for name, row in ours.iterrows()]
    return pd.DataFrame(rows).round(1)


def peer_comparison(book, stats: pd.DataFrame):
    """At paper scale with MVTec among the targets: the published peers beside our AA-CLIP; else a note."""
    peers = pd.DataFrame(PUBLISHED_PEERS_MVTEC, index=["image AUROC", "pixel AUROC", "AUPRO (legacy)"]).T
    ours = stats[(stats["dataset"] == "MVTec") & (stats["method"] == "AA-CLIP") & (stats["normalize"] == "transductive")]
    if book.miniature or ours.empty:
        return Markdown("*The published peers were measured on MVTec-AD, which this build does not test on.*")
    peers.loc["AA-CLIP (ours)"] = [100 * ours[f"{m}_mean"].iloc[0] for m in HEADLINE]
    return peers.round(1)
