"""`build_world`: the datasets, the pretrained tiny CLIP and the evidence, cached by content hash.

The output folder holds everything later commands need (`--data-root DIR` is enough), in the
same descriptor files a user's own data and backbone would have:

    DIR/mini-aux/, DIR/mini-target/, DIR/mini-scan/   images, masks, full-shot.jsonl, dataset.json
    DIR/tiny_clip/                                      an open_clip folder: open_clip_config.json,
                                                        open_clip_model.safetensors; pretraining.json
                                                        and pretrain_captions.jsonl say how it was made
    DIR/summary.json                                    the evidence (see evidence.py)
    DIR/manifest.json                                   what was built, how, and every file's sha256

The build has three parts (datasets, tiny_clip, evidence). A part is reused only when the
manifest's key (world version, size, seed, digest of the code that makes the part) matches and
every one of its files still has its recorded hash; otherwise it is rebuilt, never silently
used. The manifest is removed before any rebuilding and written last, so an interrupted build
leaves no valid cache behind. `seconds` in the summary is the cost of all three parts (a reused
part counts with the time it took when it was built).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import io
import json
import shutil
import time
import tokenize
from pathlib import Path

from aaclip.errors import AAClipError
from aaclip.io import sha256_file, write_json
from aaclip_miniature.catalog import DATASETS, SIZES

WORLD_VERSION = 2  # 2: descriptor files (dataset.json, an open_clip folder) instead of names the library knew
MANIFEST = "manifest.json"
SUMMARY = "summary.json"
TINY_CLIP_DIR = "tiny_clip"
PROFILE_OF_SIZE = {"default": "miniature", "smoke": "smoke"}
SIZE_OF_PROFILE = {profile: size for size, profile in PROFILE_OF_SIZE.items()}
# The code each part depends on: changing it invalidates the part's cache.
_WORLD = ("aaclip_miniature.catalog", "aaclip_miniature.render", "aaclip_miniature.generate")
PART_SOURCES = {
    "datasets": (*_WORLD, "aaclip_miniature.defects"),
    "tiny_clip": (*_WORLD, "aaclip_miniature.defects", "aaclip_miniature.tiny_clip"),  # pretraining draws marks
    "evidence": (
        "aaclip_miniature.evidence", "aaclip.prompts", "aaclip.runs.inference", "aaclip.runs.evaluate",
        "aaclip.model", "aaclip.backbone", "aaclip.scoring", "aaclip.metrics", "aaclip.data.dataset",
    ),
}  # fmt: skip
PARTS = tuple(PART_SOURCES)


def build_world(
    out: str | Path = "data/miniature", size: str = "default", seed: int = 0, progress: bool = True
) -> dict:
    """Build (or reuse) the miniature world in `out`; returns the evidence summary."""
    if size not in SIZES:
        raise AAClipError(f"size={size!r}: choose one of {', '.join(SIZES)}")
    out = Path(out)
    with build_lock(out):
        return _build_world(out, size, seed, progress)


def world_for(cfg, progress: bool = True) -> dict | None:
    """The world (summary) a miniature profile's config reads, built in its data root if needed;
    None for any other profile."""
    size = SIZE_OF_PROFILE.get(cfg.runtime.profile)
    return None if size is None else build_world(cfg.runtime.data_root, size=size, progress=progress)


def _build_world(out: Path, size: str, seed: int, progress: bool) -> dict:
    keys = {part: part_key(part, size, seed) for part in PARTS}
    manifest = read_manifest(out)
    valid = {part: part_is_valid(out, manifest, part, keys[part]) for part in PARTS}
    valid["evidence"] = valid["evidence"] and valid["datasets"] and valid["tiny_clip"]
    if all(valid.values()):
        return {**json.loads((out / SUMMARY).read_text()), "cached": True}

    (out / MANIFEST).unlink(missing_ok=True)
    parts = {p: manifest["parts"][p] for p in PARTS if valid[p]}
    if not valid["datasets"]:
        parts["datasets"] = build_datasets(out, size, seed, progress)
    if not valid["tiny_clip"]:
        parts["tiny_clip"] = build_tiny_clip(out, size, seed, progress)
    parts["evidence"] = build_evidence(out, size, seed, parts, progress)
    for part in PARTS:
        parts[part]["key"] = keys[part]
    write_json(out / MANIFEST, {"world_version": WORLD_VERSION, "size": size, "seed": seed, "parts": parts})
    return {**json.loads((out / SUMMARY).read_text()), "cached": False}


# ---------------------------------------------------------------------------- parts
def build_datasets(out: Path, size: str, seed: int, progress: bool) -> dict:
    from aaclip.data.registry import custom_info, write_custom_info
    from aaclip_miniature.generate import write_dataset

    start = time.perf_counter()
    counts = {}
    for name in DATASETS:
        shutil.rmtree(out / name, ignore_errors=True)  # no stale files from another size or seed
        records = write_dataset(out, name, SIZES[size][name], seed, SIZES[size]["image_px"], progress)
        entry = DATASETS[name]
        made_by = f"aaclip miniature --size {size} --seed {seed}"
        write_custom_info(out / name, custom_info(name, entry["classes"], entry["domain"], True, made_by=made_by))
        anomalous = sum(r["label"] for r in records)
        counts[name] = {"normal": len(records) - anomalous, "anomalous": anomalous}
    files = hash_files(out, [p for name in DATASETS for p in sorted((out / name).rglob("*")) if p.is_file()])
    return {"files": files, "seconds": time.perf_counter() - start, "counts": counts}


def build_tiny_clip(out: Path, size: str, seed: int, progress: bool) -> dict:
    """The world's tiny CLIP: the shipped weights where the size has them (checked, then copied), else
    pretrained here."""
    from aaclip_miniature import shipped

    start = time.perf_counter()
    directory = out / TINY_CLIP_DIR
    shutil.rmtree(directory, ignore_errors=True)
    if size in shipped.SHIPPED_SIZES:
        manifest = shipped.install(size, seed, code_digest(PART_SOURCES["tiny_clip"]), directory)
        files = hash_files(out, sorted(p for p in directory.iterdir() if p.is_file()))
        recipe = {k: manifest[k] for k in ("images", "epochs", "steps", "final_loss")}
        recipe |= {"shipped": True, "command": manifest["command"], "code_digest": manifest["code_digest"],
                   "pretraining_seconds": manifest["seconds"], "made_on": manifest["made_on"]}
        seconds = time.perf_counter() - start
        return {"files": files, "seconds": seconds, "drawing": 0.0, "training": seconds, "pretraining": recipe}
    record = pretrain_into(directory, size, seed, progress)
    files = hash_files(out, sorted(p for p in directory.iterdir() if p.is_file()))
    recipe = {k: record[k] for k in ("images", "epochs", "steps", "final_loss")} | {"shipped": False}
    return {"files": files, "seconds": time.perf_counter() - start, "drawing": record["drawing"],
            "training": record["training"], "pretraining": recipe}


def pretrain_into(directory: Path, size: str, seed: int, progress: bool) -> dict:
    """Draw the pretraining set, pretrain a fresh tiny CLIP with the size's recipe, save its open_clip
    folder (with the captions it saw) in `directory`; returns what it cost and reached."""
    import torch

    from aaclip_miniature import generate, tiny_clip

    start = time.perf_counter()
    images, captions, pictures = generate.pretrain_set(
        SIZES[size]["pretrain"], seed, SIZES[size]["image_px"], tiny_clip.NATIVE_SIZE, progress
    )
    drawn = time.perf_counter()
    tokenizer = tiny_clip.get_tokenizer()
    tokens = torch.stack([tokenizer(texts) for texts in equal_count(captions)])
    settings = tiny_clip.PretrainSettings(**tiny_clip.RECIPES[size])
    model, history = tiny_clip.pretrain(images, tokens, settings, seed, progress)
    extra = {"pretrain_images": len(images), "history": history, "image_px": SIZES[size]["image_px"]}
    tiny_clip.save(model, directory, settings, seed, extra)
    generate.write_captions(directory / "pretrain_captions.jsonl", pictures)
    return {"images": len(images), "epochs": settings.epochs, "steps": tiny_clip.pretrain_steps(len(images), settings),
            "final_loss": history[-1]["loss"], "drawing": drawn - start, "training": time.perf_counter() - drawn}


def make_shipped(size: str, seed: int = 0, progress: bool = True) -> dict:
    """`aaclip miniature --pretrain`: pretrain the size's tiny CLIP and write it as its shipped weights."""
    from aaclip_miniature import shipped

    if size not in shipped.SHIPPED_SIZES:
        raise AAClipError(f"size {size!r} pretrains in every build; shipped weights are made for "
                          f"{', '.join(shipped.SHIPPED_SIZES)}")
    return shipped.make(size, seed, code_digest(PART_SOURCES["tiny_clip"]),
                        lambda directory: pretrain_into(directory, size, seed, progress), progress)


def build_evidence(out: Path, size: str, seed: int, parts: dict, progress: bool) -> dict:
    from aaclip.config import Config
    from aaclip_miniature import evidence, tiny_clip

    start = time.perf_counter()
    model, tokenizer = tiny_clip.load(out / TINY_CLIP_DIR)
    untrained, _ = tiny_clip.create_model(seed=seed)
    target = DATASETS["mini-target"]["classes"]
    accuracy = evidence.native_class_accuracy(model, tokenizer, out, "mini-target", tiny_clip.NATIVE_SIZE)
    chance = evidence.native_class_accuracy(untrained.eval(), tokenizer, out, "mini-target", tiny_clip.NATIVE_SIZE)
    aux_accuracy = evidence.native_class_accuracy(model, tokenizer, out, "mini-aux", tiny_clip.NATIVE_SIZE)
    cosine = evidence.anchor_cosine(model, tokenizer, target)
    cfg = Config.load(PROFILE_OF_SIZE[size], {"runtime.data_root": str(out)})
    baseline = evidence.baseline_aurocs(cfg, progress=progress)
    seconds = time.perf_counter() - start
    weights = out / TINY_CLIP_DIR / tiny_clip.WEIGHTS_FILE
    summary = {
        "size": size,
        "seed": seed,
        "class_accuracy": accuracy["accuracy"],
        "class_accuracy_per_class": accuracy["per_class"],
        "class_accuracy_random_init": chance["accuracy"],
        "class_accuracy_aux": aux_accuracy["accuracy"],
        "anchor_cosine": cosine["mean"],
        "anchor_cosine_per_class": cosine["per_class"],
        "baseline_image_auroc": baseline["mini-target"]["image_auroc"],
        "baseline_pixel_auroc": baseline["mini-target"]["pixel_auroc"],
        "baseline": baseline,
        "baseline_profile": cfg.runtime.profile,
        "image_size": cfg.model.image_size,
        "native_image_size": tiny_clip.NATIVE_SIZE,
        "counts": parts["datasets"]["counts"],
        "checkpoint_bytes": weights.stat().st_size,
        "pretraining": parts["tiny_clip"]["pretraining"],
        "seconds": parts["datasets"]["seconds"] + parts["tiny_clip"]["seconds"] + seconds,
        "seconds_per_part": {
            "datasets": parts["datasets"]["seconds"],
            "pretraining_set": parts["tiny_clip"]["drawing"],
            "pretraining": parts["tiny_clip"]["training"],
            "evidence": seconds,
        },
    }
    path = write_json(out / SUMMARY, summary)
    return {"files": hash_files(out, [path]), "seconds": seconds}


# ---------------------------------------------------------------------------- cache
@contextlib.contextmanager
def build_lock(out: Path):
    """One builder per folder at a time (notebooks, CLI, tests): a second one waits, then finds the cache."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".build.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def part_key(part: str, size: str, seed: int) -> dict:
    from aaclip_miniature import shipped

    key = {"world_version": WORLD_VERSION, "size": size, "seed": seed, "code": code_digest(PART_SOURCES[part])}
    if part == "tiny_clip" and size in shipped.SHIPPED_SIZES:  # new shipped weights make a new world
        key["shipped"] = file_hash(shipped.folder(size) / shipped.MANIFEST)
    return key


def code_digest(modules: tuple[str, ...]) -> str:
    """sha256 over what the modules' code says (`code_text`: their source without comments and
    docstrings), so that rewording a comment neither redraws the world nor stales the shipped tiny
    CLIP, while any changed name, number or statement does. A missing module counts as such."""
    digest = hashlib.sha256()
    for module in modules:
        spec = importlib.util.find_spec(module)
        digest.update(module.encode())
        digest.update(code_text(Path(spec.origin).read_text()).encode() if spec and spec.origin else b"<missing>")
    return digest.hexdigest()


def code_text(source: str) -> str:
    """`source` without comments, bare string statements (docstrings) and blank lines; indentation kept.

    The tokenizer only says where those are; the text itself is cut by position, so Python 3.12's
    new f-string tokens change nothing and the digest is the same on every Python that reads the code.
    """
    tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    logical = [t for t in tokens if t.type not in (tokenize.NL, tokenize.COMMENT)]
    starts = (tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT)
    cuts = [t for t in tokens if t.type == tokenize.COMMENT]
    for before, token, after in zip([None, *logical], logical, logical[1:]):
        bare = before is None or before.type in starts
        if token.type == tokenize.STRING and bare and after.type in (tokenize.NEWLINE, tokenize.ENDMARKER):
            cuts.append(token)
    lines = source.splitlines()
    for token in sorted(cuts, key=lambda t: t.start, reverse=True):
        (row, col), (end_row, end_col) = token.start, token.end
        lines[row - 1 : end_row] = [lines[row - 1][:col] + lines[end_row - 1][end_col:]]
    return "\n".join(line.rstrip() for line in lines if line.strip())


def read_manifest(out: Path) -> dict | None:
    try:
        manifest = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and isinstance(manifest.get("parts"), dict) else None


def part_is_valid(out: Path, manifest: dict | None, part: str, key: dict) -> bool:
    entry = (manifest or {}).get("parts", {}).get(part)
    if not isinstance(entry, dict) or entry.get("key") != key or not entry.get("files"):
        return False
    return all(file_hash(out / rel) == expected for rel, expected in entry["files"].items())


def file_hash(path: Path) -> str | None:
    try:
        return sha256_file(path)
    except OSError:
        return None


def hash_files(out: Path, paths) -> dict[str, str]:
    return {Path(p).relative_to(out).as_posix(): file_hash(Path(p)) for p in paths}


def equal_count(captions: list[list[str]]) -> list[list[str]]:
    """The same number of captions per picture (templates repeated in turn) so they stack."""
    most = max(len(c) for c in captions)
    return [[texts[i % len(texts)] for i in range(most)] for texts in captions]
