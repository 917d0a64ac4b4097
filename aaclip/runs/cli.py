"""`aaclip train | test | predict | describe | explore`: flags -> `Config.load(profile, overrides)` -> library call.

No logic lives here: every command builds a Config and calls aaclip.runs.train,
aaclip.runs.evaluate, aaclip.runs.inference or aaclip.model. The flags are made from the
config's own field declarations (`aaclip.config.option`), so help texts and choices are written
once. torch and open_clip are imported inside the run functions so that `aaclip --help` stays instant.
"""

from __future__ import annotations

import argparse
import json
import sys

from aaclip.config import GROUPS, Config, ConfigError, field_info, field_paths

RUNTIME = ("runtime.device", "runtime.threads", "runtime.num_workers", "runtime.data_root")
MODEL = tuple(f"model.{name}" for name in ("backbone", "pretrained", "image_size", "activation"))
EVAL = ("eval.batch_size", "eval.precision", "eval.normalize", "eval.aupro", "eval.metric_resolution")


MODES_HELP = (
    "Scores come in two normalisations (book:method-normalisation). transductive (the released protocol): maps and "
    "scores are min-max scaled per class over all the test images, so a score depends on the other test images; "
    "inductive: fixed transforms of each image's own map and score, so one image can be scored alone. "
)


def add_parsers(subparsers) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="GROUP.FIELD=VALUE",
        help=f"any other Config field, e.g. --set stage1.orth_weight=0.2 (repeatable; groups: {', '.join(GROUPS)})",
    )  # fmt: skip
    profile = argparse.ArgumentParser(add_help=False)
    profile.add_argument("--profile", default=None, help="paper (the default: the paper's setting) | miniature | smoke | a YAML file")

    train = subparsers.add_parser("train", parents=[common, profile], help="train AA-CLIP (stage 1 then stage 2)")
    add_config_flags(train, [p for p in field_paths() if p.split(".")[0] in ("model", "train", "stage1", "stage2")])
    add_config_flags(train, [*RUNTIME, "runtime.save_path"])
    train.add_argument("--overwrite", action="store_true", help="replace a different run in --save-path")
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    train.set_defaults(func=run_train)

    test = subparsers.add_parser(
        "test", parents=[common, profile], help="evaluate a trained run (or --baseline CLIP) on a labelled dataset",
        description="Evaluate the run in --save-path (its checkpoint says what model it is: nothing else is needed "
        "but the dataset) or plain CLIP (--baseline: the backbone of the run in --save-path when one is given, "
        "else the one --profile names). " + MODES_HELP + "Both are reported: "
        "summary.md and summary.json give both, predictions.csv every image's score and label under both.",
    )  # fmt: skip
    test.add_argument("--dataset", required=True, help="test dataset, e.g. MVTec, mini-target or a prepared folder")
    test.add_argument("--baseline", action="store_true",
                      help="plain CLIP, no adapters (the 'CLIP' row): with --save-path, that run's backbone")
    test.add_argument("--out", help="directory for summary.md, summary.json, per_class.csv and predictions.csv "
                                    "(default: SAVE_PATH/results/DATASET, or runs/clip/DATASET with --baseline)")
    test.add_argument("--save-predictions", action="store_true",
                      help="also write predictions.npz (+ .json) for the heatmap explorer")
    test.add_argument("--quiet", action="store_true", help="no progress bars")
    add_config_flags(test, [*RUNTIME, "runtime.save_path", *EVAL, *MODEL])
    test.set_defaults(func=run_test)

    predict = subparsers.add_parser(
        "predict", parents=[common], help="score images with a trained run: overlays, scores.csv, summary.md",
        description="Score image files or folders with the run in --save-path, one image at a time, with the "
        "inductive normalisation (no test-set statistics are needed or used): the heat of an overlay is on one "
        "fixed [0, 1] scale for every image, not stretched per image. " + MODES_HELP + "For a label per image, "
        "give --threshold, or --thresholds with the output of `aaclip test` on labelled data of the same kind.",
    )  # fmt: skip
    predict.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER", help="image files or folders of images")
    predict.add_argument("--out", required=True, help="directory for summary.md, scores.csv and overlays/")
    predict.add_argument("--object", default=None,
                         help="what the images show, as the prompts name it (default: the name --thresholds was chosen "
                         "with, else 'object')")
    predict.add_argument("--domain", default="industrial", choices=("industrial", "medical"), help="blur and score rule")
    predict.add_argument("--threshold", type=float, default=None, help="label an image anomalous at this score or above")
    predict.add_argument("--thresholds", default=None, metavar="TEST_OUT",
                         help="take the threshold from `aaclip test`'s output folder (inductive, mean image F1-max "
                         "threshold over its classes)")
    predict.add_argument("--quiet", action="store_true", help="no progress bar")
    add_config_flags(predict, [*RUNTIME, "runtime.save_path", "eval.batch_size", "eval.precision", "model.pretrained"])
    predict.set_defaults(func=run_predict)

    describe = subparsers.add_parser("describe", parents=[common, profile], help="parameter counts and feature levels (JSON)")
    add_config_flags(describe, [*MODEL, "model.text_adapt_until", "model.image_adapt_until", "model.levels"])
    describe.set_defaults(func=run_describe, describe=True)

    explore = subparsers.add_parser(
        "explore", parents=[common], help="the heatmap explorer of test runs as one static HTML page",
        description="Write the explorer's static view (book:protocol-explorer) for test runs saved with "
                    "`aaclip test --save-predictions`: each image beside plain CLIP's map and AA-CLIP's level maps on "
                    "one colour scale, the scores against the class thresholds, images ordered by score, label or most "
                    "wrong first, and a pixel threshold with precision, recall and IoU. One self-contained file, no "
                    "kernel and no network needed to open it.",
    )  # fmt: skip
    explore.add_argument("--results", nargs="+", required=True, metavar="DIR",
                         help="AA-CLIP test folders (their predictions.npz), one per dataset")
    explore.add_argument("--baseline", nargs="*", default=[], metavar="DIR",
                         help="plain-CLIP test folders of the same datasets (`aaclip test --baseline --save-predictions`)")
    explore.add_argument("--out", required=True, help="the page to write, e.g. explorer.html")
    add_config_flags(explore, ["explore.per_class", "explore.display_size", "explore.page_mb"])
    explore.add_argument("--quiet", action="store_true", help="no progress bars")
    explore.set_defaults(func=run_explore)


def add_config_flags(parser, paths) -> None:
    """One flag per config field, named, typed and explained by the field's own declaration."""
    defaults = Config()
    for path in paths:
        group, name = path.split(".")
        declared = field_info(path)
        flag = "--" + (declared.metadata.get("flag") or name.replace("_", "-"))
        default = getattr(getattr(defaults, group), name)
        text = f"{declared.metadata['help']} (paper: {default})"
        if field_paths()[path] is bool:
            parser.add_argument(flag, dest=path, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            choices = declared.metadata.get("choices")
            metavar = "{" + ",".join(choices) + "}" if choices else None
            parser.add_argument(flag, dest=path, default=None, metavar=metavar, help=text)


def overrides_from(args) -> dict:
    """{"group.field": value} from `--set` pairs, then the explicit flags (which win)."""
    overrides = {}
    for pair in args.overrides:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ConfigError(f"--set {pair!r}: expected GROUP.FIELD=VALUE")
        overrides[key.strip()] = value.strip()
    overrides.update({k: v for k, v in vars(args).items() if "." in k and v is not None})
    return overrides


def config_from(args) -> Config:
    """The Config these flags describe: the profile (default paper), then `--set` pairs, then explicit flags."""
    overrides = overrides_from(args)
    if getattr(args, "describe", False):  # counts need no weights: random init unless asked
        overrides.setdefault("model.pretrained", "none")
    cfg = Config.load(args.profile or "paper", overrides)
    cfg.apply_threads()
    return cfg


# Of a trained run, only how it is tested, where it runs, and where its backbone lies may change.
RUN_OVERRIDABLE = ("eval.", "runtime.", "model.pretrained")


def run_config(args) -> tuple[Config, str]:
    """(the run's own config with the allowed flags applied, its checkpoint file): a checkpoint is enough."""
    from aaclip.runs.checkpoint import checkpoint_file, read_meta

    if getattr(args, "profile", None):
        raise ConfigError("--profile builds plain CLIP (--baseline); a trained run brings its own config")
    file = checkpoint_file(args.__dict__["runtime.save_path"])
    cfg = Config.from_dict(read_meta(file)["config"], source=f"config keys in {file.with_suffix('.json')}")
    overrides = overrides_from(args)
    fixed = sorted(k for k in overrides if not k.startswith(RUN_OVERRIDABLE) and overrides[k] is not None)
    if fixed:
        raise ConfigError(f"{', '.join(fixed)}: the run in {file.parent} was trained with its own values; "
                          "only eval.*, runtime.* and model.pretrained (where its backbone lies) can be given")
    cfg = cfg.replace({k: v for k, v in overrides.items() if k != "model.pretrained"})
    cfg.apply_threads()
    return cfg, str(file)


# ---------------------------------------------------------------------------------- commands
def run_train(args) -> int:
    from aaclip.runs.train import train

    cfg = config_from(args)
    result = train(cfg, progress=not args.quiet, overwrite=args.overwrite)
    if result.cached:
        print(f"{cfg.runtime.save_path}: this run already finished with the same config; nothing to train")
    else:
        times = ", ".join(f"{k} {v:.1f} s" for k, v in result.seconds.items() if v)
        print(f"trained {cfg.train.dataset} -> {result.checkpoint} ({times})")
    return 0


def run_test(args) -> int:
    from pathlib import Path

    from aaclip.data.dataset import load_dataset
    from aaclip.model import AAClip
    from aaclip.runs.checkpoint import load_run
    from aaclip.runs.evaluate import evaluate
    from aaclip.runs.inference import BASELINE, Method

    if args.baseline and args.__dict__["runtime.save_path"] is None:
        cfg, checkpoint = config_from(args), None
        model, method = AAClip.from_config(cfg.model, cfg.runtime.data_root, cfg.resolve_device()), BASELINE
        out = args.out or str(Path("runs") / "clip" / args.dataset)
    elif args.baseline:  # plain CLIP on the backbone the run was trained on (found by content, as for the run)
        cfg, run_file = run_config(args)
        model, _ = load_run(run_file, root=cfg.runtime.data_root, pretrained=args.__dict__["model.pretrained"],
                            device=cfg.resolve_device())
        method, checkpoint = BASELINE, None
        out = args.out or str(Path("runs") / "clip" / args.dataset)
    else:
        if args.__dict__["runtime.save_path"] is None:
            raise ConfigError("give --save-path RUN (a trained run's folder) or --baseline (plain CLIP)")
        cfg, checkpoint = run_config(args)
        model, run_cfg = load_run(checkpoint, root=cfg.runtime.data_root, pretrained=args.__dict__["model.pretrained"],
                                  device=cfg.resolve_device())
        method = Method.of_run(run_cfg)
        out = args.out or str(Path(cfg.runtime.save_path) / "results" / args.dataset)
    backbone = model.backbone
    dataset = load_dataset(cfg.runtime.data_root, args.dataset, backbone.image_size, backbone.mean, backbone.std)
    result = evaluate(model, dataset, method, cfg.eval, out_dir=out, save_predictions=args.save_predictions,
                      checkpoint=checkpoint, both_normalizations=True, progress=not args.quiet)
    print(f"{method.name} on {args.dataset}: results in {out} (read summary.md first)")
    other = result.other
    print(f"  {'metric':14s} {result.normalize:>12s} {other.normalize:>12s}")
    for metric, value in result.means.items():
        print(f"  {metric:14s} {100 * value:12.2f} {100 * other.means[metric]:12.2f}")
    return 0


def run_predict(args) -> int:
    from aaclip.runs.checkpoint import load_run
    from aaclip.runs.inference import Method, labelling, predict_images

    cfg, checkpoint = run_config(args)
    threshold, object_name = labelling(args.threshold, args.thresholds, args.object)  # fails before any work
    model, run_cfg = load_run(checkpoint, root=cfg.runtime.data_root, pretrained=args.__dict__["model.pretrained"],
                              device=cfg.resolve_device())
    rows = predict_images(model, Method.of_run(run_cfg), args.inputs, args.out, object_name=object_name,
                          domain=args.domain, batch_size=cfg.eval.batch_size, precision=cfg.eval.precision,
                          threshold=threshold, checkpoint=checkpoint, progress=not args.quiet)
    failed = [r for r in rows if r["error"]]
    for row in failed:
        print(f"aaclip predict: skipped: {row['error']}", file=sys.stderr)
    print(f"scored {len(rows) - len(failed)} of {len(rows)} images -> {args.out} (read summary.md first)")
    return 1 if failed else 0


def run_describe(args) -> int:
    from aaclip.model import AAClip

    cfg = config_from(args)
    model = AAClip.from_config(cfg.model, cfg.runtime.data_root, device="cpu")
    print(json.dumps(model.describe(), indent=2, default=str))
    return 0


def run_explore(args) -> int:
    from pathlib import Path

    from aaclip import explore
    from aaclip.io import atomic_path

    out = Path(args.out)
    if out.suffix.lower() not in (".html", ".htm"):
        raise ConfigError(f"--out {out}: the explorer is one HTML page; give a name ending in .html")
    cfg = Config.load("paper", overrides_from(args)).explore  # only the explore.* values matter here
    data = explore.load_explorer(args.results, args.baseline, cfg, progress=not args.quiet)
    data = explore.fit_budget(data, cfg.page_mb * 1e6, lambda image: explore.entry_bytes(explore.static_entry(image)))
    page = explore.static_page(data)
    with atomic_path(out) as tmp:
        Path(tmp).write_text(page, encoding="utf-8")
    dropped = f", {data.dropped} left out for the {cfg.page_mb:g} MB budget" if data.dropped else ""
    print(f"explorer: {data.n_images} images of {len(data.classes)} classes -> {out} ({len(page) / 1e6:.2f} MB{dropped})")
    return 0

