"""`aaclip train | test | predict | describe`: flags -> `Config.load(profile, **overrides)` -> library call.

No logic lives here: every command builds a Config and calls aaclip.train, aaclip.evaluate,
aaclip.checkpoint or aaclip.model. torch and open_clip are imported inside the run functions so
that `aaclip --help` stays instant.
"""

from __future__ import annotations

import argparse
import json
import sys

# (flag, Config field, type, help): flags shared by the commands that build a model.
MODEL_FLAGS = (
    ("--backbone", "backbone", str, "open_clip model name (paper: ViT-L-14-336)"),
    ("--pretrained", "pretrained", str, "open_clip pretrained tag, 'none' (random) or a .safetensors file"),
    ("--image-size", "image_size", int, "input size in pixels (paper: 518)"),
    ("--activation", "activation", str, "gelu (released) | quick_gelu"),
    ("--precision", "precision", str, "auto (bf16 on CUDA) | fp32 | bf16"),
    ("--num-workers", "num_workers", int, "DataLoader worker processes"),
)
TRAIN_FLAGS = (
    ("--dataset", "train_dataset", str, "auxiliary (training) dataset, e.g. VisA or mini-aux"),
    ("--shot", "shot", int, "-1 = full shot, or an even k (uses <k>-shot.jsonl)"),
    ("--save-path", "save_path", str, "directory for checkpoints and history.json"),
    ("--vv-attention", "vv_attention", str, "stage-1 V-V attention: self (released) | tokens (paper)"),
    ("--stage1-loss", "stage1_loss", str, "released | paper"),
    ("--stage1-epochs", "stage1_epochs", int, "stage-1 epochs (paper: 5)"),
    ("--stage1-batch-size", "stage1_batch_size", int, "stage-1 batch size (paper: 16)"),
    ("--stage1-lr", "stage1_lr", float, "stage-1 learning rate (paper: 1e-5)"),
    ("--stage2-epochs", "stage2_epochs", int, "stage-2 epochs (paper: 20)"),
    ("--stage2-batch-size", "stage2_batch_size", int, "stage-2 batch size (paper: 2)"),
    ("--stage2-lr", "stage2_lr", float, "stage-2 learning rate (paper: 5e-4)"),
    ("--stage2-milestones", "stage2_milestones", str, "MultiStepLR milestones in iterations, e.g. '16000,32000'"),
    ("--adapter-weight", "adapter_weight", float, "residual weight w of the adapters (paper: 0.1)"),
)
TEST_FLAGS = (
    ("--save-path", "save_path", str, "the training run's directory (not needed with --baseline)"),
    ("--out", "out_dir", str, "directory for per_class.csv, summary.json and summary.md"),
    ("--normalize", "normalize", str, "transductive (released, per-class min-max) | inductive"),
    ("--aupro", "aupro", str, "exact | legacy | off"),
    ("--metric-resolution", "metric_resolution", str, "input (518, released) | original"),
    ("--batch-size", "batch_size", int, "inference batch size"),
)
CONFIG_DESTS = {dest for flags in (MODEL_FLAGS, TRAIN_FLAGS, TEST_FLAGS) for _, dest, _, _ in flags} | {
    "data_root",
    "device",
    "seed",
    "train_stage1",
    "train_stage2",
    "augment",
}


def add_parsers(subparsers) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--profile", default="paper", help="paper (SPEC defaults) | miniature | smoke | a YAML file")
    common.add_argument("--data-root", dest="data_root", help="where the datasets live (paper profile: data/)")
    common.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    common.add_argument("--seed", type=int, help="random seed (paper: 111)")
    common.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other Config field, e.g. --set orth_weight=0.2 (repeatable)",
    )

    train = subparsers.add_parser("train", parents=[common], help="train AA-CLIP (stage 1 then stage 2)")
    _add_flags(train, MODEL_FLAGS + TRAIN_FLAGS)
    train.add_argument("--no-stage1", dest="train_stage1", action="store_false", default=None, help="skip stage 1")
    train.add_argument("--no-stage2", dest="train_stage2", action="store_false", default=None, help="skip stage 2")
    train.add_argument("--no-augment", dest="augment", action="store_false", default=None, help="no augmentation")
    train.add_argument("--overwrite", action="store_true", help="replace a different run in --save-path")
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    train.set_defaults(func=run_train)

    test = subparsers.add_parser("test", parents=[common], help="evaluate a trained run (or --baseline CLIP)")
    test.add_argument("--dataset", required=True, help="test dataset, e.g. MVTec or mini-target")
    _add_flags(test, MODEL_FLAGS + TEST_FLAGS)
    test.add_argument("--baseline", action="store_true", help="plain CLIP, no adapters (the 'CLIP' row)")
    test.add_argument(
        "--save-predictions", action="store_true", help="also write predictions.npz (+ .json) for the heatmap explorer"
    )
    test.add_argument("--quiet", action="store_true", help="no progress bars")
    test.set_defaults(func=run_test)

    predict = subparsers.add_parser("predict", parents=[common], help="score images: CSV + heatmap overlays")
    predict.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER", help="image files or folders of images")
    predict.add_argument("--save-path", dest="save_path", help="the training run's directory")
    predict.add_argument("--out", required=True, help="directory for scores.csv and the overlays")
    predict.add_argument("--object", default="object", help="what the images show, as the prompts name it")
    predict.add_argument("--domain", default="industrial", choices=("industrial", "medical"), help="blur and score rule")
    _add_flags(predict, MODEL_FLAGS + (TEST_FLAGS[-1],))
    predict.set_defaults(func=run_predict)

    describe = subparsers.add_parser("describe", parents=[common], help="parameter counts and feature levels (JSON)")
    describe.add_argument("--backbone", required=True, help="open_clip model name, e.g. ViT-L-14-336")
    describe.add_argument(
        "--pretrained", default="none", help="none (default: random weights, counts do not need them) | TAG | PATH"
    )
    describe.add_argument("--image-size", dest="image_size", type=int, help="input size in pixels")
    describe.add_argument("--activation", help="gelu | quick_gelu")
    describe.set_defaults(func=run_describe)


def _add_flags(parser, flags) -> None:
    for flag, dest, kind, text in flags:
        parser.add_argument(flag, dest=dest, type=kind, default=None, help=text)


def config_from(args):
    """The Config these flags describe: the profile, then `--set` pairs, then explicit flags."""
    from aaclip.config import Config, ConfigError

    overrides = {}
    for pair in args.overrides:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ConfigError(f"--set {pair!r}: expected KEY=VALUE")
        overrides[key.strip()] = value.strip()
    overrides.update({k: v for k, v in vars(args).items() if k in CONFIG_DESTS and v is not None})
    return Config.load(args.profile, **overrides)


# ---------------------------------------------------------------------------------- commands
def run_train(args) -> int:
    from aaclip.train import train

    cfg = config_from(args)
    result = train(cfg, progress=not args.quiet, overwrite=args.overwrite)
    if result.cached:
        print(f"{cfg.save_path}: this run already finished with the same config; nothing to train")
    else:
        times = ", ".join(f"{k} {v:.1f} s" for k, v in result.seconds.items() if v)
        print(f"trained {cfg.train_dataset} -> {result.checkpoint} ({times})")
    return 0


def run_test(args) -> int:
    from aaclip.evaluate import test

    cfg = config_from(args).replace(test_datasets=[args.dataset])
    summary = test(
        cfg,
        args.dataset,
        baseline=args.baseline,
        out_dir=cfg.out_dir,
        save_path=None if args.baseline else cfg.save_path,
        save_predictions=args.save_predictions,
        progress=not args.quiet,
    )
    label = "CLIP (no adapters)" if args.baseline else "AA-CLIP"
    print(f"{label} on {args.dataset} ({summary['normalize']}): results in {cfg.out_dir}")
    for metric, value in summary["means"].items():
        print(f"  {metric:14s} {100 * value:6.2f}")
    return 0


def run_predict(args) -> int:
    from aaclip.checkpoint import load_model
    from aaclip.evaluate import predict_images

    cfg = config_from(args)
    model, run_cfg = load_model(cfg.save_path, cfg)
    rows = predict_images(model, run_cfg, args.inputs, args.out, object_name=args.object, domain=args.domain)
    failed = [r for r in rows if r["error"]]
    for row in failed:
        print(f"aaclip predict: skipped: {row['error']}", file=sys.stderr)
    print(f"scored {len(rows) - len(failed)} of {len(rows)} images -> {args.out}")
    return 1 if failed else 0


def run_describe(args) -> int:
    from aaclip.model import AAClip

    cfg = config_from(args)
    model = AAClip.from_config(cfg, device="cpu")
    print(json.dumps(model.describe(), indent=2, default=str))
    return 0
