"""The miniature world (issue 3): honest synthetic data, exact masks, a tiny CLIP that knows classes.

The smoke-size world is conftest's `smoke_world`, built once per session; the other tests draw
a handful of pictures.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from aaclip.errors import AAClipError
from aaclip.io import sha256_file
from aaclip_miniature import build, catalog, defects, generate, render, shipped, tiny_clip

os.environ.setdefault("HF_HUB_OFFLINE", "1")
SEED = 0


@pytest.fixture(scope="session")
def world(smoke_world) -> tuple[Path, dict]:
    """conftest's session smoke world (seed 0) and its summary; tests here only read it."""
    return smoke_world, json.loads((smoke_world / "summary.json").read_text())


@pytest.fixture
def world_copy(world, tmp_path) -> Path:
    """A private copy to corrupt: other tests keep using the shared world."""
    return Path(shutil.copytree(world[0], tmp_path / "world"))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree_hashes(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): sha256(p) for p in sorted(root.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------- the world's design
def test_auxiliary_and_target_worlds_are_disjoint_and_each_has_objects_and_textures():
    aux = set(catalog.DATASETS["mini-aux"]["classes"])
    target = set(catalog.DATASETS["mini-target"]["classes"])
    assert not aux & target
    assert len(aux | target) >= 12
    for classes in (aux, target):
        assert {catalog.CLASSES[c]["kind"] for c in classes} == {"object", "texture"}
    assert catalog.DATASETS["mini-scan"]["domain"] == "medical"
    # the paper's warning about overfitting to seen defect shapes needs kinds the aux world never shows
    assert {"crack", "missing_part", "deformation"} <= set(catalog.UNSEEN_DEFECTS)


def state_words() -> set[str]:
    """The words book:method-anchors's abnormal prompts add to a class name ("damaged", "with", "flaw", ...)."""
    from aaclip.prompts import ABNORMAL_STATES, NORMAL_STATES

    words = lambda states: {w for state in states for w in state.replace("{}", " ").split()}
    return words(ABNORMAL_STATES) - words(NORMAL_STATES)


def test_captions_name_class_and_colour_but_never_a_defect_or_a_prompt_state_word():
    defect_words = re.compile(r"damag|broken|flaw|defect|scratch|crack|hole|stain|missing|contamin|deform|lesion")
    assert {"damaged", "broken", "with", "flaw", "defect", "damage"} <= state_words()
    for index in range(60):
        picture, _ = generate.pretrain_picture(index, SEED, 48)
        captions = picture.captions()
        name = catalog.world_classes()[picture.scene.class_name]
        assert all(name in c for c in captions)
        assert picture.scene.kind == "scan" or any(picture.scene.colour_phrase() in c for c in captions)
        assert not any(defect_words.search(c) for c in captions), captions
        assert not any(state_words() & set(re.findall(r"[a-z]+", c)) for c in captions), captions


def test_pretraining_twins_differ_only_by_a_visible_mark_that_the_caption_names():
    for scene_index in range(24):
        (plain, plain_pixels), (marked, marked_pixels) = (
            generate.pretrain_picture(2 * scene_index + twin, SEED, 96) for twin in (0, 1)
        )
        assert plain.scene == marked.scene and plain.mark is None and marked.mark
        changed = np.abs(marked_pixels.astype(int) - plain_pixels.astype(int)).max(-1)
        assert 12 <= (changed > 0).sum() <= 0.2 * changed.size  # a mark, not a new picture
        # visible, not a faint tint: a dent or a swirl moves edges and texture by a few levels at most
        # pixels, so the strongest tenth of the mark is asked to change a channel by 40 levels or more
        assert np.percentile(changed[changed > 0], 90) >= 40
        assert [c.removesuffix(f", {marked.mark} on it.") for c in marked.captions()] == [
            c.removesuffix(".") for c in plain.captions()
        ]


def test_twin_pairs_always_share_a_batch():
    generator = torch.Generator().manual_seed(0)
    order = tiny_clip.shuffle(40, twins=True, generator=generator).tolist()
    assert sorted(order) == list(range(40))
    for start in range(0, 40, 8):
        batch = set(order[start : start + 8])
        assert all(i ^ 1 in batch for i in batch)
    with pytest.raises(ValueError, match="even"):
        tiny_clip.pretrain(torch.zeros(6, 3, 64, 64, dtype=torch.uint8), torch.zeros(6, 1, 32, dtype=torch.long),
                           tiny_clip.PretrainSettings(batch_size=3), seed=0, progress=False)  # fmt: skip


def test_every_prompt_and_caption_fits_the_tiny_clip_context():
    from aaclip.prompts import sentences

    tokenizer = tiny_clip.get_tokenizer()
    context = tiny_clip.MODEL_CFG["text_cfg"]["context_length"]
    texts = [s for name in catalog.world_classes().values() for group in sentences(name) for s in group]
    texts += [c for i in range(90) for c in generate.pretrain_picture(i, SEED, 48)[0].captions()]
    longest = max(len(tokenizer.encode(t)) for t in texts) + 2  # start and end tokens
    assert longest <= context


# ---------------------------------------------------------------------------- defects and masks
@pytest.mark.parametrize("dataset", list(catalog.DATASETS))
def test_masks_cover_exactly_the_drawn_defects(dataset):
    kinds_seen = set()
    for class_name in catalog.DATASETS[dataset]["classes"]:
        for index in range(4):
            sample = generate.make_sample(dataset, class_name, index, 1, SEED, 96)
            kinds_seen.add(sample.kind)
            changed = np.abs(sample.image.astype(int) - sample.normal.astype(int)).max(-1) > 0
            assert sample.mask.any()
            assert not (changed & ~sample.mask).any(), f"{class_name}/{index} {sample.kind}: change outside mask"
            coverage = (changed & sample.mask).sum() / sample.mask.sum()
            assert coverage > 0.5, f"{class_name}/{index} {sample.kind}: mask covers unchanged pixels ({coverage:.2f})"
    assert kinds_seen <= set(catalog.DATASETS[dataset]["defects"])


KIND_CASES = [(kind, name) for kind in defects.KINDS if kind != "lesion" for name in ("nut", "weave")]
KIND_CASES += [("lesion", "brain")]


@pytest.mark.parametrize("kind,class_name", KIND_CASES)
def test_every_defect_kind_changes_only_its_mask_on_objects_and_textures(kind, class_name):
    for index, subtle in enumerate((False, True)):
        scene = render.sample_scene(class_name, np.random.default_rng(index))
        layers = render.render(scene, 96)
        composite, mask = defects.apply(kind, layers, np.random.default_rng(index), subtle)
        changed = render.finish(composite, layers) != render.finish(layers.composite(), layers)
        changed = changed.any(-1)
        assert mask.any() and not (changed & ~mask).any()
        assert (changed & mask).sum() > 0.5 * mask.sum()


def test_normal_pictures_have_no_mask_and_twin_equals_image():
    sample = generate.make_sample("mini-target", "weave", 0, 0, SEED, 96)
    assert sample.mask is None and sample.kind is None
    assert np.array_equal(sample.image, sample.normal)


# ---------------------------------------------------------------------------- files on disk
@pytest.mark.slow
def test_metadata_validates_through_the_dataset_layer(world):
    from aaclip.data.dataset import load_dataset
    from aaclip.data.metadata import count_labels, validate_metadata
    from aaclip.data.registry import get_dataset

    out, _ = world
    for name in catalog.DATASETS:
        records = validate_metadata(out / name / "full-shot.jsonl", out / name)
        info = get_dataset(name, data_root=out)  # found by its dataset.json, like any prepared folder
        assert set(info.classes) == {r["class_name"] for r in records}
        assert info.prompt_names == catalog.DATASETS[name]["classes"] and info.domain == catalog.DATASETS[name]["domain"]
        for normal, anomalous in count_labels(records).values():
            assert 0.35 <= normal / (normal + anomalous) <= 0.45
    data = load_dataset(out, "mini-target", 96, tiny_clip.MEAN, tiny_clip.STD)
    item = next(data[i] for i, r in enumerate(data.records) if r["label"] == 1)
    assert item.image.shape == (1, 3, 96, 96) and item.gt_mask.sum() > 0


@pytest.mark.slow
def test_files_on_disk_are_the_drawn_samples(world):
    from PIL import Image

    out, _ = world
    records = [json.loads(line) for line in (out / "mini-target" / "full-shot.jsonl").read_text().splitlines()]
    record = next(r for r in records if r["label"] == 1)
    index = int(Path(record["image_path"]).stem)
    px = catalog.SIZES["smoke"]["image_px"]
    sample = generate.make_sample("mini-target", record["class_name"], index, 1, SEED, px)
    assert np.array_equal(np.asarray(Image.open(out / "mini-target" / record["image_path"])), sample.image)
    assert np.array_equal(np.asarray(Image.open(out / "mini-target" / record["mask_path"])) > 0, sample.mask)
    assert f"/test/{sample.kind}/" in record["image_path"]


@pytest.mark.slow
def test_same_seed_gives_the_same_files_and_another_seed_differs(world, tmp_path):
    out, _ = world
    per_class = catalog.SIZES["smoke"]["mini-scan"]
    px = catalog.SIZES["smoke"]["image_px"]
    generate.write_dataset(tmp_path / "same", "mini-scan", per_class, SEED, px, progress=False)
    generate.write_dataset(tmp_path / "other", "mini-scan", per_class, SEED + 1, px, progress=False)
    same = tree_hashes(tmp_path / "same" / "mini-scan")
    reference = {p: sha256(out / "mini-scan" / p) for p in same}  # the world may hold later files (shots)
    assert same == reference
    other = tree_hashes(tmp_path / "other" / "mini-scan")

    def pictures(hashes):  # picture index -> hash, whatever its defect folder
        return {Path(p).stem: h for p, h in hashes.items() if "/test/" in p}

    first, second = pictures(reference), pictures(other)
    assert len(first) == len(second) == per_class
    assert sum(first[k] != second[k] for k in first) == per_class


def test_pretraining_is_deterministic():
    images, captions, _ = generate.pretrain_set(16, SEED, 96, tiny_clip.NATIVE_SIZE, progress=False)
    tokenizer = tiny_clip.get_tokenizer()
    tokens = torch.stack([tokenizer(c) for c in build.equal_count(captions)])
    settings = tiny_clip.PretrainSettings(epochs=1, batch_size=8)
    first, _ = tiny_clip.pretrain(images, tokens, settings, seed=3, progress=False)
    second, _ = tiny_clip.pretrain(images, tokens, settings, seed=3, progress=False)
    third, _ = tiny_clip.pretrain(images, tokens, settings, seed=4, progress=False)
    a, b, c = first.state_dict(), second.state_dict(), third.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


# ---------------------------------------------------------------------------- cache
@pytest.mark.slow
def test_cache_is_reused_and_a_corrupt_file_is_rebuilt(world, world_copy):
    out, summary = world_copy, world[1]
    weights = out / "tiny_clip" / tiny_clip.WEIGHTS_FILE
    image = next((out / "mini-aux").rglob("*.png"))
    original, weights_mtime = sha256(image), weights.stat().st_mtime_ns

    again = build.build_world(out, size="smoke", seed=SEED, progress=False)
    assert again["cached"] and again["class_accuracy"] == summary["class_accuracy"]

    image.write_bytes(b"not a png")
    rebuilt = build.build_world(out, size="smoke", seed=SEED, progress=False)
    assert not rebuilt["cached"]
    assert sha256(image) == original  # redrawn identically
    assert weights.stat().st_mtime_ns == weights_mtime  # the intact tiny CLIP was kept
    assert rebuilt["class_accuracy"] == summary["class_accuracy"]


@pytest.mark.slow
def test_a_second_builder_waits_for_the_first(world_copy):
    import threading

    results = []
    with build.build_lock(world_copy):
        waiting = threading.Thread(target=lambda: results.append(build.build_world(world_copy, "smoke", SEED, False)))
        waiting.start()
        waiting.join(timeout=1.0)
        assert waiting.is_alive() and not results  # blocked while the folder is being built
    waiting.join(timeout=60)
    assert results and results[0]["cached"]


@pytest.mark.slow
def test_cache_is_stale_for_another_seed_size_or_a_missing_file(world):
    out, _ = world
    manifest = build.read_manifest(out)
    assert build.part_is_valid(out, manifest, "datasets", build.part_key("datasets", "smoke", SEED))
    assert not build.part_is_valid(out, manifest, "datasets", build.part_key("datasets", "smoke", SEED + 1))
    assert not build.part_is_valid(out, manifest, "datasets", build.part_key("datasets", "default", SEED))
    datasets = manifest["parts"]["datasets"]
    entry = dict(datasets, files={**datasets["files"], "mini-aux/gone.png": "0"})
    assert not build.part_is_valid(out, {"parts": {"datasets": entry}}, "datasets", entry["key"])


# ---------------------------------------------------------------------------- the tiny CLIP
@pytest.mark.slow
def test_smoke_pretraining_beats_random_initialisation(world):
    from aaclip_miniature import evidence

    out, summary = world
    model, tokenizer = tiny_clip.load(out / "tiny_clip")
    untrained, _ = tiny_clip.create_model(seed=123)
    trained = evidence.native_class_accuracy(model, tokenizer, out, "mini-target", tiny_clip.NATIVE_SIZE)["accuracy"]
    random = evidence.native_class_accuracy(untrained.eval(), tokenizer, out, "mini-target", tiny_clip.NATIVE_SIZE)["accuracy"]
    assert trained >= random + 0.1, (trained, random)
    assert summary["class_accuracy"] == pytest.approx(trained)


@pytest.mark.slow
def test_summary_holds_the_evidence(world):
    out, summary = world
    on_disk = json.loads((out / "summary.json").read_text())
    for key in ("class_accuracy", "anchor_cosine", "baseline_image_auroc", "baseline_pixel_auroc", "seconds"):
        assert key in on_disk
    assert 0.0 <= on_disk["class_accuracy"] <= 1.0 and -1.0 <= on_disk["anchor_cosine"] <= 1.0
    assert set(on_disk["class_accuracy_per_class"]) == set(catalog.DATASETS["mini-target"]["classes"])
    assert on_disk["checkpoint_bytes"] == (out / "tiny_clip" / tiny_clip.WEIGHTS_FILE).stat().st_size
    config = json.loads((out / "tiny_clip" / tiny_clip.CONFIG_FILE).read_text())
    assert config["model_name"] == tiny_clip.MODEL_NAME and config["model_cfg"] == tiny_clip.MODEL_CFG
    recipe = json.loads((out / "tiny_clip" / tiny_clip.RECIPE_FILE).read_text())
    assert recipe["seed"] == SEED and recipe["twins"] is True


@pytest.mark.slow
def test_the_pretraining_set_is_described_picture_by_picture(world):
    out, summary = world
    lines = (out / "tiny_clip" / "pretrain_captions.jsonl").read_text().splitlines()
    entries = [json.loads(line) for line in lines]
    assert len(entries) == catalog.SIZES["smoke"]["pretrain"] == summary["pretraining"]["images"]
    assert [e["index"] for e in entries] == list(range(len(entries)))
    assert all((e["mark"] is None) == (e["index"] % 2 == 0) for e in entries)  # the odd twin is marked
    picture, _ = generate.pretrain_picture(7, SEED, catalog.SIZES["smoke"]["image_px"])
    assert entries[7] == picture.description()  # any line can be redrawn from its index


@pytest.mark.slow
def test_profiles_load_the_tiny_clip_from_the_world(world):
    from aaclip.backbone import load_backbone
    from aaclip.config import Config

    out, _ = world
    for profile in ("smoke", "miniature"):
        cfg = Config.load(profile, {"runtime.data_root": str(out)})
        backbone = load_backbone(cfg.model, cfg.runtime.data_root)  # open_clip's own local-dir route
        assert backbone.weights.kind == "folder" and backbone.name == tiny_clip.MODEL_NAME
        assert backbone.image_size == cfg.model.image_size
        assert backbone.grid_size == cfg.model.image_size // 8 >= 8
        assert (backbone.vision_depth, backbone.text_depth) == (8, 4)


@pytest.mark.slow
def test_cli_reports_a_reused_world(world, capsys):
    from aaclip.cli import main

    out, _ = world
    assert main(["miniature", "--size", "smoke", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "reused" in printed and "class accuracy" in printed


# ---------------------------------------------------------------------------- shipped weights
def test_the_shipped_tiny_clip_was_made_by_todays_pretraining_code():
    """Shipped weights cannot drift from the code said to have made them: changing how the world draws
    pictures or how the tiny CLIP trains fails here until `aaclip miniature --pretrain` has run again."""
    today = build.code_digest(build.PART_SOURCES["tiny_clip"])
    for size in shipped.SHIPPED_SIZES:
        manifest = shipped.read(size)
        assert manifest["code_digest"] == today, f"the shipped weights are stale: run `{manifest['command']}`"
        assert manifest["command"] == shipped.command(size, manifest["seed"])
        for name, expected in manifest["sha256"].items():
            assert sha256_file(shipped.folder(size) / name) == expected, name
        recipe = tiny_clip.RECIPES[size]
        assert manifest["epochs"] == recipe["epochs"] and manifest["images"] == catalog.SIZES[size]["pretrain"]
        assert {"seconds", "final_loss", "steps", "made_on"} <= set(manifest)


def test_the_code_digest_follows_the_code_not_its_comments_or_docstrings():
    """A reworded comment must not stale the shipped weights (25 minutes to remake); a changed number must."""
    source = 'def width(x):\n    """The width."""\n    return x + 1  # one more pixel\n\n\nLABEL = "a line"\n'
    reworded = source.replace("The width.", "How wide a stroke is,\n    in pixels.").replace("one more", "a")
    assert build.code_text(reworded + "# the end\n") == build.code_text(source)
    for changed in (source.replace("x + 1", "x + 2"), source.replace('"a line"', '"a lines"'),
                    source.replace("    return", "    if x:\n        return")):  # fmt: skip
        assert build.code_text(changed) != build.code_text(source)


def test_stale_or_damaged_shipped_weights_are_refused_naming_the_command(tmp_path, monkeypatch):
    copy = tmp_path / "weights"
    shutil.copytree(shipped.SHIPPED_DIR, copy, ignore=shutil.ignore_patterns(".*"))
    monkeypatch.setattr(shipped, "SHIPPED_DIR", copy)
    today = build.code_digest(build.PART_SOURCES["tiny_clip"])
    size = shipped.SHIPPED_SIZES[0]
    with pytest.raises(AAClipError, match=r"other pretraining code.*aaclip miniature --pretrain --size default"):
        shipped.verify(size, 0, "0" * 64)
    with pytest.raises(AAClipError, match=r"seed 0, not 5"):
        shipped.verify(size, 5, today)
    (copy / size / tiny_clip.WEIGHTS_FILE).write_bytes(b"not the weights")
    with pytest.raises(AAClipError, match=r"open_clip_model.safetensors: sha256 \w+, the manifest says"):
        shipped.install(size, 0, today, tmp_path / "world" / "tiny_clip")
    assert not (tmp_path / "world" / "tiny_clip" / tiny_clip.WEIGHTS_FILE).exists()  # nothing half-copied

