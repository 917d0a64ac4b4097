"""The tiny CLIP weights that ship with the code, for world sizes whose pretraining outlasts the book.

    aaclip miniature --pretrain --size default     # made once, committed: weights/default/
    build_world(size="default")                    # checks them, then copies them into the world

A shipped folder is an open_clip folder (open_clip_config.json, open_clip_model.safetensors,
pretraining.json; not the pretraining captions, which the seed redraws) plus `manifest.json`: the command that made it, the seed, the digest of the
pretraining code (`build.PART_SOURCES["tiny_clip"]`: the world's drawing, the marks of defects.py
and tiny_clip.py, where the recipe lives), every file's sha256, the time taken and the final loss. Weights are used only
when the manifest's code digest is today's and every file has its recorded hash; otherwise the
build stops and says which command makes them again: shipped weights can never drift from the code
that is said to have made them (tests/test_miniature.py checks the same on every run).
"""

from __future__ import annotations

import json
import platform
import shutil
import tempfile
import time
from pathlib import Path

from aaclip.errors import AAClipError
from aaclip.io import sha256_file, write_json

SHIPPED_DIR = Path(__file__).resolve().parent / "weights"
SHIPPED_SIZES = ("default",)  # the smoke world pretrains from scratch, in CI too
MANIFEST = "manifest.json"
CAPTIONS = "pretrain_captions.jsonl"  # written by a from-scratch build; not shipped


def folder(size: str) -> Path:
    return SHIPPED_DIR / size


def command(size: str, seed: int) -> str:
    return f"aaclip miniature --pretrain --size {size} --seed {seed}"


def read(size: str) -> dict:
    path = folder(size) / MANIFEST
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise AAClipError(f"{path}: no readable manifest of the shipped tiny CLIP ({err}); "
                          f"make the weights with `{command(size, 0)}`") from err


def verify(size: str, seed: int, code: str) -> dict:
    """The manifest of the shipped weights for `size`, once their code digest and every hash check out."""
    manifest = read(size)
    remake = f"make them again with `{command(size, seed)}` and commit {folder(size)}"
    if manifest.get("seed") != seed:
        raise AAClipError(f"the shipped tiny CLIP ({folder(size)}) was pretrained with seed {manifest.get('seed')}, "
                          f"not {seed}: {remake}")
    if manifest.get("code_digest") != code:
        raise AAClipError(f"the shipped tiny CLIP ({folder(size)}) was made by other pretraining code (digest "
                          f"{manifest.get('code_digest', '?')[:12]}, today's {code[:12]}): {remake}")
    for name, expected in manifest["sha256"].items():
        path = folder(size) / name
        found = sha256_file(path) if path.is_file() else None
        if found != expected:
            raise AAClipError(f"{path}: sha256 {found or 'missing'}, the manifest says {expected}: {remake}")
    return manifest


def install(size: str, seed: int, code: str, directory: Path) -> dict:
    """Copy the checked shipped weights into a world's tiny CLIP folder; returns the manifest."""
    manifest = verify(size, seed, code)
    directory.mkdir(parents=True, exist_ok=True)
    for name in manifest["sha256"]:
        shutil.copy2(folder(size) / name, directory / name)
    return manifest


def make(size: str, seed: int, code: str, pretrain, progress: bool = True) -> dict:
    """Pretrain with `pretrain(directory) -> record` into a fresh folder, write its manifest, and only then
    put it in place of the shipped folder (an interrupted run leaves the old weights untouched)."""
    SHIPPED_DIR.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{size}-", dir=SHIPPED_DIR))
    try:
        start = time.perf_counter()
        record = pretrain(staging)
        (staging / CAPTIONS).unlink(missing_ok=True)  # 11 MB that generate.pretrain_set redraws exactly
        files = sorted(p.name for p in staging.iterdir() if p.is_file())
        import torch

        manifest = {
            "command": command(size, seed), "size": size, "seed": seed, "code_digest": code,
            "sha256": {name: sha256_file(staging / name) for name in files},
            "seconds": time.perf_counter() - start, "final_loss": record["final_loss"], "steps": record["steps"],
            "images": record["images"], "epochs": record["epochs"],
            "made_on": {"torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine()},
        }  # fmt: skip
        write_json(staging / MANIFEST, manifest)
        shutil.rmtree(folder(size), ignore_errors=True)
        staging.rename(folder(size))
        return manifest
    finally:
        shutil.rmtree(staging, ignore_errors=True)
