"""The book's runtime and set-up: what every chapter's first cell calls, and the one place that names the miniature.

    book = setup(profile, parameters)    # a chapter's whole set-up cell

`setup` resolves the papermill parameters into one `aaclip.config.Config` (a bad name or type
fails here, before anything runs), sets the CPU thread count the profile declares *before* any
work (the world's pretraining included), makes sure the data exist (the miniature profiles build
their world; real data are checked), and names the run folder after the run's identity, so that
chapters with the same settings share one training and a changed setting never meets an old run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from aaclip.config import Config
from aaclip.errors import AAClipError

DEFAULT_SEEDS = (111, 0, 1)  # training seeds behind every claim that depends on training noise


class BookError(AAClipError):
    """A notebook or the HTML build failed, or the book's data are missing; the previous book is untouched."""


@dataclass
class Book:
    """What a chapter works with: the config, the world's record (miniature only), the seeds."""

    cfg: Config
    world: dict | None  # the miniature world's summary; None at paper scale
    seeds: tuple[int, ...] = DEFAULT_SEEDS
    progress: bool = False  # progress bars when run by hand (the book would store them as widgets)
    workers: int = 1  # processes for independent trainings (book_runs.train_all)
    glued: dict = field(default_factory=dict)

    @property
    def miniature(self) -> bool:
        return self.world is not None

    @property
    def target(self) -> str:
        """The first target dataset: the one the single-dataset figures use."""
        return self.cfg.eval.datasets[0]

    def seed_config(self, seed: int) -> Config:
        """The reference run's config at another training seed, in its own folder."""
        if seed == self.cfg.train.seed:
            return self.cfg
        return self.cfg.replace({"train.seed": seed, "runtime.save_path": f"{self.cfg.runtime.save_path}-seed{seed}"})

    def glue(self, values: dict) -> None:
        """myst-nb `glue` every value (names are the keys), without displaying them."""
        from myst_nb import glue

        for name, value in values.items():
            glue(name, value, display=False)
            self.glued[name] = value

    def pretraining_pictures(self, pairs: int = 6):
        """The miniature's first twin pairs as its tiny CLIP saw them: (uint8 images, titles); None at paper scale."""
        if self.world is None:
            return None
        from aaclip_miniature.generate import twin_pictures

        return twin_pictures(self.world, pairs)


def setup(profile: str = "miniature", parameters: dict | None = None, seeds=DEFAULT_SEEDS, progress: bool = False,
          workers: int | None = None) -> Book:
    """The chapter's Book: parameters checked, threads set, data ready, the run folder named."""
    from aaclip.runs.identity import identity_digest, run_identity

    parameters = dict(parameters or {})
    cfg = Config.load(profile, parameters)
    cfg.apply_threads()  # before any work: the world's pretraining runs on these threads too
    world = ensure_data(cfg, progress)
    if "runtime.save_path" not in parameters:
        digest = identity_digest(run_identity(cfg))
        cfg = cfg.replace({"runtime.save_path": f"runs/{Path(profile).stem}/{digest}"})
    inline_figures()
    book = Book(cfg, world, tuple(seeds), progress, workers or default_workers(cfg))
    print(f"profile {cfg.runtime.profile}: {cfg.model.backbone} at {cfg.model.image_size} px, train on "
          f"{cfg.train.dataset}, test on {', '.join(cfg.eval.datasets)}, seeds {', '.join(map(str, book.seeds))}, "
          f"run in {cfg.runtime.save_path}")
    return book


def ensure_data(cfg: Config, progress: bool = True) -> dict | None:
    """Build the miniature world a miniature profile reads (cached: instant once built) and return its
    summary; for any other profile check that the training and test metadata exist and say how to make them."""
    from aaclip.data.registry import get_dataset, metadata_path
    from aaclip_miniature import world_for

    world = world_for(cfg, progress)
    if world is not None:
        return world
    wanted = [(cfg.train.dataset, cfg.train.shot), *[(t, -1) for t in cfg.eval.datasets]]
    missing = [(name, metadata_path(cfg.runtime.data_root, name, shot)) for name, shot in wanted]
    missing = [(name, path) for name, path in missing if not path.is_file()]
    if missing:
        folders = ", ".join(sorted({get_dataset(name, cfg.runtime.data_root).folder for name, _ in missing}))
        raise BookError(
            "missing dataset metadata:\n  " + "\n  ".join(f"{name}: {path}" for name, path in missing)
            + f"\nunpack the datasets under {cfg.runtime.data_root}/ ({folders}) and run `aaclip prepare` (book/reproduce.md)"
        )
    return None


def default_workers(cfg: Config) -> int:
    """Two processes for independent trainings where each runs on one CPU thread and the machine has two
    cores or more; one otherwise (a GPU, or torch's own threads, would only be shared)."""
    if cfg.resolve_device() != "cpu" or cfg.runtime.threads != 1:
        return 1
    return max(1, min(2, os.cpu_count() or 1))


def inline_figures() -> None:
    """Matplotlib figures shown inline when running in IPython (the set-up cell's `%matplotlib inline`)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is not None:
        shell.run_line_magic("matplotlib", "inline")
