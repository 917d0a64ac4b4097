"""Training (book:method-stage1, book:method-stage2): both stages, frozen backbone, per-epoch checkpoints, resume, cache, NaN guard."""

import json
import math
import time
from pathlib import Path

import pytest
import torch

import aaclip.losses
from aaclip.backbone import load_backbone
from aaclip.errors import AAClipError
from aaclip.runs.checkpoint import read_checkpoint, read_meta
from aaclip.runs.train import TrainingDivergedError, train

pytestmark = pytest.mark.slow


def steps_per_epoch(cfg, stage):
    from aaclip.data.dataset import load_dataset

    n = len(load_dataset(cfg.runtime.data_root, cfg.train.dataset, 96, (0.5,) * 3, (0.5,) * 3, shot=cfg.train.shot))
    return math.ceil(n / (cfg.stage1.batch_size if stage == 1 else cfg.stage2.batch_size))


def test_trains_both_stages_with_a_checkpoint_per_epoch(smoke_cfg, smoke_run):
    save = smoke_run.save_path
    for stage, epochs in ((1, smoke_cfg.stage1.epochs), (2, smoke_cfg.stage2.epochs)):
        for epoch in range(1, epochs + 1):
            meta = read_meta(save / f"stage{stage}_epoch{epoch}.safetensors")
            assert (meta["stage"], meta["epoch"]) == (stage, epoch)
    last = json.loads((save / "last.json").read_text())
    assert last["finished"] and (last["stage"], last["epoch"]) == (2, smoke_cfg.stage2.epochs)
    assert smoke_run.checkpoint == save / "last.safetensors" and not smoke_run.cached

    history = json.loads((save / "history.json").read_text())
    assert history == smoke_run.history
    for stage, parts in ((1, {"loss", "seg", "orth"}), (2, {"loss", "seg", "image"})):
        steps = [h for h in history if h["stage"] == stage]
        epochs = smoke_cfg.stage1.epochs if stage == 1 else smoke_cfg.stage2.epochs
        assert len(steps) == epochs * steps_per_epoch(smoke_cfg, stage)
        assert parts <= set(steps[0]) and all(math.isfinite(h["loss"]) for h in steps)
    # stage 2's learning rate follows MultiStepLR, stepped per iteration (book:method-stage2)
    stage2 = [h for h in history if h["stage"] == 2]
    first_milestone = smoke_cfg.stage2.milestones[0]
    assert stage2[first_milestone - 1]["lr"] == smoke_cfg.stage2.lr
    assert stage2[first_milestone]["lr"] == pytest.approx(smoke_cfg.stage2.lr * smoke_cfg.stage2.gamma)
    assert smoke_run.seconds["stage1"] > 0 and smoke_run.seconds["stage2"] > 0


def test_backbone_is_unchanged_and_gets_no_gradients(smoke_cfg, smoke_run):
    model = smoke_run.model
    fresh = load_backbone(smoke_cfg.model, smoke_cfg.runtime.data_root).clip.state_dict()
    for name, value in model.clip.state_dict().items():
        assert torch.equal(value, fresh[name]), f"backbone tensor {name} changed during training"
    for name, param in model.clip.named_parameters():
        assert not param.requires_grad and param.grad is None, name
    # ... while both adapter sides did train (they differ from their seeded initialisation)
    from aaclip.model import AAClip

    init = AAClip.from_config(smoke_cfg.model, smoke_cfg.runtime.data_root, seed=smoke_cfg.train.seed).adapter_state_dict()
    trained = model.adapter_state_dict()
    for side in ("text_adapter.", "image_adapter."):
        assert any(not torch.equal(trained[k], init[k]) for k in trained if k.startswith(side)), side


def test_finished_run_is_returned_at_once(smoke_cfg, smoke_run, monkeypatch):
    import aaclip.model

    def no_model(*args, **kwargs):
        raise AssertionError("a finished run must not build a model")

    monkeypatch.setattr(aaclip.model.AAClip, "from_config", no_model)
    before = {p.name: p.stat().st_mtime_ns for p in smoke_run.save_path.iterdir()}
    start = time.perf_counter()
    again = train(smoke_cfg.replace({"eval.normalize": "inductive", "runtime.num_workers": 0}), progress=False)  # eval keys differ
    assert time.perf_counter() - start < 2.0
    assert again.cached and again.history == smoke_run.history and again.checkpoint == smoke_run.checkpoint
    assert {p.name: p.stat().st_mtime_ns for p in smoke_run.save_path.iterdir()} == before


def test_a_different_config_in_the_same_save_path_is_refused(smoke_cfg, smoke_run):
    with pytest.raises(AAClipError, match=r"different config \(stage2.lr: 0.01 there, 0.001 now.*overwrite"):
        train(smoke_cfg.replace({"stage2.lr": 1e-3}), progress=False)
    assert read_meta(smoke_run.save_path)["finished"]


def test_a_rebuilt_backbone_weights_file_is_a_different_run(smoke_cfg, smoke_run, tmp_path):
    """Same settings and training data, but the tiny CLIP was pretrained again: the old run must not answer."""
    import shutil

    from safetensors.torch import load_file, save_file

    world = tmp_path / "world"
    shutil.copytree(smoke_cfg.runtime.data_root, world, ignore=shutil.ignore_patterns("mini-target", "mini-scan"))
    weights = world / smoke_cfg.model.pretrained / "open_clip_model.safetensors"
    state = load_file(weights)
    state["logit_scale"] = state["logit_scale"] + 0.5
    save_file(state, weights)
    moved = smoke_cfg.replace({"runtime.data_root": str(world)})
    with pytest.raises(AAClipError, match=r"different config \(model.pretrained"):
        train(moved, progress=False)


def test_moving_the_data_keeps_the_run_but_a_redrawn_image_does_not(smoke_cfg, smoke_run, tmp_path):
    """The identity holds the data's content: the same files elsewhere are the same run; an image
    drawn anew under the same path (e.g. after editing the defect generator) is another run."""
    import shutil

    import numpy as np
    from PIL import Image

    world = tmp_path / "world"
    shutil.copytree(smoke_cfg.runtime.data_root, world, ignore=shutil.ignore_patterns("mini-target", "mini-scan"))
    moved = smoke_cfg.replace({"runtime.data_root": str(world)})
    assert train(moved, progress=False).cached  # same content, another place
    record = json.loads((world / "mini-aux" / "full-shot.jsonl").read_text().splitlines()[0])
    image = world / "mini-aux" / record["image_path"]
    pixels = np.array(Image.open(image))
    pixels[0, 0] = 255 - pixels[0, 0]
    Image.fromarray(pixels).save(image)
    with pytest.raises(AAClipError, match=r"different config \(train_data.sha256"):
        train(moved, progress=False)


def test_overwrite_replaces_a_different_run(smoke_cfg, tmp_path):
    first = train(smoke_cfg.replace({"runtime.save_path": str(tmp_path), "stage1.epochs": 1, "stage2.enabled": False}),
                  progress=False)
    assert (tmp_path / "stage1_epoch1.safetensors").is_file() and len(first.history) > 0
    (tmp_path / "notes.txt").write_text("mine")  # a user's file survives
    other = smoke_cfg.replace({"runtime.save_path": str(tmp_path), "stage1.enabled": False, "stage2.epochs": 1})
    with pytest.raises(AAClipError, match="stage1.enabled"):
        train(other, progress=False)
    second = train(other, progress=False, overwrite=True)
    assert not second.cached and {h["stage"] for h in second.history} == {2}
    assert not (tmp_path / "stage1_epoch1.safetensors").exists() and not (tmp_path / "stage1_epoch1.json").exists()
    last = read_meta(tmp_path)
    assert last["config"]["stage1"]["enabled"] is False and last["finished"] and last["stage"] == 2
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_a_config_that_trains_nothing_is_refused_before_any_work(smoke_cfg, tmp_path):
    nothing = smoke_cfg.replace({"runtime.save_path": str(tmp_path / "run"), "stage1.epochs": 0, "stage2.enabled": False})
    with pytest.raises(AAClipError, match="no stage would train"):
        train(nothing, progress=False)
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def diverged_run(smoke_cfg, smoke_run, tmp_path_factory):
    """The smoke run again in another directory, with a NaN loss at the first step of stage-2 epoch 2."""
    cfg = smoke_cfg.replace({"runtime.save_path": str(tmp_path_factory.mktemp("diverged"))})
    nan_at = steps_per_epoch(cfg, 2) + 1
    real, calls = aaclip.losses.stage2_loss, []

    def poisoned(*args, **kwargs):
        calls.append(1)
        parts = real(*args, **kwargs)
        if len(calls) == nan_at:
            parts["loss"] = parts["loss"] * float("nan")
        return parts

    aaclip.losses.stage2_loss = poisoned
    try:
        with pytest.raises(TrainingDivergedError) as error:
            train(cfg, progress=False)
    finally:
        aaclip.losses.stage2_loss = real
    return cfg, error.value


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(diverged_run):
    cfg, error = diverged_run
    assert "not finite at stage 2 epoch 2 step 0" in str(error) and "last.safetensors" in str(error)
    save = Path(cfg.runtime.save_path)
    last = read_meta(save)
    assert (last["stage"], last["epoch"], last["finished"]) == (2, 1, False)
    assert not (save / "stage2_epoch2.safetensors").exists()
    good = read_checkpoint(save / "stage2_epoch1.safetensors").adapters
    kept = read_checkpoint(save).adapters
    assert all(torch.equal(kept[k], good[k]) for k in good)


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(diverged_run, smoke_run):
    cfg, _ = diverged_run
    resumed = train(cfg, progress=False)  # continues from `last` (stage 2 epoch 1)
    assert not resumed.cached
    uninterrupted = read_checkpoint(smoke_run.save_path).adapters
    final = read_checkpoint(cfg.runtime.save_path).adapters
    for key, value in uninterrupted.items():
        assert torch.equal(final[key], value), f"{key} differs after resuming"
    assert resumed.history == smoke_run.history


def test_unknown_training_dataset_lists_the_choices(smoke_cfg, tmp_path):
    with pytest.raises(AAClipError, match="unknown dataset 'nope'.*MVTec.*prepared folder"):
        train(smoke_cfg.replace({"train.dataset": "nope", "runtime.save_path": str(tmp_path)}), progress=False)
