"""`aaclip prepare` and `aaclip shots`: thin wrappers over aaclip.data.converters and aaclip.data.shots."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from aaclip.config import TrainConfig, RuntimeConfig
from aaclip.data.registry import DATASETS, DOMAINS
from aaclip.errors import AAClipError


def add_parsers(subparsers) -> None:
    names = ", ".join(DATASETS)
    prepare = subparsers.add_parser(
        "prepare",
        help="write full-shot.jsonl for a dataset in its original layout",
        description=f"Convert an original dataset tree ({names}) or your own MVTec-style folder "
        "into the metadata of book:protocol-metadata; counts are compared with the expected test split.",
    )
    prepare.add_argument("dataset", help="a dataset name (case-insensitive, e.g. mvtec, visa) or 'folder'")
    prepare.add_argument("--root", type=Path, required=True, help="the dataset's original tree")
    prepare.add_argument("--out", type=Path, help="where full-shot.jsonl goes (default: --root)")
    prepare.add_argument("--strict", action="store_true",
                         help="fail when classes are missing or counts differ from the expected split (default: warn)")
    prepare.add_argument("--allow-one-label", action="store_true",
                         help="folder only: keep classes with only normal or only anomalous images")
    prepare.add_argument(
        "--name", help="folder only: dataset name, and class name of a one-class tree (default: the root's name)"
    )
    prepare.add_argument("--domain", choices=DOMAINS, help="folder only: industrial (default) or medical")
    prepare.set_defaults(func=run_prepare)

    shots = subparsers.add_parser(
        "shots",
        help="draw <k>-shot.jsonl subsets from full-shot.jsonl",
        description="k images per class (half normal, half anomalous) for each k, drawn with the seed; "
        "a sidecar <k>-shot.json records seed and source hash.",
    )
    shots.add_argument("dataset", help="a dataset name, or the name given to 'prepare folder'")
    shots.add_argument("--k", type=int, nargs="+", default=[2, 16, 64], help="shots per class (even)")
    shots.add_argument("--seed", type=int, default=TrainConfig.seed, help="default: %(default)s")
    shots.add_argument("--data-root", type=Path, default=Path(RuntimeConfig.data_root), help="default: %(default)s")
    shots.set_defaults(func=run_shots)


def run_prepare(args: argparse.Namespace) -> int:
    from aaclip.data.converters import CountMismatchWarning, prepare_dataset

    is_folder = args.dataset.lower() == "folder"
    if not is_folder and (args.name or args.domain or args.allow_one_label):
        raise AAClipError("--name, --domain and --allow-one-label describe your own data: use them with 'aaclip prepare folder'")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CountMismatchWarning)  # printed below, one line each
        result = prepare_dataset(
            args.dataset, args.root, args.out, args.strict, args.name, args.domain or "industrial", progress=True,
            allow_one_label=args.allow_one_label,
        )
    for line in result.mismatches:
        print(f"warning: {line}", file=sys.stderr)
    normal = sum(n for n, _ in result.counts.values())
    anomalous = sum(a for _, a in result.counts.values())
    print(f"wrote {result.path}: {len(result.counts)} classes, {normal} normal / {anomalous} anomalous images")
    if result.info.layout == "folder":
        masks = "with masks" if result.info.has_masks else "no masks: pixel metrics will be undefined"
        print(f"{masks}; prompt names (edit them in {result.path.parent / 'dataset.json'}): {result.info.prompt_names}")
    return 0


def run_shots(args: argparse.Namespace) -> int:
    from aaclip.data.shots import make_shots

    for k, path in make_shots(args.data_root, args.dataset, args.k, args.seed, progress=True).items():
        print(f"wrote {path} ({k} per class, seed {args.seed})")
    return 0
