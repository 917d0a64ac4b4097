"""`aaclip miniature`: build (or reuse) the miniature world and print its evidence."""

from __future__ import annotations

import argparse
from pathlib import Path

SIZES = ("default", "smoke")


def add_parsers(subparsers) -> None:
    parser = subparsers.add_parser(
        "miniature",
        help="make the synthetic datasets and the tiny CLIP (the embedded default)",
        description="Draw the miniature world (mini-aux, mini-target, mini-scan), pretrain the tiny CLIP "
        "on captioned normal pictures, and write the evidence to OUT/summary.json. Cached: the same "
        "size and seed reuse the files after checking their hashes.",
    )
    parser.add_argument("--size", choices=SIZES, default="default", help="default (the book) or smoke (tests, CI)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out", type=Path, help="output folder (default: the data_root of the matching profile, "
        "data/miniature or data/miniature-smoke)"
    )  # fmt: skip
    parser.add_argument("--pretrain", action="store_true",
                        help="pretrain the size's tiny CLIP and write it as the weights that ship with the code "
                             "(aaclip_miniature/weights/SIZE, with a manifest: command, seed, code digest, sha256, "
                             "time, final loss); the world builds then check and use them")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=run_miniature)


def profile_of(size: str):
    """The profile that reads a world of this size, so `aaclip train --profile ...` finds it."""
    from aaclip.config import Config
    from aaclip_miniature.build import PROFILE_OF_SIZE

    return Config.load(PROFILE_OF_SIZE[size])


def run_miniature(args: argparse.Namespace) -> int:
    from aaclip_miniature import build_world

    profile = profile_of(args.size)
    profile.apply_threads()  # the profile's thread count holds for the world's pretraining too
    if args.pretrain:
        from aaclip_miniature.build import make_shipped
        from aaclip_miniature.shipped import folder

        manifest = make_shipped(args.size, args.seed, progress=not args.quiet)
        print(f"shipped tiny CLIP in {folder(args.size)}: {manifest['steps']} steps on {manifest['images']} images in "
              f"{manifest['seconds']:.0f} s, final loss {manifest['final_loss']:.3f}, code {manifest['code_digest'][:12]}")
        return 0
    out = args.out or Path(profile.runtime.data_root)
    summary = build_world(out, size=args.size, seed=args.seed, progress=not args.quiet)
    print(format_summary(out, summary))
    return 0


def format_summary(out: Path, summary: dict) -> str:
    from aaclip_miniature.build import TINY_CLIP_DIR

    def number(value) -> str:
        return "pending" if value is None else f"{value:.3f}"

    state = "reused (hashes checked)" if summary.get("cached") else f"built in {summary['seconds']:.0f} s"
    counts = ", ".join(f"{name} {c['normal']}/{c['anomalous']}" for name, c in summary["counts"].items())
    return "\n".join(
        [
            f"miniature world in {out}: {state}",
            f"  test splits (normal/anomalous): {counts}",
            f"  class accuracy on mini-target: {number(summary['class_accuracy'])} "
            f"(random init {number(summary['class_accuracy_random_init'])})",
            f"  anchor cosine normal vs abnormal: {number(summary['anchor_cosine'])}",
            f"  baseline CLIP on mini-target: image AUROC {number(summary['baseline_image_auroc'])}, "
            f"pixel AUROC {number(summary['baseline_pixel_auroc'])}",
            f"  tiny CLIP: {out / TINY_CLIP_DIR} ({summary['checkpoint_bytes'] / 2**20:.1f} MiB)",
        ]
    )
