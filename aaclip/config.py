"""One config object flows from papermill parameters, CLI flags and profiles to the library.

`Config()` holds SPEC's defaults (the `paper` profile). A profile is a small YAML file of
overrides in `aaclip/profiles/`; `Config.load("miniature", shot=16)` applies the profile and
then the caller's overrides, checking every name and type so that a typo fails loudly.
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


class ConfigError(AAClipError, ValueError):
    """A parameter name, type or value that the config does not accept."""


@dataclass
class Config:
    # --- what to run, where ---
    profile: str = "paper"
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    data_root: str = "data"
    train_dataset: str = "VisA"
    test_datasets: list[str] = field(default_factory=lambda: ["MVTec"])
    shot: int = -1  # -1 = full shot (the auxiliary dataset's whole test split)
    seed: int = 111
    save_path: str = "runs/aaclip"
    out_dir: str = "runs/results"

    # --- backbone (SPEC 1) ---
    backbone: str = "ViT-L-14-336"
    pretrained: str = "openai"  # an open_clip tag, "none", or a local weights file
    image_size: int = 518
    activation: str = "gelu"  # gelu (released) | quick_gelu (what the OpenAI weights were trained with)
    vv_attention: str = "self"  # self (released at batch 1) | tokens (the paper's V-V across tokens)

    # --- adapters (SPEC 2); None = derived from depth (a quarter of it) ---
    adapter_weight: float = 0.1
    text_adapt_until: int | None = None
    image_adapt_until: int | None = None
    levels: list[int] | None = None  # 1-based vision blocks whose patch tokens are read
    seg_relu: bool = False

    # --- stage 1 (SPEC 4) ---
    train_stage1: bool = True
    stage1_loss: str = "released"  # released | paper
    orth_weight: float = 0.1
    stage1_epochs: int = 5
    stage1_batch_size: int = 16
    stage1_lr: float = 1e-5

    # --- stage 2 (SPEC 5) ---
    train_stage2: bool = True
    stage2_epochs: int = 20
    stage2_batch_size: int = 2
    stage2_lr: float = 5e-4
    stage2_milestones: list[int] = field(default_factory=lambda: [16000, 32000])
    stage2_gamma: float = 0.5
    betas: list[float] = field(default_factory=lambda: [0.5, 0.999])
    augment: bool = True

    # --- inference and evaluation (SPEC 6, 8) ---
    batch_size: int = 8
    num_workers: int = 0
    precision: str = "auto"  # auto (bf16 autocast on CUDA, fp32 on CPU) | fp32 | bf16
    normalize: str = "transductive"  # transductive (released) | inductive
    aupro: str = "exact"  # exact | legacy | off
    metric_resolution: str = "input"  # input (518, released) | original

    CHOICES: typing.ClassVar[dict[str, tuple[str, ...]]] = {
        "activation": ("gelu", "quick_gelu"),
        "vv_attention": ("self", "tokens"),
        "stage1_loss": ("released", "paper"),
        "precision": ("auto", "fp32", "bf16"),
        "normalize": ("transductive", "inductive"),
        "aupro": ("exact", "legacy", "off"),
        "metric_resolution": ("input", "original"),
    }

    def __post_init__(self):
        for name, choices in self.CHOICES.items():
            if getattr(self, name) not in choices:
                raise ConfigError(f"{name}={getattr(self, name)!r}: choose one of {', '.join(choices)}")
        if self.shot != -1 and (self.shot < 2 or self.shot % 2):
            raise ConfigError(f"shot={self.shot}: use -1 (full) or an even k >= 2 (half normal, half anomalous)")
        if not 0.0 <= self.adapter_weight <= 1.0:
            raise ConfigError(f"adapter_weight={self.adapter_weight}: must lie in [0, 1]")

    # ------------------------------------------------------------------ building
    @classmethod
    def load(cls, profile: str | None = None, **overrides) -> "Config":
        """Profile values, then overrides; every name and type checked."""
        params: dict = {}
        if profile is not None:
            params.update(read_profile(profile))
            params["profile"] = profile
        params.update(overrides)
        return cls.from_dict(params)

    @classmethod
    def from_dict(cls, params: dict, source: str = "parameters") -> "Config":
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(params) - set(known))
        if unknown:
            raise ConfigError(
                f"unknown {source} {', '.join(map(repr, unknown))}; valid names: {', '.join(sorted(known))}"
            )
        hints = typing.get_type_hints(cls)
        values = {name: coerce(name, value, hints[name]) for name, value in params.items()}
        return cls(**values)

    def replace(self, **changes) -> "Config":
        return type(self).from_dict({**self.to_dict(), **changes})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    # ------------------------------------------------------------------ derived
    @property
    def data_path(self) -> Path:
        return Path(self.data_root)

    def resolve_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"


def available_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))


def read_profile(name: str) -> dict:
    path = Path(name) if name.endswith((".yaml", ".yml")) else PROFILE_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown profile {name!r}; choose one of {', '.join(available_profiles())} or a YAML path")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a profile is a mapping of parameter names to values")
    known = {f.name for f in fields(Config)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{path}: unknown keys {', '.join(map(repr, unknown))}")
    data.pop("profile", None)
    return data


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
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"parameter {name!r} expects an integer, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"parameter {name!r} expects a number, got {value!r}")
    if hint is str:
        if isinstance(value, (str, Path)):
            return str(value)
        raise ConfigError(f"parameter {name!r} expects a string, got {value!r}")
    return value
