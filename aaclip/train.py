"""Training: stage 1 adapts the text side (SPEC 4), then stage 2 the image side (SPEC 5).

`train(cfg)` is what the CLI, the notebooks and the tests call. After every epoch it writes
`stage{1,2}_epoch{N}` and `last` checkpoints (aaclip.checkpoint) and `history.json` under
`cfg.save_path`. Calling it again:
- resumes from `last` if the run was interrupted (same final weights as an uninterrupted run:
  every epoch reseeds its shuffling and augmentation from (seed, stage, epoch), and the
  optimiser and scheduler state travel in the checkpoint);
- returns at once if `last` says the run finished with the same training config (the book
  trains once and several chapters read the result);
- refuses a save path that holds a different run, unless `overwrite=True`.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from aaclip import checkpoint as ckpt
from aaclip.backbone import resolve_pretrained
from aaclip.config import Config
from aaclip.errors import AAClipError
from aaclip.io import sha256_file, write_json
from aaclip.model import autocast

HISTORY_FILE = "history.json"


class TrainingDivergedError(AAClipError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class TrainResult:
    history: list[dict]  # one entry per optimisation step: stage, epoch, step, lr, loss and its parts
    save_path: Path
    checkpoint: Path  # last.safetensors
    cached: bool = False  # True when a finished run was found and nothing was trained
    seconds: dict = field(default_factory=dict)  # training wall time per stage ("stage1", "stage2")
    model: object | None = None  # the trained AAClip (None when cached: use checkpoint.load_model)


# ---------------------------------------------------------------------------------- public API
def train(cfg: Config, progress: bool = True, overwrite: bool = False) -> TrainResult:
    """Train AA-CLIP on `cfg.train_dataset` (stage 1, then stage 2); see the module docstring."""
    from aaclip.data.registry import get_dataset

    info = get_dataset(cfg.train_dataset, data_root=cfg.data_root)  # unknown name: lists the choices
    save_path = Path(cfg.save_path)
    identity = training_identity(cfg)
    previous = _previous_run(save_path, identity, overwrite)
    if previous is not None and previous.get("finished"):
        return TrainResult(
            history=_read_history(save_path, previous["history_len"]),
            save_path=save_path,
            checkpoint=ckpt.checkpoint_file(save_path / "last"),
            cached=True,
            seconds=previous.get("seconds", {}),
        )
    return Trainer(cfg, info, identity, save_path, progress).run(resume=previous is not None)


def training_identity(cfg: Config) -> dict:
    """What makes two runs the same experiment: every training setting plus the training data.

    Paths and evaluation settings are left out (moving the data or changing `--normalize` does not
    change what was trained); the digests of the training metadata file and of a local backbone
    weights file are in, so a different world, shot file or pretrained tiny CLIP is a different run.
    """
    from aaclip.data.registry import metadata_path

    settings = {k: v for k, v in cfg.to_dict().items() if k not in ckpt.EVALUATION_KEYS}
    meta_file = Path(metadata_path(cfg.data_root, cfg.train_dataset, cfg.shot))
    if not meta_file.is_file():
        raise AAClipError(
            f"no training metadata {meta_file} for dataset {cfg.train_dataset!r} shot {cfg.shot}; "
            f"prepare the dataset (aaclip prepare / aaclip shots / aaclip miniature) or fix --data-root"
        )
    identity = {**settings, "train_data": {"metadata": meta_file.name, "sha256": sha256_file(meta_file)}}
    weights = resolve_pretrained(cfg.backbone, cfg.pretrained, cfg.data_root)
    if weights is not None and Path(weights).is_file():  # a rebuilt tiny CLIP is another backbone
        identity["backbone_weights"] = {"file": Path(weights).name, "sha256": sha256_file(weights)}
    return identity


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

    def __init__(self, cfg: Config, info, identity: dict, save_path: Path, progress: bool):
        self.cfg, self.info, self.identity, self.save_path, self.progress = cfg, info, identity, save_path, progress
        self.device = cfg.resolve_device()
        self.history: list[dict] = []
        self.seconds = {"stage1": 0.0, "stage2": 0.0}
        self.last_good: dict | None = None  # (stage, epoch) of the checkpoint a failure falls back to

    # plan: every (stage, epoch) this config trains, in order
    def plan(self) -> list[tuple[int, int]]:
        cfg = self.cfg
        stage1 = [(1, e) for e in range(1, cfg.stage1_epochs + 1)] if cfg.train_stage1 else []
        stage2 = [(2, e) for e in range(1, cfg.stage2_epochs + 1)] if cfg.train_stage2 else []
        return stage1 + stage2

    def run(self, resume: bool) -> TrainResult:
        from aaclip.model import AAClip

        seed_everything(self.cfg.seed)  # whatever draws random numbers while building is seeded too
        self.model = AAClip.from_config(self.cfg, device=self.device)
        self.model.eval()  # the backbone stays in eval mode; adapters have no train-only layers
        self.trainable = {id(p) for p in [*self.model.text_parameters(), *self.model.image_parameters()]}
        check_frozen(self.model, self.trainable)

        plan, done, resume_from = self.plan(), None, None
        if resume:
            resume_from = ckpt.read_checkpoint(self.save_path / "last")
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
                self.run_stage(stage, epochs, resume_from if same_stage else None, final=plan[-1])
        if not plan:
            self.save(stage=0, epoch=0, finished=True)  # nothing to train: record the initial adapters
        return TrainResult(
            history=self.history,
            save_path=self.save_path,
            checkpoint=ckpt.checkpoint_file(self.save_path / "last"),
            seconds=self.seconds,
            model=self.model,
        )

    def run_stage(self, stage: int, epochs: list[int], resume_from, final: tuple[int, int]) -> None:
        cfg, model = self.cfg, self.model
        dataset = self.load_data(stage)
        if stage == 1:
            params, lr, scheduler_of = list(model.text_parameters()), cfg.stage1_lr, None
        else:
            params, lr = list(model.image_parameters()), cfg.stage2_lr
            # SPEC 5: anchors of every training class, computed once after stage 1 and frozen. Without
            # stage 1 (an ablation) they come from plain CLIP's text encoder: untrained text adapters
            # would only add noise.
            classes = sorted({r["class_name"] for r in dataset.records})
            self.class_index = {c: i for i, c in enumerate(classes)}
            with torch.no_grad(), autocast(self.device, cfg.precision):
                anchors = model.text_anchors([self.info.prompt_names[c] for c in classes], adapted=cfg.train_stage1)
            self.stage2_anchors = anchors.float().detach()

            def scheduler_of(optimizer):
                return torch.optim.lr_scheduler.MultiStepLR(optimizer, cfg.stage2_milestones, cfg.stage2_gamma)

        optimizer = torch.optim.Adam(params, lr=lr, betas=tuple(cfg.betas))
        scheduler = scheduler_of(optimizer) if scheduler_of else None
        if resume_from is not None:
            optimizer.load_state_dict(ckpt.optimizer_state(resume_from))
            if scheduler is not None:
                scheduler.load_state_dict(ckpt.scheduler_state(resume_from))
        n_epochs = cfg.stage1_epochs if stage == 1 else cfg.stage2_epochs
        for epoch in epochs:
            start = time.perf_counter()
            self.run_epoch(stage, epoch, n_epochs, dataset, optimizer, scheduler)
            self.seconds[f"stage{stage}"] += time.perf_counter() - start
            self.save(stage, epoch, finished=(stage, epoch) == final, optimizer=optimizer, scheduler=scheduler)

    def load_data(self, stage: int):
        from aaclip.data.dataset import load_dataset

        cfg = self.cfg
        return load_dataset(
            cfg.data_root,
            cfg.train_dataset,
            shot=cfg.shot,
            image_size=cfg.image_size,
            augment=cfg.augment,
            color_jitter=cfg.augment and stage == 2,  # SPEC 5: colour jitter on stage-2 images only
        )

    def run_epoch(self, stage, epoch, n_epochs, dataset, optimizer, scheduler) -> None:
        from tqdm.auto import tqdm

        cfg = self.cfg
        seed = epoch_seed(cfg.seed, stage, epoch)
        seed_everything(seed)
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=cfg.stage1_batch_size if stage == 1 else cfg.stage2_batch_size,
            shuffle=True,
            generator=torch.Generator().manual_seed(seed),
            num_workers=cfg.num_workers,
            pin_memory=torch.device(self.device).type == "cuda",
        )
        step_loss = self.stage1_step if stage == 1 else self.stage2_step
        bar = tqdm(loader, desc=f"stage {stage} epoch {epoch}/{n_epochs}", disable=not self.progress, leave=False)
        for step, batch in enumerate(bar):
            with autocast(self.device, cfg.precision):
                parts = step_loss(batch)
            values = {k: float(v.detach()) for k, v in parts.items()}
            if not np.isfinite(values["loss"]):
                raise TrainingDivergedError(self.divergence_message(stage, epoch, step, values))
            lr = optimizer.param_groups[0]["lr"]  # the rate this step uses
            optimizer.zero_grad(set_to_none=True)
            parts["loss"].backward()
            if step == 0:
                check_no_backbone_grads(self.model, self.trainable)
            optimizer.step()
            if scheduler is not None:
                scheduler.step()  # SPEC 5: milestones count iterations
            self.history.append({"stage": stage, "epoch": epoch, "step": step, "lr": lr, **values})
            bar.set_postfix(loss=f"{values['loss']:.4f}")

    # one step's loss, per stage
    def stage1_step(self, batch) -> dict:
        """SPEC 4: anchors of the classes present in the batch, through the text adapters (with grad);
        image features from the frozen V-V CLIP (no grad)."""
        images, gt_mask, gt_label = self.to_device(batch)
        classes = list(dict.fromkeys(batch["class_name"]))  # unique, in order of appearance
        index = torch.tensor([classes.index(c) for c in batch["class_name"]], device=self.device)
        with torch.no_grad():
            if self.cfg.stage1_loss == "paper":  # the paper's loss adds a CLS-based image term
                features, image_embedding = self.model.stage1_features(images, return_global=True)
            else:
                features, image_embedding = self.model.stage1_features(images), None
        anchors = self.model.text_anchors([self.info.prompt_names[c] for c in classes], adapted=True)
        from aaclip.losses import stage1_loss

        return stage1_loss(
            features,
            anchors[index],
            gt_mask,
            gt_label=gt_label,
            image_embedding=image_embedding,
            mode=self.cfg.stage1_loss,
            orth_weight=self.cfg.orth_weight,
        )

    def stage2_step(self, batch) -> dict:
        """SPEC 5: CE on the detection feature + the 4-level segmentation loss, frozen anchors."""
        from aaclip.losses import stage2_loss

        images, gt_mask, gt_label = self.to_device(batch)
        index = torch.tensor([self.class_index[c] for c in batch["class_name"]], device=self.device)
        seg, det = self.model.image_features(images)
        return stage2_loss(seg, det, self.stage2_anchors[index], gt_mask, gt_label)

    def to_device(self, batch):
        device = self.device
        return (
            batch["image"].to(device, non_blocking=True),
            batch["gt_mask"].to(device, non_blocking=True),
            torch.as_tensor(batch["gt_label"]).to(device),
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


# ---------------------------------------------------------------------------------- checks and files
def check_frozen(model, trainable_ids: set[int]) -> None:
    """SPEC 1: the backbone is frozen; only adapter parameters may require gradients."""
    for name, param in model.named_parameters():
        if param.requires_grad and id(param) not in trainable_ids:
            raise AAClipError(f"backbone parameter {name!r} requires grad: the backbone must be frozen")


def check_no_backbone_grads(model, trainable_ids: set[int]) -> None:
    for name, param in model.named_parameters():
        if param.grad is not None and id(param) not in trainable_ids:
            raise AAClipError(f"backbone parameter {name!r} received a gradient: the backbone must be frozen")


def _previous_run(save_path: Path, identity: dict, overwrite: bool) -> dict | None:
    """The metadata of `save_path/last` if it belongs to this experiment; None if there is none."""
    last = ckpt.checkpoint_file(save_path / "last")
    if not last.is_file():
        return None
    meta = ckpt.read_meta(last)
    stored = meta.get("identity", {})
    differing = [k for k in sorted(set(stored) | set(identity)) if stored.get(k) != identity.get(k)]
    if not differing:
        return meta
    if overwrite:
        _remove_run(save_path)
        return None
    shown = "; ".join(f"{k}: {stored.get(k)!r} there, {identity.get(k)!r} now" for k in differing[:5])
    raise AAClipError(
        f"{save_path} holds a run with a different config ({shown}). Choose another save path, "
        f"or pass overwrite=True (CLI: --overwrite) to replace it"
    )


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
