"""One config object flows from papermill parameters, CLI flags and profiles to the library.

    cfg = Config.load("miniature", {"train.seed": 3, "stage2.epochs": 3})
    cfg.model     # what AA-CLIP is: a checkpoint only loads into the same model
    cfg.train     # what it is trained on, and how (with stage1 and stage2: the run identity)
    cfg.stage1    # the text side's training (book:method-stage1)
    cfg.stage2    # the image side's training (book:method-stage2)
    cfg.eval      # how a run is tested (never part of the run identity)
    cfg.runtime   # where and on what the work runs (never part of the run identity)

Each group is a dataclass in open_clip's style, and each field declares its help, its choices
and its range check once, with `option`; the CLI builds its flags and the book its parameters
from those declarations. `Config()` holds the paper's setting (book:method-stage1,
book:method-stage2); a profile is a small YAML file of overrides in `aaclip/profiles/`, nested
by group. Every key anywhere is `group.field` (`stage2.epochs`), checked by name and type so
that a typo fails before anything runs.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from aaclip.errors import AAClipError

PROFILE_DIR = Path(__file__).parent / "profiles"

# The choices, declared once: the config checks them and the modules dispatch on them.
ACTIVATIONS = ("gelu", "quick_gelu")
VV_MODES = ("self", "tokens")
STAGE1_LOSSES = ("released", "paper")
PRECISIONS = ("fp32", "bf16")  # fp32: what the released code runs everywhere; bf16: autocast, a measured switch
NORMALIZATIONS = ("transductive", "inductive")
AUPRO_MODES = ("exact", "legacy", "off")
METRIC_RESOLUTIONS = ("input", "original")


class ConfigError(AAClipError, ValueError):
    """A parameter name, type or value that the config does not accept."""


# ---------------------------------------------------------------------------- range checks
def positive(value) -> str | None:
    return None if value > 0 else "must be > 0"


def non_negative(value) -> str | None:
    return None if value >= 0 else "must be >= 0"


def unit_interval(value) -> str | None:
    return None if 0.0 <= value <= 1.0 else "must lie in [0, 1]"


def optional_non_negative(value) -> str | None:
    return None if value is None else non_negative(value)


def shot_rule(value) -> str | None:
    return None if value == -1 or (value >= 2 and value % 2 == 0) else (
        "use -1 (full) or an even k >= 2 (half normal, half anomalous)"
    )


def levels_rule(value) -> str | None:
    if value is None:
        return None
    ok = value and value == sorted(set(value)) and value[0] >= 1
    return None if ok else "need increasing block numbers >= 1 (or none: a quarter of the depth each)"


def betas_rule(value) -> str | None:
    return None if len(value) == 2 and all(0.0 <= b < 1.0 for b in value) else "need two values in [0, 1)"


def all_positive(value) -> str | None:
    return None if all(v > 0 for v in value) else "every value must be > 0"


def optional_positive(value) -> str | None:
    return None if value is None else positive(value)


def option(default, help: str, *, choices: tuple | None = None, check=None, flag: str | None = None):
    """A config field that declares its help text, its choices and its range check once.

    `flag` names the CLI flag when the field's own name would be ambiguous across groups.
    """
    factory = {"default_factory": lambda: list(default)} if isinstance(default, list) else {"default": default}
    return field(**factory, metadata={"help": help, "choices": choices, "check": check, "flag": flag})


# ---------------------------------------------------------------------------- the groups
class Group:
    """A config group: checks every field against its declared choices and range on construction."""

    name: typing.ClassVar[str]

    def __post_init__(self):
        for f in fields(self):
            problem = check_value(self, f)
            if problem:
                raise ConfigError(f"{self.name}.{f.name}={getattr(self, f.name)!r}: {problem}")


@dataclass
class ModelConfig(Group):
    """What AA-CLIP is: the backbone and the adapters (book:method-backbone, book:method-adapters).

    A checkpoint only loads into a model built from the same values; `pretrained` says where the
    weights are, and the weights themselves are identified by their sha256, not by that path.
    """

    backbone: str = option("ViT-L-14-336", "open_clip model name (the name in a local folder's open_clip_config.json)")
    pretrained: str = option(
        "openai", "open_clip pretrained tag, 'none' (random), a .safetensors file or a folder with open_clip_config.json"
    )
    image_size: int = option(518, "input size in pixels", check=positive)
    activation: str = option("gelu", "gelu (released) | quick_gelu (what the OpenAI weights were trained with)",
                             choices=ACTIVATIONS)
    vv_attention: str = option("self", "stage-1 V-V attention: self (released at batch 1) | tokens (the paper's)",
                               choices=VV_MODES)
    adapter_weight: float = option(0.1, "residual weight w of the adapters", check=unit_interval)
    text_adapt_until: int | None = option(None, "text blocks with adapters (none: a quarter of the depth)",
                                          check=optional_non_negative)
    image_adapt_until: int | None = option(None, "vision blocks with adapters (none: a quarter of the depth)",
                                           check=optional_non_negative)
    levels: list[int] | None = option(None, "1-based vision blocks whose patch tokens are read (none: quarters)",
                                      check=levels_rule)
    seg_relu: bool = option(False, "LeakyReLU after the level and detection projections")


@dataclass
class TrainConfig(Group):
    """What a run trains on and the settings both stages share (book:protocol-datasets)."""

    dataset: str = option("VisA", "auxiliary (training) dataset, e.g. VisA or mini-aux")
    shot: int = option(-1, "-1 = full shot, or an even k (uses <k>-shot.jsonl)", check=shot_rule)
    seed: int = option(111, "random seed: adapter initialisation, shuffling, augmentation")
    betas: list[float] = option([0.5, 0.999], "Adam betas of both stages", check=betas_rule)
    augment: bool = option(True, "rotations, translations and flips (book:method-augmentation)")
    precision: str = option("fp32", "training precision: fp32 (released) | bf16 (autocast)", choices=PRECISIONS)


@dataclass
class Stage1Config(Group):
    """Stage 1: the text adapters (book:method-stage1)."""

    enabled: bool = option(True, "train stage 1", flag="stage1")
    loss: str = option("released", "released (last level + orthogonality) | paper (all levels + classification)",
                       choices=STAGE1_LOSSES, flag="stage1-loss")
    orth_weight: float = option(0.1, "weight of the orthogonality loss", check=non_negative)
    epochs: int = option(5, "stage-1 epochs", check=non_negative, flag="stage1-epochs")
    batch_size: int = option(16, "stage-1 batch size", check=positive, flag="stage1-batch-size")
    lr: float = option(1e-5, "stage-1 learning rate", check=positive, flag="stage1-lr")


@dataclass
class Stage2Config(Group):
    """Stage 2: the image adapters and projections (book:method-stage2)."""

    enabled: bool = option(True, "train stage 2", flag="stage2")
    epochs: int = option(20, "stage-2 epochs", check=non_negative, flag="stage2-epochs")
    batch_size: int = option(2, "stage-2 batch size", check=positive, flag="stage2-batch-size")
    lr: float = option(5e-4, "stage-2 learning rate", check=positive, flag="stage2-lr")
    milestones: list[int] = option([16000, 32000], "MultiStepLR milestones in iterations", check=all_positive,
                                   flag="stage2-milestones")
    gamma: float = option(0.5, "MultiStepLR factor", check=positive, flag="stage2-gamma")


@dataclass
class EvalConfig(Group):
    """How a run is tested (book:method-normalisation, book:protocol-metrics)."""

    datasets: list[str] = option(["MVTec"], "target (test) datasets")
    batch_size: int = option(8, "inference batch size", check=positive)
    precision: str = option("fp32", "inference precision: fp32 (released) | bf16 (autocast)", choices=PRECISIONS)
    normalize: str = option("transductive", "transductive (released, per-class min-max) | inductive",
                            choices=NORMALIZATIONS)
    aupro: str = option("exact", "exact | legacy | off", choices=AUPRO_MODES)
    metric_resolution: str = option("input", "input (518, released) | original (each mask's own size)",
                                    choices=METRIC_RESOLUTIONS)


@dataclass
class RuntimeConfig(Group):
    """Where and on what the work runs."""

    profile: str = option("paper", "the profile these values came from")
    device: str = option("auto", "auto | cpu | cuda | cuda:N")
    threads: int | None = option(None, "CPU threads for torch (none: torch's default)", check=optional_positive)
    num_workers: int = option(0, "DataLoader worker processes", check=non_negative)
    data_root: str = option("data", "where the datasets (and a relative backbone path) live")
    save_path: str = option("runs/aaclip", "the training run's directory")


@dataclass
class ExploreConfig(Group):
    """The heatmap explorer's page (book:protocol-explorer): which images, at what size, within what budget."""

    per_class: int = option(6, "images per class in the explorer page: the most wrong at the class threshold "
                               "first, then a spread over the scores", check=positive)
    widget_per_class: int = option(3, "of those, images per class in the widget view (its panels are pre-drawn)",
                                   check=positive)
    display_size: int = option(192, "longest side of the pictures shown, in pixels", check=positive)
    page_mb: float = option(5.0, "size budget of the page; fewer images per class where it would be larger",
                            check=positive)


for _name, _cls in (("model", ModelConfig), ("train", TrainConfig), ("stage1", Stage1Config),
                    ("stage2", Stage2Config), ("eval", EvalConfig), ("runtime", RuntimeConfig),
                    ("explore", ExploreConfig)):
    _cls.name = _name

GROUPS = {
    "model": ModelConfig,
    "train": TrainConfig,
    "stage1": Stage1Config,
    "stage2": Stage2Config,
    "eval": EvalConfig,
    "runtime": RuntimeConfig,
    "explore": ExploreConfig,
}
IDENTITY_GROUPS = ("model", "train", "stage1", "stage2")  # what a run trained; with the data, its identity


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    stage1: Stage1Config = field(default_factory=Stage1Config)
    stage2: Stage2Config = field(default_factory=Stage2Config)
    eval: EvalConfig = field(default_factory=EvalConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    explore: ExploreConfig = field(default_factory=ExploreConfig)

    def __post_init__(self):
        for group, cls in GROUPS.items():  # each group checked its own fields when it was made
            part = getattr(self, group)
            if not isinstance(part, cls):
                raise ConfigError(f"{group} must be a {cls.__name__}, got {type(part).__name__}")

    # ------------------------------------------------------------------ building
    @classmethod
    def load(cls, profile: str | None = None, overrides: dict | None = None) -> "Config":
        """The profile's values, then `overrides` ({"group.field": value}); every key and type checked."""
        values: dict = {}
        if profile is not None:
            values.update(read_profile(profile))
            values["runtime.profile"] = Path(profile).stem if profile.endswith((".yaml", ".yml")) else profile
        values.update(flatten(overrides or {}, "parameters"))
        return cls.from_flat(values)

    @classmethod
    def from_flat(cls, values: dict, source: str = "parameters") -> "Config":
        """A Config from {"group.field": value} (missing keys keep their defaults)."""
        known = field_paths()
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ConfigError(f"unknown {source} {', '.join(map(repr, unknown))}; valid names: {', '.join(known)}")
        groups: dict[str, dict] = {group: {} for group in GROUPS}
        for path, value in values.items():
            group, name = path.split(".")
            groups[group][name] = coerce(path, value, known[path])
        return cls(**{group: GROUPS[group](**kwargs) for group, kwargs in groups.items()})

    @classmethod
    def from_dict(cls, data: dict, source: str = "parameters") -> "Config":
        """The inverse of `to_dict` (nested by group)."""
        return cls.from_flat(flatten(data, source), source)

    def replace(self, changes: dict) -> "Config":
        """A copy with {"group.field": value} changed, checked like `load`."""
        return type(self).from_flat({**self.flat(), **flatten(changes, "parameters")})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def flat(self) -> dict:
        return {f"{group}.{name}": value for group, part in self.to_dict().items() for name, value in part.items()}

    def identity_part(self) -> dict:
        """The groups that say what a run trained (the run identity adds the data's and the backbone's digests)."""
        return {group: dataclasses.asdict(getattr(self, group)) for group in IDENTITY_GROUPS}

    def check_training(self) -> None:
        """A config that is trained must train something: an enabled stage with at least one epoch."""
        if not any(part.enabled and part.epochs > 0 for part in (self.stage1, self.stage2)):
            raise ConfigError(
                f"stage1.enabled={self.stage1.enabled}, stage1.epochs={self.stage1.epochs}, "
                f"stage2.enabled={self.stage2.enabled}, stage2.epochs={self.stage2.epochs}: no stage would train; "
                "enable a stage with epochs >= 1"
            )

    # ------------------------------------------------------------------ derived
    @property
    def data_path(self) -> Path:
        return Path(self.runtime.data_root)

    def resolve_device(self) -> str:
        if self.runtime.device != "auto":
            return self.runtime.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def apply_threads(self) -> None:
        """Set torch's CPU thread count as the runtime asks (a process-wide choice: call it at entry points)."""
        if self.runtime.threads is not None:
            import torch

            torch.set_num_threads(self.runtime.threads)


# ---------------------------------------------------------------------------- field tables
def field_paths() -> dict[str, object]:
    """{"group.field": type hint} for every field, in declaration order."""
    paths = {}
    for group, cls in GROUPS.items():
        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            paths[f"{group}.{f.name}"] = hints[f.name]
    return paths


def field_info(path: str) -> dataclasses.Field:
    group, name = path.split(".")
    return next(f for f in fields(GROUPS[group]) if f.name == name)


def check_value(part, f: dataclasses.Field) -> str | None:
    value = getattr(part, f.name)
    choices = f.metadata.get("choices")
    if choices is not None and value not in choices:
        return f"choose one of {', '.join(choices)}"
    check = f.metadata.get("check")
    return check(value) if check is not None else None


def flatten(data: dict, source: str) -> dict:
    """{"group": {"field": v}} or {"group.field": v} (or a mix) -> {"group.field": v}."""
    flat = {}
    for key, value in data.items():
        if key in GROUPS and isinstance(value, dict):
            flat.update({f"{key}.{name}": v for name, v in value.items()})
        elif "." in str(key):
            flat[str(key)] = value
        else:
            raise ConfigError(f"{source}: {key!r} is not a 'group.field' name (groups: {', '.join(GROUPS)})")
    return flat


def available_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))


def read_profile(name: str) -> dict:
    """A profile's overrides as {"group.field": value}; unknown keys name the file."""
    path = Path(name) if name.endswith((".yaml", ".yml")) else PROFILE_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown profile {name!r}; choose one of {', '.join(available_profiles())} or a YAML path")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a profile is a mapping of groups ({', '.join(GROUPS)}) to their values")
    values = flatten(data, str(path))
    unknown = sorted(set(values) - set(field_paths()))
    if unknown:
        raise ConfigError(f"{path}: unknown keys {', '.join(map(repr, unknown))}")
    values.pop("runtime.profile", None)
    return values


def coerce(name: str, value, hint):
    """Accept the value if it has the declared type; convert strings (CLI flags); else fail naming the key."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        if isinstance(value, str) and value.lower() in ("none", "null") and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return coerce(name, value, inner[0])
    if origin is list:
        (item,) = args
        if isinstance(value, str):
            value = [v for v in value.replace(",", " ").split() if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"parameter {name!r} expects a list of {item.__name__}, got {value!r}")
        return [coerce(name, v, item) for v in value]
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"parameter {name!r} expects true/false, got {value!r}")
    if hint in (int, float):  # an int is a fine float; a float or a bool is no int
        accepted = (int, float) if hint is float else int
        if isinstance(value, accepted) and not isinstance(value, bool):
            return hint(value)
        if isinstance(value, str):
            try:
                return hint(value)
            except ValueError:
                pass
        raise ConfigError(f"parameter {name!r} expects {'an integer' if hint is int else 'a number'}, got {value!r}")
    if hint is str:
        if isinstance(value, (str, Path)):
            return str(value)
        raise ConfigError(f"parameter {name!r} expects a string, got {value!r}")
    return value
