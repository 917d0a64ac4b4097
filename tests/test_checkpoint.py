"""Checkpoints: adapters only, safetensors + JSON, no pickles; a mismatched model fails naming the key."""

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from aaclip.errors import AAClipError
from aaclip.model import AAClip
from aaclip.runs.checkpoint import (
    CheckpointError,
    load_run,
    optimizer_state,
    read_checkpoint,
    save_checkpoint,
    scheduler_state,
)


@pytest.fixture(scope="module")
def tiny_model(tiny_cfg):
    model = AAClip.from_config(tiny_cfg.model, device="cpu")
    with torch.no_grad():  # move the adapters away from their seeded init, so loading is visible
        for p in model.adapter_parameters():
            p.add_(torch.randn_like(p))
    return model


def test_roundtrip_stores_adapters_only_and_a_readable_config(tiny_cfg, tiny_model, tmp_path):
    file = save_checkpoint(tmp_path / "last", tiny_model, tiny_cfg, extra={"stage": 2, "epoch": 3, "finished": True})
    assert file == tmp_path / "last.safetensors" and (tmp_path / "last.json").is_file()
    with safe_open(str(file), framework="pt") as handle:
        keys = set(handle.keys())
        header = json.loads(handle.metadata()["aaclip"])
    # adapters only: no backbone tensor travels in a checkpoint
    assert keys == {f"adapters.{k}" for k in tiny_model.adapter_state_dict()}
    sidecar = json.loads((tmp_path / "last.json").read_text())
    assert sidecar == header
    assert sidecar["config"]["model"]["backbone"] == "aaclip-tiny" and sidecar["config"]["train"]["seed"] == tiny_cfg.train.seed
    assert sidecar["model"]["levels"] == [2, 4, 6, 8] and sidecar["aaclip_version"]
    assert sidecar["model"]["weights_sha256"] == tiny_model.backbone.weights.sha256 is not None
    assert (sidecar["stage"], sidecar["epoch"]) == (2, 3)

    model, run_cfg = load_run(tmp_path, device="cpu")  # a run directory means its `last`
    for key, value in tiny_model.adapter_state_dict().items():
        assert torch.equal(model.adapter_state_dict()[key], value), key
    assert run_cfg == tiny_cfg


def test_backbone_weights_that_changed_since_training_are_refused(tiny_cfg, tiny_model, tmp_path):
    """A checkpoint scored with another backbone would be a wrong result: the weights are checked by content."""
    import shutil

    folder = Path(shutil.copytree(Path(tiny_cfg.model.pretrained), tmp_path / "backbone"))
    cfg = tiny_cfg.replace({"model.pretrained": str(folder)})
    save_checkpoint(tmp_path / "run" / "last", AAClip.from_config(cfg.model), cfg, extra={"finished": True})
    weights = folder / "open_clip_model.safetensors"
    expected = tiny_model.backbone.weights.sha256
    from aaclip_miniature import tiny_clip

    other, _ = tiny_clip.create_model(seed=1)  # another tiny CLIP under the same file name
    tiny_clip.save(other, folder, tiny_clip.PretrainSettings(epochs=0), seed=1)
    with pytest.raises(CheckpointError, match=f"trained with backbone weights sha256 {expected}"):
        load_run(tmp_path / "run")
    assert weights.is_file()


def test_tensor_of_another_shape_fails_naming_the_tensor(tiny_cfg, tiny_model, tmp_path):
    from safetensors.torch import save_file

    file = save_checkpoint(tmp_path / "last", tiny_model, tiny_cfg, extra={"finished": True})
    with safe_open(str(file), framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    key = next(k for k in tensors if "seg_proj" in k)
    tensors[key] = torch.zeros(3, 3)
    save_file(tensors, str(file), metadata=metadata)
    with pytest.raises(AAClipError, match=key.removeprefix("adapters.")):
        load_run(file)


def test_an_unfinished_run_is_not_scored_as_if_it_were_trained(tiny_cfg, tiny_model, tmp_path):
    save_checkpoint(tmp_path / "last", tiny_model, tiny_cfg, extra={"stage": 1, "epoch": 2, "finished": False})
    with pytest.raises(CheckpointError, match="stopped at stage 1 epoch 2 before it finished; run the same `aaclip train`"):
        load_run(tmp_path)
    assert load_run(tmp_path, require_finished=False)[0] is not None


def test_unreadable_or_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_run(tmp_path / "nothing-here")
    bad = tmp_path / "last.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="last.safetensors"):
        load_run(tmp_path)


def test_optimiser_and_scheduler_state_roundtrip_exactly(tiny_cfg, tiny_model, tmp_path):
    params = tiny_model.image_parameters()
    optimizer = torch.optim.Adam(params, lr=5e-4, betas=(0.5, 0.999))
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, [2, 4], 0.5)
    for _ in range(3):  # a few real steps, so that moments, step counts and the lr are non-trivial
        optimizer.zero_grad()
        sum((p**2).sum() for p in params).backward()
        optimizer.step()
        scheduler.step()
    save_checkpoint(tmp_path / "s", tiny_model, tiny_cfg, optimizer=optimizer, scheduler=scheduler)
    stored = read_checkpoint(tmp_path / "s.safetensors")

    fresh = torch.optim.Adam(params, lr=5e-4, betas=(0.5, 0.999))
    fresh_scheduler = torch.optim.lr_scheduler.MultiStepLR(fresh, [2, 4], 0.5)
    fresh.load_state_dict(optimizer_state(stored))
    fresh_scheduler.load_state_dict(scheduler_state(stored))
    original, restored = optimizer.state_dict(), fresh.state_dict()
    for index, state in original["state"].items():
        for key, value in state.items():
            assert torch.equal(restored["state"][index][key], value), (index, key)
    assert restored["param_groups"][0]["lr"] == original["param_groups"][0]["lr"] == 2.5e-4
    assert fresh_scheduler.state_dict() == scheduler.state_dict()
