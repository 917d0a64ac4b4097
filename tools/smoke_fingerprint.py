"""Fingerprint of the library's outputs on the smoke world: is a refactoring behaviour-preserving?

    python tools/smoke_fingerprint.py OUT.json [--workdir DIR]
    python tools/smoke_fingerprint.py --compare A.json B.json

Runs the README's command-line sequence on a fresh smoke world (seed 0) on one CPU thread:
build the world, train AA-CLIP with the smoke profile, test it and plain CLIP on mini-target
and mini-scan with saved predictions. It then writes the sha256 of every tensor and array the
run produced, by meaning, not by file: the world's images and masks, the tiny CLIP's weights,
the trained adapters, the raw and normalised maps and scores, and every metric. File names and
container formats may change between two versions of the code; these values must not.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np


SHARED = ("pred_score", "raw_score", "gt_mask", "gt_label", "anomaly_map", "raw_map", "level_grids")


def digest(array) -> str:
    array = np.ascontiguousarray(np.asarray(array))
    return hashlib.sha256(str(array.dtype).encode() + str(array.shape).encode() + array.tobytes()).hexdigest()[:16]


def aaclip(*argv: str, cwd: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    done = subprocess.run([sys.executable, "-m", "aaclip", *argv], cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"aaclip {' '.join(argv)} failed:\n{done.stdout}\n{done.stderr}")


def safetensors_digests(path: Path, prefix: str = "") -> dict[str, str]:
    from safetensors.numpy import load_file

    return {f"{prefix}{k}": digest(v) for k, v in sorted(load_file(str(path)).items())}


def image_digests(root: Path) -> dict[str, str]:
    from PIL import Image

    out = {}
    for path in sorted(root.rglob("*.png")):
        if "tiny_clip" in path.parts:
            continue
        with Image.open(path) as image:
            out[path.relative_to(root).as_posix()] = digest(np.asarray(image))
    return out


def find(root: Path, *names: str) -> Path:
    for name in names:
        hits = sorted(root.rglob(name))
        if hits:
            return hits[0]
    sys.exit(f"none of {names} under {root}")


def run(workdir: Path) -> dict:
    world, run_dir = workdir / "world", workdir / "run"
    aaclip("miniature", "--size", "smoke", "--seed", "0", "--out", str(world), "--quiet", cwd=workdir)
    aaclip("train", "--profile", "smoke", "--data-root", str(world), "--save-path", str(run_dir), "--quiet", cwd=workdir)
    print_ = {}
    for dataset in ("mini-target", "mini-scan"):
        # (a trained run brings its own config: --profile only builds plain CLIP)
        for method, extra in (("aaclip", ["--save-path", str(run_dir)]), ("clip", ["--profile", "smoke", "--baseline"])):
            out = workdir / "results" / f"{method}-{dataset}"
            aaclip("test", "--data-root", str(world), "--dataset", dataset, *extra,
                   "--out", str(out), "--save-predictions", "--quiet", cwd=workdir)
            print_[f"{method}-{dataset}"] = out
    fingerprint = {
        "world_images": image_digests(world),
        "tiny_clip": safetensors_digests(find(world, "open_clip_model.safetensors", "model.safetensors")),
        "adapters": {k: v for k, v in safetensors_digests(run_dir / "last.safetensors").items() if k.startswith("adapters.")},
        "predictions": {},
        "metrics": {},
    }
    for name, out in print_.items():
        with np.load(find(out, "predictions.npz"), allow_pickle=False) as data:
            # the arrays every predictions format holds (format 2 keeps level grids instead of maps)
            fingerprint["predictions"][name] = {k: digest(data[k]) for k in sorted(data.files) if k in SHARED}
        summary = json.loads((out / "summary.json").read_text())
        per_class = summary.get("per_class") or {}
        fingerprint["metrics"][name] = {
            c: {m: v for m, v in sorted(values.items()) if isinstance(v, (int, float)) or v is None}
            for c, values in sorted(per_class.items())
        }
    return fingerprint


def compare(a: dict, b: dict, path: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        problems = []
        for key in sorted(set(a) | set(b)):
            if key not in a or key not in b:
                problems.append(f"{path}/{key}: only in {'first' if key in a else 'second'}")
            else:
                problems += compare(a[key], b[key], f"{path}/{key}")
        return problems
    return [] if a == b or (a != a and b != b) else [f"{path}: {a!r} != {b!r}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", nargs="?", type=Path)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("A", "B"))
    args = parser.parse_args()
    if args.compare:
        problems = compare(*(json.loads(p.read_text()) for p in args.compare))
        print("\n".join(problems) if problems else "identical")
        sys.exit(1 if problems else 0)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="aaclip-fingerprint-"))
    workdir.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(run(workdir), indent=1, sort_keys=True) + "\n")
    print(f"wrote {args.out} (work in {workdir})")


if __name__ == "__main__":
    main()
