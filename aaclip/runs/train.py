"""Training: stage 1 adapts the text side (book:method-stage1), then stage 2 the image side (book:method-stage2).

`train(cfg)` is what the CLI, the book and the tests call. After every epoch it writes
`stage{1,2}_epoch{N}` and `last` checkpoints (aaclip.runs.checkpoint) and `history.json` under
`cfg.runtime.save_path`. Calling it again:
- resumes from `last` if the run was interrupted (same final weights as an uninterrupted run:
  every epoch reseeds its shuffling and augmentation from (seed, stage, epoch), and the
  optimiser and scheduler state travel in the checkpoint);
- returns at once if `last` says the run finished with the same identity
  (`aaclip.runs.identity`): the book trains once and several chapters read the result;
- refuses a save path that holds a different run, unless `overwrite=True`.

`Trainer` is the loop itself, with a public stage set-up (`prepare_stage`) and epoch
(`run_epoch`) so that a benchmark can time the library's own steps.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from aaclip.config import Config
from aaclip.errors import AAClipError
from aaclip.io import write_json
from aaclip.model import autocast
from aaclip.runs import checkpoint as ckpt
from aaclip.runs.identity import differences, run_identity

HISTORY_FILE = "history.json"


class TrainingDivergedError(AAClipError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training; the message says where the run stands and how to resume it."""


class ResumeWarning(UserWarning):
    """The run resumes from an earlier checkpoint than `last` (which could not be read)."""


@dataclass
class TrainResult:
    history: list[dict]  # one entry per optimisation step: stage, epoch, step, lr, loss and its parts
    save_path: Path
    checkpoint: Path  # last.safetensors
    cached: bool = False  # True when a finished run was found and nothing was trained
    seconds: dict = field(default_factory=dict)  # training wall time per stage ("stage1", "stage2")
    model: object | None = None  # the trained AAClip (None when cached: use checkpoint.load_run)


@dataclass
class StageState:
    """What one stage trains with: its data, optimiser and scheduler, and the step that computes its loss."""

    stage: int
    dataset: object  # an AnomalyDataset, or any sequence of `aaclip.batch.Batch` items
    batch_size: int
    epochs: int
    optimizer: torch.optim.Optimizer
    scheduler: object | None
    step: object  # Batch -> {"loss": tensor, parts...}


# ---------------------------------------------------------------------------------- public API
def train(cfg: Config, progress: bool = True, overwrite: bool = False) -> TrainResult:
    """Train AA-CLIP on `cfg.train.dataset` (stage 1, then stage 2); see the module docstring."""
    from aaclip.data.registry import get_dataset

    cfg.check_training()  # before any work: a config that trains nothing is a mistake, not a run
    get_dataset(cfg.train.dataset, data_root=cfg.runtime.data_root)  # unknown name: lists the choices
    save_path = Path(cfg.runtime.save_path)
    identity = run_identity(cfg)
    previous = _previous_run(save_path, identity, overwrite)
    if previous is not None and previous.meta.get("finished"):
        return TrainResult(
            history=_read_history(save_path, previous.meta["history_len"]),
            save_path=save_path,
            checkpoint=previous.path,
            cached=True,
            seconds=previous.meta.get("seconds", {}),
        )
    return Trainer(cfg, save_path, progress, identity).run(resume=previous)


def epoch_seed(seed: int, stage: int, epoch: int) -> int:
    """Each epoch's own seed, so that a resumed run shuffles and augments exactly as an uninterrupted one."""
    return int(np.random.SeedSequence([seed, stage, epoch]).generate_state(1)[0])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------------- the loop
class Trainer:
    """One training run: the model, the epoch plan, checkpoints and history."""

    def __init__(self, cfg: Config, save_path: Path, progress: bool = True, identity: dict | None = None):
        from aaclip.data.registry import get_dataset

        self.cfg, self.save_path, self.progress, self.identity = cfg, Path(save_path), progress, identity or {}
        self.info = get_dataset(cfg.train.dataset, data_root=cfg.runtime.data_root)
        self.device = cfg.resolve_device()
        self.history: list[dict] = []
        self.seconds = {"stage1": 0.0, "stage2": 0.0}
        self.last_good: dict | None = None  # (stage, epoch) of the checkpoint a failure falls back to
        self.model = None

    def build_model(self):
        """The AA-CLIP to train: frozen backbone, adapters initialised from the training seed."""
        from aaclip.model import AAClip

        seed_everything(self.cfg.train.seed)  # whatever draws random numbers while building is seeded too
        self.model = AAClip.from_config(self.cfg.model, self.cfg.runtime.data_root, self.device, self.cfg.train.seed)
        self.model.eval()  # the backbone stays in eval mode; adapters have no train-only layers
        self.trainable = {id(p) for p in [*self.model.text_parameters(), *self.model.image_parameters()]}
        check_frozen(self.model, self.trainable)
        return self.model

    # plan: every (stage, epoch) this config trains, in order
    def plan(self) -> list[tuple[int, int]]:
        cfg = self.cfg
        stage1 = [(1, e) for e in range(1, cfg.stage1.epochs + 1)] if cfg.stage1.enabled else []
        stage2 = [(2, e) for e in range(1, cfg.stage2.epochs + 1)] if cfg.stage2.enabled else []
        return stage1 + stage2

    def run(self, resume=None) -> TrainResult:
        """Train the plan, from the start or from `resume` (the checkpoint `_previous_run` found)."""
        try:
            return self._run(resume)
        except KeyboardInterrupt:
            raise TrainingInterrupted(self.resume_hint()) from None

    def resume_hint(self) -> str:
        if self.last_good is None or not self.last_good.get("stage"):
            return "interrupted before the first epoch finished: run the same command again to start it over"
        stage, epoch = self.last_good["stage"], self.last_good["epoch"]
        return (f"interrupted; {self.save_path / 'last.safetensors'} holds stage {stage} epoch {epoch}: run the same "
                f"command again to resume from there")

    def _run(self, resume) -> TrainResult:
        self.build_model()
        plan, done, resume_from = self.plan(), None, None
        if resume is not None:
            resume_from = ckpt.read_checkpoint(resume.path)
            meta = resume_from.meta
            self.model.load_adapter_state_dict(resume_from.adapters, source=str(resume_from.path))
            done = (meta["stage"], meta["epoch"])
            self.history = _read_history(self.save_path, meta["history_len"])
            self.seconds = dict(meta.get("seconds", self.seconds))
            self.last_good = meta
        remaining = plan[plan.index(done) + 1 :] if done in plan else plan

        for stage in (1, 2):
            epochs = [e for s, e in remaining if s == stage]
            if epochs:
                same_stage = resume_from is not None and done[0] == stage
                state = self.prepare_stage(stage, resume_from=resume_from if same_stage else None)
                for epoch in epochs:
                    start = time.perf_counter()
                    self.run_epoch(state, epoch)
                    self.seconds[f"stage{stage}"] += time.perf_counter() - start
                    finished = (stage, epoch) == plan[-1]
                    self.save(stage, epoch, finished, state.optimizer, state.scheduler)
        if not plan:
            self.save(stage=0, epoch=0, finished=True)  # nothing to train: record the initial adapters
        return TrainResult(
            history=self.history,
            save_path=self.save_path,
            checkpoint=ckpt.checkpoint_file(self.save_path / "last"),
            seconds=self.seconds,
            model=self.model,
        )

    def prepare_stage(self, stage: int, dataset=None, resume_from=None) -> StageState:
        """Data, optimiser, scheduler and step of one stage; stage 2 also freezes the anchors of its classes.

        `dataset` defaults to the training set (with the stage's augmentation); a benchmark may pass
        any sequence of Batch items.
        """
        cfg, model = self.cfg, self.model
        dataset = dataset if dataset is not None else self.load_data(stage)
        if stage == 1:
            params, lr, part, scheduler_of = model.text_parameters(), cfg.stage1.lr, cfg.stage1, None
            step = self.stage1_step
        else:
            params, lr, part = model.image_parameters(), cfg.stage2.lr, cfg.stage2
            self.freeze_anchors(dataset_classes(dataset))
            step = self.stage2_step

            def scheduler_of(optimizer):
                return torch.optim.lr_scheduler.MultiStepLR(optimizer, cfg.stage2.milestones, cfg.stage2.gamma)

        optimizer = torch.optim.Adam(params, lr=lr, betas=tuple(cfg.train.betas))
        scheduler = scheduler_of(optimizer) if scheduler_of else None
        if resume_from is not None:
            optimizer.load_state_dict(ckpt.optimizer_state(resume_from))
            if scheduler is not None:
                scheduler.load_state_dict(ckpt.scheduler_state(resume_from))
        return StageState(stage, dataset, part.batch_size, part.epochs, optimizer, scheduler, step)

    def freeze_anchors(self, classes: list[str]) -> None:
        """book:method-stage2: anchors of every training class, computed once after stage 1 and frozen.

        Without stage 1 (an ablation) they come from plain CLIP's text encoder: untrained text adapters
        would only add noise.
        """
        self.class_index = {c: i for i, c in enumerate(classes)}
        with torch.no_grad(), autocast(self.device, self.cfg.train.precision):
            anchors = self.model.text_anchors(
                [self.info.prompt_names[c] for c in classes], adapted=self.cfg.stage1.enabled
            )
        self.stage2_anchors = anchors.float().detach()

    def load_data(self, stage: int):
        from aaclip.data.dataset import load_dataset

        cfg, backbone = self.cfg, self.model.backbone
        return load_dataset(
            cfg.runtime.data_root,
            cfg.train.dataset,
            image_size=cfg.model.image_size,
            mean=backbone.mean,
            std=backbone.std,
            shot=cfg.train.shot,
            augment=cfg.train.augment,
            color_jitter=cfg.train.augment and stage == 2,  # colour jitter on stage-2 images only
        )

    def run_epoch(self, state: StageState, epoch: int) -> None:
        from tqdm.auto import tqdm

        from aaclip.batch import Batch

        cfg = self.cfg
        seed = epoch_seed(cfg.train.seed, state.stage, epoch)
        seed_everything(seed)
        loader = torch.utils.data.DataLoader(
            state.dataset,
            batch_size=state.batch_size,
            shuffle=True,
            generator=torch.Generator().manual_seed(seed),
            num_workers=cfg.runtime.num_workers,
            pin_memory=torch.device(self.device).type == "cuda",
            collate_fn=Batch.collate,
        )
        desc = f"stage {state.stage} epoch {epoch}/{state.epochs}"
        bar = tqdm(loader, desc=desc, disable=not self.progress, leave=False)
        for step, batch in enumerate(bar):
            with autocast(self.device, cfg.train.precision):
                parts = state.step(batch)
            values = {k: float(v.detach()) for k, v in parts.items()}
            if not np.isfinite(values["loss"]):
                raise TrainingDivergedError(self.divergence_message(state.stage, epoch, step, values))
            lr = state.optimizer.param_groups[0]["lr"]  # the rate this step uses
            state.optimizer.zero_grad(set_to_none=True)
            parts["loss"].backward()
            if step == 0:
                check_no_backbone_grads(self.model, self.trainable)
            state.optimizer.step()
            if state.scheduler is not None:
                state.scheduler.step()  # book:method-stage2: milestones count iterations
            self.history.append({"stage": state.stage, "epoch": epoch, "step": step, "lr": lr, **values})
            bar.set_postfix(loss=f"{values['loss']:.4f}")

    # one step's loss, per stage
    def stage1_step(self, batch) -> dict:
        """book:method-stage1: anchors of the classes present in the batch, through the text adapters
        (with grad); image features from the frozen V-V CLIP (no grad)."""
        from aaclip.losses import stage1_loss

        images, gt_mask, gt_label = self.to_device(batch)
        classes = list(dict.fromkeys(batch.class_name))  # unique, in order of appearance
        index = torch.tensor([classes.index(c) for c in batch.class_name], device=self.device)
        mode = self.cfg.stage1.loss
        with torch.no_grad():
            if mode == "paper":  # the paper's loss adds a CLS-based image term
                features, image_embedding = self.model.stage1_features(images, return_global=True)
            else:
                features, image_embedding = self.model.stage1_features(images), None
        anchors = self.model.text_anchors([self.info.prompt_names[c] for c in classes], adapted=True)
        return stage1_loss(
            features,
            anchors[index],
            gt_mask,
            gt_label=gt_label,
            image_embedding=image_embedding,
            mode=mode,
            orth_weight=self.cfg.stage1.orth_weight,
        )

    def stage2_step(self, batch) -> dict:
        """book:method-stage2: CE on the detection feature + the 4-level segmentation loss, frozen anchors."""
        from aaclip.losses import stage2_loss

        images, gt_mask, gt_label = self.to_device(batch)
        index = torch.tensor([self.class_index[c] for c in batch.class_name], device=self.device)
        seg, det = self.model.image_features(images)
        return stage2_loss(seg, det, self.stage2_anchors[index], gt_mask, gt_label)

    def to_device(self, batch):
        device = self.device
        return (
            batch.image.to(device, non_blocking=True),
            batch.gt_mask.to(device, non_blocking=True),
            torch.as_tensor(batch.gt_label).to(device),
        )

    # checkpoints and history
    def save(self, stage: int, epoch: int, finished: bool, optimizer=None, scheduler=None) -> None:
        # history first, then the epoch checkpoint, then `last`: a crash in between leaves `last`
        # pointing at a consistent earlier state (it records how many history entries belong to it).
        write_json(self.save_path / HISTORY_FILE, self.history)
        extra = {
            "stage": stage,
            "epoch": epoch,
            "finished": finished,
            "identity": self.identity,
            "history_len": len(self.history),
            "seconds": self.seconds,
        }
        args = (self.model, self.cfg, extra, optimizer, scheduler)
        if stage:
            ckpt.save_checkpoint(self.save_path / f"stage{stage}_epoch{epoch}", *args)
        ckpt.save_checkpoint(self.save_path / "last", *args)
        self.last_good = extra

    def divergence_message(self, stage, epoch, step, values) -> str:
        parts = ", ".join(f"{k}={v:.4g}" for k, v in values.items())
        if self.last_good is None:
            kept = "no checkpoint had been written yet"
        else:
            kept = (
                f"the last good checkpoint, {self.save_path / 'last.safetensors'} "
                f"(stage {self.last_good['stage']} epoch {self.last_good['epoch']}), is kept"
            )
        return (
            f"training stopped: the loss is not finite at stage {stage} epoch {epoch} step {step} ({parts}); "
            f"{kept}. Lower the learning rate or check the data."
        )


def dataset_classes(dataset) -> list[str]:
    """Sorted class names of a training set: an AnomalyDataset (read from its records), or Batch items."""
    if hasattr(dataset, "class_names"):
        return sorted(dataset.class_names)
    return sorted({c for item in dataset for c in item.class_name})


# ---------------------------------------------------------------------------------- checks and files
def check_frozen(model, trainable_ids: set[int]) -> None:
    """book:method-backbone: the backbone is frozen; only adapter parameters may require gradients."""
    for name, param in model.named_parameters():
        if param.requires_grad and id(param) not in trainable_ids:
            raise AAClipError(f"backbone parameter {name!r} requires grad: the backbone must be frozen")


def check_no_backbone_grads(model, trainable_ids: set[int]) -> None:
    for name, param in model.named_parameters():
        if param.grad is not None and id(param) not in trainable_ids:
            raise AAClipError(f"backbone parameter {name!r} received a gradient: the backbone must be frozen")


@dataclass
class Previous:
    path: Path  # the checkpoint to continue from (`last`, or the newest readable epoch when `last` is damaged)
    meta: dict


def _previous_run(save_path: Path, identity: dict, overwrite: bool) -> Previous | None:
    """The checkpoint of `save_path` to continue from if it belongs to this experiment; None if there is none.

    A damaged `last` is replaced by the newest readable epoch checkpoint of the same experiment
    (with a ResumeWarning naming both); with `overwrite` a damaged run is simply removed.
    """
    import warnings

    last = ckpt.checkpoint_file(save_path / "last")
    if not last.is_file():
        return None
    try:
        meta = ckpt.read_meta(last)
    except ckpt.CheckpointError as err:
        if overwrite:
            _remove_run(save_path)
            return None
        fallback = _newest_readable_epoch(save_path, identity)
        if fallback is None:
            raise AAClipError(f"{err}; no epoch checkpoint of this run can be read either: pass --overwrite "
                              "(overwrite=True) to start the run again") from None
        warnings.warn(f"{last} cannot be read ({err}); resuming from {fallback.path.name}", ResumeWarning, stacklevel=3)
        return fallback
    differing = differences(meta.get("identity", {}), identity)
    if not differing:
        return Previous(last, meta)
    if overwrite:
        _remove_run(save_path)
        return None
    raise AAClipError(
        f"{save_path} holds a run with a different config ({'; '.join(differing[:5])}). Choose another save path, "
        f"or pass overwrite=True (CLI: --overwrite) to replace it"
    )


def _newest_readable_epoch(save_path: Path, identity: dict) -> Previous | None:
    """The latest stage{S}_epoch{E} checkpoint that can be read and belongs to this experiment."""
    import re

    found = []
    for file in save_path.glob("stage[12]_epoch*.safetensors"):
        match = re.fullmatch(r"stage([12])_epoch(\d+)\.safetensors", file.name)
        if match:
            found.append(((int(match[1]), int(match[2])), file))
    for _, file in sorted(found, reverse=True):
        try:
            meta = ckpt.read_meta(file)
        except ckpt.CheckpointError:
            continue
        if not differences(meta.get("identity", {}), identity):
            return Previous(file, meta)
    return None


def _remove_run(save_path: Path) -> None:
    """Delete this package's files of an old run, and nothing else the user may keep there."""
    for pattern in ("stage[12]_epoch*.safetensors", "stage[12]_epoch*.json", "last.safetensors", "last.json"):
        for path in save_path.glob(pattern):
            path.unlink()
    (save_path / HISTORY_FILE).unlink(missing_ok=True)


def _read_history(save_path: Path, length: int) -> list[dict]:
    import json

    path = save_path / HISTORY_FILE
    history = json.loads(path.read_text()) if path.is_file() else []
    return history[:length]
