"""Checkpoints: the adapters only, as safetensors, with everything needed to rebuild and resume.

One checkpoint is a pair `<name>.safetensors` + `<name>.json`. The safetensors file holds the
adapter weights (`adapters.<key>`) and, for resuming, the optimiser's tensors
(`optimizer.<param index>.<key>`); its header metadata holds the same JSON document as the
sidecar, so the pair can never disagree about what the tensors are (the sidecar is a readable
copy, written second). Plain numbers (config, epoch, optimiser hyper-parameters, scheduler
state) live in the JSON. No pickles anywhere: nothing here can execute code on load.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from aaclip import __version__
from aaclip.config import Config
from aaclip.errors import AAClipError
from aaclip.io import atomic_path, write_json

FORMAT = "aaclip-checkpoint/1"


class CheckpointError(AAClipError):
    """A checkpoint that is missing, damaged, or made for another model."""


@dataclass
class Checkpoint:
    path: Path  # the .safetensors file
    meta: dict  # the JSON document
    adapters: dict  # adapter key -> tensor
    optimizer: dict  # "<param index>.<key>" -> tensor (empty when not saved)

    @property
    def config(self) -> Config:
        """The run's own config, as it was trained."""
        return Config.from_dict(self.meta["config"], source=f"config keys in {self.path.with_suffix('.json')}")


# ---------------------------------------------------------------------------------- paths
def checkpoint_file(path) -> Path:
    """An existing checkpoint: a run directory (-> its `last`), a stem, a .json or a .safetensors path."""
    path = Path(path)
    if path.suffix not in (".json", ".safetensors") and (path.is_dir() or not _tensor_file(path).is_file()):
        path = path / "last"
    return _tensor_file(path)


def _tensor_file(stem) -> Path:
    """`dir/name`, `dir/name.json` or `dir/name.safetensors` -> `dir/name.safetensors`."""
    stem = Path(stem)
    if stem.suffix in (".json", ".safetensors"):
        stem = stem.with_suffix("")
    return stem.with_name(stem.name + ".safetensors")


# ---------------------------------------------------------------------------------- save
def save_checkpoint(path, model, cfg: Config, extra: dict | None = None, optimizer=None, scheduler=None) -> Path:
    """Write `<path>.safetensors` and `<path>.json` atomically; return the .safetensors path.

    `extra` (stage, epoch, finished, train_data, history_len, ...) is merged into the JSON.
    With `optimizer`/`scheduler`, their state is stored too, so that training can resume.
    """
    from safetensors.torch import save_file

    file = _tensor_file(path)
    tensors = {f"adapters.{k}": v.detach().to("cpu").contiguous() for k, v in model.adapter_state_dict().items()}
    meta = {
        "format": FORMAT,
        "aaclip_version": __version__,
        "config": cfg.to_dict(),
        "model": model.describe(),  # backbone, sizes, levels, switches, parameter counts
        "adapters": {k[len("adapters.") :]: list(v.shape) for k, v in tensors.items()},
        **(extra or {}),
    }
    if optimizer is not None:
        opt_tensors, meta["optimizer"] = _split_optimizer_state(optimizer.state_dict())
        tensors.update({f"optimizer.{k}": v for k, v in opt_tensors.items()})
    if scheduler is not None:
        meta["scheduler"] = _scheduler_state_to_json(scheduler.state_dict())
    document = json.loads(json.dumps(meta, default=_plain))  # fail here, before writing, if not plain JSON
    with atomic_path(file) as tmp:
        save_file(tensors, str(tmp), metadata={"aaclip": json.dumps(document)})
    write_json(file.with_suffix(".json"), document)
    return file


# ---------------------------------------------------------------------------------- read
def read_meta(path) -> dict:
    """The JSON document of a checkpoint, read from the safetensors header (authoritative)."""
    from safetensors import safe_open

    file = checkpoint_file(path)
    if not file.is_file():
        raise CheckpointError(f"no checkpoint at {file}: train first (`aaclip train --save-path ...`)")
    try:
        with safe_open(str(file), framework="pt") as handle:
            header = handle.metadata() or {}
    except Exception as err:  # safetensors raises its own error types for damaged headers
        raise CheckpointError(f"{file}: not a readable safetensors file ({err})") from err
    if "aaclip" not in header:
        raise CheckpointError(f"{file}: no 'aaclip' metadata in the header; not an aaclip checkpoint")
    meta = json.loads(header["aaclip"])
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{file}: format {meta.get('format')!r}, expected {FORMAT!r}")
    return meta


def read_checkpoint(path) -> Checkpoint:
    from safetensors.torch import load_file

    file = checkpoint_file(path)
    meta = read_meta(file)
    tensors = load_file(str(file), device="cpu")
    adapters = {k[len("adapters.") :]: v for k, v in tensors.items() if k.startswith("adapters.")}
    optimizer = {k[len("optimizer.") :]: v for k, v in tensors.items() if k.startswith("optimizer.")}
    return Checkpoint(path=file, meta=meta, adapters=adapters, optimizer=optimizer)


def check_backbone(meta: dict, backbone, source) -> None:
    """The loaded backbone must be the one the run was trained with: same name, same weights' content."""
    stored = meta.get("model", {})
    if stored.get("backbone") != backbone.name:
        raise CheckpointError(f"{source} was trained on backbone {stored.get('backbone')!r}, not {backbone.name!r}")
    expected, found = stored.get("weights_sha256"), backbone.weights.sha256
    if expected != found:
        raise CheckpointError(
            f"{source} was trained with backbone weights sha256 {expected}, but {backbone.pretrained} has "
            f"{found}: point the backbone at the file the run was trained with"
        )


def locate_backbone(meta: dict, run_cfg: Config, root: str | None, pretrained: str | None, source) -> str:
    """Where the run's backbone is now, found by content: `pretrained` if given, else where it was
    recorded (as an absolute path, then as configured, under `root` and under the run's data root).

    Returns the location to build it from; raises naming the expected sha256 and every place looked.
    """
    from aaclip.backbone import resolve_weights

    stored = meta.get("model", {})
    expected = stored.get("weights_sha256")
    if expected is None:  # random weights, or an open_clip tag that open_clip resolves itself
        return pretrained or run_cfg.model.pretrained
    candidates = [pretrained] if pretrained else [stored.get("weights_location"), run_cfg.model.pretrained]
    roots = list(dict.fromkeys(r for r in (root, run_cfg.runtime.data_root) if r))
    looked = []
    for candidate in filter(None, candidates):
        for base in roots or ["."]:
            try:
                weights = resolve_weights(run_cfg.model.backbone, candidate, base)
            except AAClipError as err:
                looked.append(f"{candidate} under {base}: {err}")
                continue
            if weights.sha256 == expected:
                return weights.location
            looked.append(f"{weights.file}: sha256 {weights.sha256}")
    given = "the --pretrained you gave" if pretrained else "the run's recorded backbone"
    raise CheckpointError(
        f"{source} was trained with backbone weights sha256 {expected}, and {given} is not that file:\n  "
        + "\n  ".join(dict.fromkeys(looked))
        + "\npass --pretrained PATH (a .safetensors file or open_clip folder with exactly these weights)"
    )


def load_run(path, root: str | None = None, pretrained: str | None = None, device: str = "cpu",
             require_finished: bool = True):
    """Rebuild AA-CLIP from a checkpoint -> (model in eval mode, the run's config).

    The model is built from the run's own model config, its backbone found by content
    (`locate_backbone`: `pretrained`, a file or folder, if given), and must match what was trained:
    the backbone's weights by sha256 and every adapter tensor by name and shape. An interrupted run
    is refused unless `require_finished=False`. The returned config says where the backbone was found.
    """
    from dataclasses import replace

    from aaclip.model import AAClip

    checkpoint = read_checkpoint(path)
    meta, run_cfg = checkpoint.meta, checkpoint.config
    if require_finished and not meta.get("finished"):
        raise CheckpointError(
            f"{checkpoint.path}: the run stopped at stage {meta.get('stage')} epoch {meta.get('epoch')} before it "
            "finished; run the same `aaclip train` command again to resume it"
        )
    location = locate_backbone(meta, run_cfg, root, pretrained, checkpoint.path)
    model_cfg = replace(run_cfg.model, pretrained=location)
    model = AAClip.from_config(model_cfg, root=root or run_cfg.runtime.data_root, device=device)
    check_backbone(meta, model.backbone, checkpoint.path)
    model.load_adapter_state_dict(checkpoint.adapters, source=str(checkpoint.path))
    return model.eval(), run_cfg.replace({"model.pretrained": location})


# ---------------------------------------------------------------------------------- optimiser state
def _split_optimizer_state(state: dict) -> tuple[dict, dict]:
    """torch optimiser state -> (tensors keyed "<param>.<key>", JSON with the plain numbers)."""
    import torch

    tensors, plain = {}, {}
    for index, param_state in state["state"].items():
        for key, value in param_state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{key}"] = value.detach().to("cpu").contiguous()
            else:
                plain[f"{index}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "plain_state": plain}


def optimizer_state(checkpoint: Checkpoint) -> dict:
    """Rebuild the torch optimiser state dict stored by `save_checkpoint`."""
    stored = checkpoint.meta.get("optimizer")
    if stored is None:
        raise CheckpointError(f"{checkpoint.path}: no optimiser state stored; cannot resume from it")
    state: dict = {}
    for flat, value in [*checkpoint.optimizer.items(), *stored["plain_state"].items()]:
        index, key = flat.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    return {"state": state, "param_groups": stored["param_groups"]}


def _scheduler_state_to_json(state: dict) -> dict:
    state = dict(state)
    if isinstance(state.get("milestones"), Counter):  # MultiStepLR: JSON keys must be strings
        state["milestones"] = sorted([int(k), int(v)] for k, v in state["milestones"].items())
    return state


def scheduler_state(checkpoint: Checkpoint) -> dict:
    stored = checkpoint.meta.get("scheduler")
    if stored is None:
        raise CheckpointError(f"{checkpoint.path}: no scheduler state stored; cannot resume from it")
    state = dict(stored)
    if isinstance(state.get("milestones"), list):
        state["milestones"] = Counter({k: v for k, v in state["milestones"]})
    return state


def _plain(value):
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, (Path,)):
        return str(value)
    if isinstance(value, (set, tuple)):
        return list(value)
    raise CheckpointError(f"cannot store {type(value).__name__} {value!r} in a checkpoint's JSON")
