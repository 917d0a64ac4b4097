"""A user's own data, from folder to heatmaps: no silent wrong result, no dead end, pictures worth looking at.

The folder is drawn fresh for these tests (MVTec-style, no masks, 192 px: another size than the
model's input) and is not part of any prepared world; the run is the session's smoke run.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aaclip.cli import main

pytestmark = pytest.mark.slow
SIZE = 192


def draw_folder(root: Path, n: int = 16, size: int = SIZE) -> Path:
    """`root/test/good/*.png` and `root/test/<defect>/*.png`, drawn by the miniature at `size`, no masks."""
    from aaclip_miniature import defects, generate, render

    made = 0
    for index in range(200):
        label = made % 2
        try:
            sample = generate.make_sample("mini-target", "nut", index, label, seed=7, size=size)
        except defects.DefectError:  # a defect that finds no room at this size: draw another picture
            continue
        folder = root / "test" / ("good" if not label else sample.kind)
        folder.mkdir(parents=True, exist_ok=True)
        render.to_pil(sample.image, sample.grayscale).save(folder / f"{index:03d}.png")
        made += 1
        if made == n:
            return root
    raise AssertionError("could not draw the folder")


@pytest.fixture(scope="module")
def own_folder(tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("own-data")
    draw_folder(data / "parts")
    assert main(["prepare", "folder", "--root", str(data / "parts")]) == 0
    return data


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ---------------------------------------------------------------------------- the README's route
def test_prepare_test_predict_on_a_folder_of_ones_own(own_folder, smoke_run, tmp_path, capsys):
    """The README's own-data section: a checkpoint and the folder are all it takes."""
    code, out, err = run_cli(capsys, "test", "--save-path", smoke_run.save_path, "--data-root", own_folder,
                             "--dataset", "parts", "--out", tmp_path / "test", "--quiet")
    assert code == 0, err
    assert "transductive" in out and "inductive" in out  # both modes reported
    summary = json.loads((tmp_path / "test" / "summary.json").read_text())
    assert summary["has_masks"] is False and summary["other_normalization"]["normalize"] == "inductive"
    text = (tmp_path / "test" / "summary.md").read_text()
    assert "no masks" in text and "one label only" not in text
    assert "## The same predictions, inductive" in text
    with open(tmp_path / "test" / "predictions.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == summary["n_images"] == 16
    threshold = float(rows[0]["threshold"])
    assert all(row["pred_label"] == str(int(float(row["pred_score"]) >= threshold)) for row in rows)
    assert {"inductive_pred_score", "inductive_pred_label", "max_anomaly"} <= set(rows[0])

    code, out, err = run_cli(capsys, "predict", "--save-path", smoke_run.save_path, own_folder / "parts" / "test",
                             "--out", tmp_path / "predict", "--thresholds", tmp_path / "test")
    assert code == 0, err
    assert "scoring images" in err  # a progress bar on long runs
    with open(tmp_path / "predict" / "scores.csv") as handle:
        scored = list(csv.DictReader(handle))
    assert len(scored) == 16 and all(row["pred_label"] in ("0", "1") for row in scored)
    summary_md = (tmp_path / "predict" / "summary.md").read_text()
    assert "inductive" in summary_md and "fixed 0-1 scale" in summary_md and "not stretched per image" in summary_md
    assert '"parts"' in summary_md  # the threshold's own prompts were used


def test_overlays_keep_the_image_size_and_the_relative_paths(own_folder, smoke_run, tmp_path, capsys):
    folder = tmp_path / "inputs"
    for sub in ("line-a", "line-b"):  # the same file name in two folders must not collide
        (folder / sub).mkdir(parents=True)
        shutil.copy(next((own_folder / "parts" / "test" / "good").glob("*.png")), folder / sub / "same.png")
    code, _, err = run_cli(capsys, "predict", "--save-path", smoke_run.save_path, folder, "--out", tmp_path / "out",
                           "--quiet")
    assert code == 0, err
    overlays = sorted(p.relative_to(tmp_path / "out" / "overlays").as_posix() for p in (tmp_path / "out").rglob("*.png"))
    assert overlays == ["line-a/same.png", "line-b/same.png"]
    picture = np.asarray(Image.open(tmp_path / "out" / "overlays" / "line-a" / "same.png"))
    assert picture.shape[1] > SIZE and picture.shape[0] > SIZE  # the image's own size, plus the bar and the score
    assert picture[-1, SIZE + 10 :].std() > 0  # a colour bar beside the image, not blank margin


# ---------------------------------------------------------------------------- no silent wrong result
def test_a_run_scored_with_another_backbone_is_refused(smoke_run, smoke_cfg, own_folder, tmp_path, capsys):
    """The checkpoint records the backbone's sha256, and test/predict check it."""
    from aaclip.runs.checkpoint import read_meta
    from aaclip_miniature import tiny_clip

    run = Path(shutil.copytree(smoke_run.save_path, tmp_path / "run"))
    expected = read_meta(run)["model"]["weights_sha256"]
    other = tmp_path / "other-clip"
    model, _ = tiny_clip.create_model(seed=9)
    tiny_clip.save(model, other, tiny_clip.PretrainSettings(epochs=0), seed=9)
    code, _, err = run_cli(capsys, "test", "--save-path", run, "--data-root", own_folder, "--dataset", "parts",
                           "--pretrained", other, "--quiet")
    assert code == 2 and expected in err and "not that file" in err
    code, _, err = run_cli(capsys, "predict", "--save-path", run, own_folder / "parts", "--out", tmp_path / "p",
                           "--pretrained", other, "--quiet")
    assert code == 2 and expected in err


def test_the_backbone_is_found_by_content_wherever_it_is(smoke_run, smoke_cfg, own_folder, tmp_path, capsys):
    """Another path string with the same content is the same backbone; a moved one is found by --pretrained."""
    moved = Path(shutil.copytree(Path(smoke_cfg.runtime.data_root) / "tiny_clip", tmp_path / "somewhere" / "clip"))
    code, _, err = run_cli(capsys, "test", "--save-path", smoke_run.save_path, "--data-root", own_folder,
                           "--dataset", "parts", "--pretrained", moved / "open_clip_model.safetensors", "--out",
                           tmp_path / "out", "--quiet")
    assert code == 0, err


# ---------------------------------------------------------------------------- values that make no sense
@pytest.mark.parametrize("flags, named", [
    (["--stage2-epochs", "-1"], "stage2.epochs=-1: must be >= 0"),
    (["--stage1-epochs", "0", "--stage2-epochs", "0"], "no stage would train"),
    (["--no-stage1", "--no-stage2"], "no stage would train"),
])
def test_a_training_that_trains_nothing_is_refused_before_any_work(tmp_path, capsys, flags, named):
    code, _, err = run_cli(capsys, "train", "--profile", "smoke", "--save-path", tmp_path / "run", *flags)
    assert code == 2 and named in err
    assert not (tmp_path / "run").exists()


def test_the_book_refuses_the_same_values(tmp_path, capsys):
    code, _, err = run_cli(capsys, "book", "--profile", "smoke", "-p", "stage1.epochs", "0", "-p", "stage2.epochs", "0",
                           "--out", tmp_path / "out")
    assert code == 2 and "no stage would train" in err and not (tmp_path / "out").exists()


def test_a_run_is_only_tested_with_what_it_may_change(smoke_run, own_folder, capsys):
    code, _, err = run_cli(capsys, "test", "--save-path", smoke_run.save_path, "--data-root", own_folder,
                           "--dataset", "parts", "--set", "model.levels=2,4")
    assert code == 2 and "model.levels" in err and "only eval.*, runtime.*" in err


# ---------------------------------------------------------------------------- problems surface early
def test_prepare_decodes_every_image_and_names_a_truncated_one(tmp_path, capsys):
    root = draw_folder(tmp_path / "parts", n=6)
    victim = next((root / "test" / "good").glob("*.png"))
    buffer = io.BytesIO()
    Image.open(victim).save(buffer, "PNG")
    victim.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])  # the header still reads
    code, _, err = run_cli(capsys, "prepare", "folder", "--root", root)
    assert code == 2 and str(victim) in err and "not a readable image" in err
    assert not (root / "full-shot.jsonl").exists()


def test_a_class_without_normal_images_is_refused_unless_allowed(tmp_path, capsys):
    root = draw_folder(tmp_path / "parts", n=6)
    for image in (root / "test" / "good").glob("*.png"):
        image.unlink()  # an empty good/ folder
    code, _, err = run_cli(capsys, "prepare", "folder", "--root", root)
    assert code == 2 and "class 'parts': 0 normal" in err and "--allow-one-label" in err
    assert run_cli(capsys, "prepare", "folder", "--root", root, "--allow-one-label")[0] == 0


def test_masks_in_another_folder_are_named_not_dropped_silently(tmp_path, capsys):
    root = draw_folder(tmp_path / "parts", n=6)
    (root / "masks").mkdir()
    image = next((root / "test" / "good").glob("*.png"))
    Image.new("L", Image.open(image).size).save(root / "masks" / "000_mask.png")
    code, _, err = run_cli(capsys, "prepare", "folder", "--root", root)
    assert code == 0 and f"folder {root / 'masks'} looks like masks but none was read" in err


def test_a_partly_unpacked_mvtec_converts_what_is_there(tmp_path, capsys):
    """MVTec-AD comes as one archive per class: the classes present are converted, the rest named."""
    root = tmp_path / "MVTec"
    for cls in ("bottle", "screw"):
        for folder, stem in (("good", "000"), ("broken", "001")):
            (root / cls / "test" / folder).mkdir(parents=True)
            Image.new("RGB", (16, 16)).save(root / cls / "test" / folder / f"{stem}.png")
        (root / cls / "ground_truth" / "broken").mkdir(parents=True)
        Image.new("L", (16, 16), 255).save(root / cls / "ground_truth" / "broken" / "001_mask.png")
    code, out, err = run_cli(capsys, "prepare", "mvtec", "--root", root)
    assert code == 0 and "2 classes" in out
    assert "13 of 15 classes not under" in err and "cable" in err
    code, _, err = run_cli(capsys, "prepare", "mvtec", "--root", root, "--strict")
    assert code == 2 and "13 of 15 classes" in err


# ---------------------------------------------------------------------------- recovery and messages
def test_a_damaged_last_checkpoint_resumes_from_the_newest_readable_epoch(smoke_cfg, smoke_run, tmp_path):
    from aaclip.runs.checkpoint import read_checkpoint
    from aaclip.runs.train import ResumeWarning, train

    run = Path(shutil.copytree(smoke_run.save_path, tmp_path / "run"))
    for later in run.glob("stage2_epoch[3-9]*"):
        later.unlink()  # as if the run had stopped after stage 2 epoch 2
    (run / "last.safetensors").write_bytes((run / "last.safetensors").read_bytes()[:100])  # truncated
    cfg = smoke_cfg.replace({"runtime.save_path": str(run)})
    with pytest.warns(ResumeWarning, match="resuming from stage2_epoch2.safetensors"):
        resumed = train(cfg, progress=False)
    assert not resumed.cached
    final, uninterrupted = read_checkpoint(run).adapters, read_checkpoint(smoke_run.save_path).adapters
    assert all(np.array_equal(final[k].numpy(), v.numpy()) for k, v in uninterrupted.items())


def test_overwrite_replaces_a_run_whose_last_checkpoint_is_damaged(smoke_cfg, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.safetensors").write_bytes(b"truncated")
    code, _, err = run_cli(capsys, "train", "--profile", "smoke", "--data-root", smoke_cfg.runtime.data_root,
                           "--save-path", run, "--stage2-epochs", "1", "--stage1-epochs", "1", "--quiet")
    assert code == 2 and "--overwrite" in err
    code, _, err = run_cli(capsys, "train", "--profile", "smoke", "--data-root", smoke_cfg.runtime.data_root,
                           "--save-path", run, "--stage2-epochs", "1", "--stage1-epochs", "1", "--quiet", "--overwrite")
    assert code == 0, err


def test_ctrl_c_says_how_to_resume(smoke_cfg, tmp_path, capsys, monkeypatch):
    import aaclip.losses

    real, calls = aaclip.losses.stage2_loss, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(aaclip.losses, "stage2_loss", interrupted)
    code, _, err = run_cli(capsys, "train", "--profile", "smoke", "--data-root", smoke_cfg.runtime.data_root,
                           "--save-path", tmp_path / "run", "--quiet")
    assert code == 130
    assert "holds stage 1 epoch 1: run the same command again to resume from there" in err


def test_a_metadata_path_that_is_a_folder_says_so(tmp_path):
    from aaclip.data.dataset import load_dataset
    from aaclip.data.registry import custom_info, write_custom_info
    from aaclip.errors import AAClipError

    write_custom_info(tmp_path / "parts", custom_info("parts", {"parts": "parts"}))
    (tmp_path / "parts" / "full-shot.jsonl").mkdir()
    with pytest.raises(AAClipError, match="is a folder, not a metadata file"):
        load_dataset(tmp_path, "parts", 96, (0.5,) * 3, (0.5,) * 3)
