"""Shared, session-scoped fixtures: one smoke-size miniature world and one AA-CLIP run trained on it.

Building the world (it pretrains the tiny CLIP) and training are the expensive parts of the
suite, so every test that needs them shares these.

Every test runs torch on one thread: the models here are tiny, and the suite shares two cores
with the background build below (two threads each on two cores made both wait on each other).

Tests marked `default_world` need the default-size world: its tiny CLIP ships with the code, but
drawing its datasets and measuring its evidence still take minutes. When such a test is selected,
its build starts at collection in a background process on one thread, and the tests move to the
end of the run, so the wait overlaps the rest of the suite instead of adding to it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may download weights
os.environ.setdefault("OMP_NUM_THREADS", "1")  # for the processes the tests start, too
_default_world: dict = {}


def pytest_configure(config):
    import torch

    torch.set_num_threads(1)


@pytest.hookimpl(trylast=True)  # after -m/-k deselection: a deselected test must not start the build
def pytest_collection_modifyitems(config, items):
    needing = [item for item in items if item.get_closest_marker("default_world")]
    if not needing:
        return
    items[:] = [item for item in items if item not in needing] + needing
    root = Path(tempfile.mkdtemp(prefix="aaclip-default-world-"))
    log = open(root / "build.log", "w")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "aaclip", "miniature", "--size", "default", "--seed", "0", "--out", str(root / "world")]
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    _default_world.update(root=root, log=log, process=process)


def pytest_sessionfinish(session, exitstatus):
    if _default_world:
        _default_world["process"].kill()
        _default_world["process"].wait()
        _default_world["log"].close()
        shutil.rmtree(_default_world["root"], ignore_errors=True)


@pytest.fixture(scope="session")
def default_world():
    """The default-size miniature world (seed 0), built by the background process started at collection."""
    if not _default_world:
        pytest.fail("the default_world fixture needs its test marked @pytest.mark.default_world")
    returncode = _default_world["process"].wait()
    log = (_default_world["root"] / "build.log").read_text()
    assert returncode == 0, f"building the default world failed:\n{log[-4000:]}"
    return _default_world["root"] / "world"


@pytest.fixture(scope="session")
def smoke_world(tmp_path_factory):
    """The smoke-size miniature world (seed 0): mini-aux, mini-target, mini-scan and the tiny CLIP."""
    from aaclip_miniature import build_world

    root = tmp_path_factory.mktemp("smoke-world")
    build_world(root, size="smoke", seed=0, progress=False)
    return root


@pytest.fixture(scope="session")
def smoke_cfg(smoke_world, tmp_path_factory):
    """The smoke profile on that world, on CPU, saving into a session directory."""
    from aaclip.config import Config

    run = tmp_path_factory.mktemp("smoke-run")
    return Config.load("smoke", {"runtime.data_root": str(smoke_world), "runtime.save_path": str(run), "runtime.device": "cpu"})


@pytest.fixture(scope="session")
def smoke_run(smoke_cfg):
    """AA-CLIP trained on mini-aux with the smoke schedule (both stages), once per session."""
    from aaclip.runs.train import train

    return train(smoke_cfg, progress=False)


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory):
    """A randomly initialised tiny CLIP as an open_clip folder (no pretraining): for shape and flow tests."""
    from aaclip_miniature import tiny_clip

    folder = tmp_path_factory.mktemp("tiny-clip-random")
    model, _ = tiny_clip.create_model(seed=0)
    tiny_clip.save(model, folder, tiny_clip.PretrainSettings(epochs=0), seed=0)
    return folder


@pytest.fixture(scope="session")
def tiny_cfg(tiny_backbone):
    """The paper's setting on that random tiny CLIP at 64 px, on CPU."""
    from aaclip.config import Config

    return Config().replace({"model.backbone": "aaclip-tiny", "model.pretrained": str(tiny_backbone),
                             "model.image_size": 64, "runtime.device": "cpu"})
