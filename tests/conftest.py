"""Shared, session-scoped fixtures: one smoke-size miniature world and one AA-CLIP run trained on it.

Building the world (it pretrains the tiny CLIP) and training are the expensive parts of the
suite, so every test that needs them shares these.
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may download weights


@pytest.fixture(scope="session")
def smoke_world(tmp_path_factory):
    """The smoke-size miniature world (seed 0): mini-aux, mini-target, mini-scan and the tiny CLIP."""
    from aaclip.miniature import build_world

    root = tmp_path_factory.mktemp("smoke-world")
    build_world(root, size="smoke", seed=0, progress=False)
    return root


@pytest.fixture(scope="session")
def smoke_cfg(smoke_world, tmp_path_factory):
    """The smoke profile on that world, on CPU, saving into a session directory."""
    from aaclip.config import Config

    run = tmp_path_factory.mktemp("smoke-run")
    return Config.load("smoke", data_root=str(smoke_world), save_path=str(run), out_dir=str(run / "results"), device="cpu")


@pytest.fixture(scope="session")
def smoke_run(smoke_cfg):
    """AA-CLIP trained on mini-aux with the smoke schedule (both stages), once per session."""
    from aaclip.train import train

    return train(smoke_cfg, progress=False)
