"""`aaclip train | test | predict | describe`: flags -> `Config.load(profile, overrides)` -> library call.

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


def add_parsers(subparsers) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--profile", default="paper", help="paper (the paper's setting) | miniature | smoke | a YAML file")
    common.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="GROUP.FIELD=VALUE",
        help=f"any other Config field, e.g. --set stage1.orth_weight=0.2 (repeatable; groups: {', '.join(GROUPS)})",
    )  # fmt: skip

    train = subparsers.add_parser("train", parents=[common], help="train AA-CLIP (stage 1 then stage 2)")
    add_config_flags(train, [p for p in field_paths() if p.split(".")[0] in ("model", "train", "stage1", "stage2")])
    add_config_flags(train, [*RUNTIME, "runtime.save_path"])
    train.add_argument("--overwrite", action="store_true", help="replace a different run in --save-path")
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    train.set_defaults(func=run_train)

    test = subparsers.add_parser("test", parents=[common], help="evaluate a trained run (or --baseline CLIP)")
    test.add_argument("--dataset", required=True, help="test dataset, e.g. MVTec or mini-target")
    test.add_argument("--baseline", action="store_true", help="plain CLIP, no adapters (the 'CLIP' row)")
    test.add_argument("--out", help="directory for per_class.csv, summary.json and summary.md "
                                    "(default: SAVE_PATH/results/DATASET, or runs/clip/DATASET with --baseline)")
    test.add_argument("--save-predictions", action="store_true",
                      help="also write predictions.npz (+ .json) for the heatmap explorer")
    test.add_argument("--quiet", action="store_true", help="no progress bars")
    add_config_flags(test, [*RUNTIME, "runtime.save_path", *EVAL, *MODEL])
    test.set_defaults(func=run_test)

    predict = subparsers.add_parser("predict", parents=[common], help="score images: CSV + heatmap overlays")
    predict.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER", help="image files or folders of images")
    predict.add_argument("--out", required=True, help="directory for scores.csv and the overlays")
    predict.add_argument("--object", default="object", help="what the images show, as the prompts name it")
    predict.add_argument("--domain", default="industrial", choices=("industrial", "medical"), help="blur and score rule")
    add_config_flags(predict, [*RUNTIME, "runtime.save_path", "eval.batch_size", "eval.precision"])
    predict.set_defaults(func=run_predict)

    describe = subparsers.add_parser("describe", parents=[common], help="parameter counts and feature levels (JSON)")
    add_config_flags(describe, [*MODEL, "model.text_adapt_until", "model.image_adapt_until", "model.levels"])
    describe.set_defaults(func=run_describe, describe=True)


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


def config_from(args) -> Config:
    """The Config these flags describe: the profile, then `--set` pairs, then explicit flags."""
    overrides = {}
    for pair in args.overrides:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ConfigError(f"--set {pair!r}: expected GROUP.FIELD=VALUE")
        overrides[key.strip()] = value.strip()
    overrides.update({k: v for k, v in vars(args).items() if "." in k and v is not None})
    if getattr(args, "describe", False):  # counts need no weights: random init unless asked
        overrides.setdefault("model.pretrained", "none")
    cfg = Config.load(args.profile, overrides)
    cfg.apply_threads()
    return cfg


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
    from aaclip.runs.checkpoint import checkpoint_file, load_run
    from aaclip.runs.evaluate import evaluate
    from aaclip.runs.inference import BASELINE, Method

    cfg = config_from(args)
    root, device = cfg.runtime.data_root, cfg.resolve_device()
    if args.baseline:
        model, method, checkpoint = AAClip.from_config(cfg.model, root, device), BASELINE, None
        out = args.out or str(Path("runs") / "clip" / args.dataset)
    else:
        checkpoint = str(checkpoint_file(cfg.runtime.save_path))
        model, run_cfg = load_run(checkpoint, root=root, device=device)
        method = Method.of_run(run_cfg)
        out = args.out or str(Path(cfg.runtime.save_path) / "results" / args.dataset)
    backbone = model.backbone
    dataset = load_dataset(root, args.dataset, backbone.image_size, backbone.mean, backbone.std)
    result = evaluate(model, dataset, method, cfg.eval, out_dir=out, save_predictions=args.save_predictions,
                      checkpoint=checkpoint, progress=not args.quiet)
    print(f"{method.name} on {args.dataset} ({result.normalize}): results in {out}")
    for metric, value in result.means.items():
        print(f"  {metric:14s} {100 * value:6.2f}")
    return 0


def run_predict(args) -> int:
    from aaclip.runs.checkpoint import load_run
    from aaclip.runs.inference import Method, predict_images

    cfg = config_from(args)
    model, run_cfg = load_run(cfg.runtime.save_path, root=cfg.runtime.data_root, device=cfg.resolve_device())
    rows = predict_images(model, Method.of_run(run_cfg), args.inputs, args.out, object_name=args.object,
                          domain=args.domain, batch_size=cfg.eval.batch_size, precision=cfg.eval.precision)
    failed = [r for r in rows if r["error"]]
    for row in failed:
        print(f"aaclip predict: skipped: {row['error']}", file=sys.stderr)
    print(f"scored {len(rows) - len(failed)} of {len(rows)} images -> {args.out}")
    return 1 if failed else 0


def run_describe(args) -> int:
    from aaclip.model import AAClip

    cfg = config_from(args)
    model = AAClip.from_config(cfg.model, cfg.runtime.data_root, device="cpu")
    print(json.dumps(model.describe(), indent=2, default=str))
    return 0

