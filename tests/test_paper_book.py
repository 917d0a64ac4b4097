"""The paper path end to end: `aaclip prepare` on the original layouts, then `aaclip book --profile paper`.

The commands are the ones book/reproduce.md gives a GPU user (its two blocks marked
`paper-test`), with only the scale parameters changed: fake trees in the original layouts under the
real file names (tests/paper_trees.py), a small random open_clip backbone, 64 px, one epoch per
stage, one seed, three target sets, the CPU.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import paper_trees

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
REPRODUCE = ROOT / "book" / "reproduce.md"
PREPARED = {"VisA": "VisA", "MVTec": "MVTec", "Brain": "Brain", "Kvasir": "Colon_Kvasir"}  # name -> folder
TARGETS = ["MVTec", "Brain", "Kvasir"]
CHAPTERS = ["00_miniature", "01_anomaly_unawareness", "02_stage1_text_anchors", "03_stage2_patch_alignment",
            "04_results", "05_ablations", "06_heatmap_explorer"]
# What the test may change in the page's command: scale, place and device, nothing about the method.
SCALE_KEYS = {"runtime.device", "runtime.threads", "runtime.data_root", "runtime.save_path", "model.backbone",
              "model.pretrained", "model.image_size", "stage1.epochs", "stage2.epochs", "eval.datasets", "seeds"}


def marked_block(name: str) -> list[str]:
    """The shell commands of the ```bash block after `<!-- paper-test: name -->`, continuation lines joined."""
    text = REPRODUCE.read_text()
    match = re.search(rf"<!-- paper-test: {name} -->\s*```bash\n(.*?)```", text, re.S)
    assert match, f"{REPRODUCE}: no block marked paper-test: {name}"
    joined = match.group(1).replace("\\\n", " ")
    return [line.split("#")[0].strip() for line in joined.splitlines() if line.split("#")[0].strip()]


def book_parameters(command: str) -> tuple[list[str], dict]:
    """(the words before the -p pairs, {key: value} of the -p pairs) of an `aaclip book` command."""
    words = shlex.split(command)
    head, parameters, i = [], {}, 0
    while i < len(words):
        if words[i] == "-p":
            parameters[words[i + 1]] = words[i + 2]
            i += 3
        else:
            head.append(words[i])
            i += 1
    return head, parameters


def aaclip(args: list[str], cwd: Path, timeout: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "aaclip", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def paper_book(tmp_path_factory):
    """The fake trees prepared by the page's commands, then the page's book command at CI scale."""
    work = tmp_path_factory.mktemp("paper")
    paper_trees.build_paper_data(work / "data")
    backbone = paper_trees.write_random_backbone(work / "backbone")
    prepared = []
    for line in marked_block("prepare"):
        words = shlex.split(line)
        if words[:2] == ["aaclip", "prepare"] and words[2] in PREPARED:  # (the few-shot files need more images)
            result = aaclip(words[1:], cwd=work, timeout=120)  # --root data/<folder>, relative to `work`
            assert result.returncode == 0, result.stderr
            prepared.append(words[2])
    assert sorted(prepared) == sorted(PREPARED), f"{REPRODUCE}: prepare commands for {sorted(PREPARED)} expected"

    (command,) = marked_block("book")
    head, parameters = book_parameters(command)
    assert head[:4] == ["aaclip", "book", "--profile", "paper"], command
    scale = {"runtime.device": "cpu", "runtime.threads": "1", "runtime.data_root": str(work / "data"),
             "runtime.save_path": str(work / "runs" / "paper"), "model.backbone": paper_trees.TINY_BACKBONE,
             "model.pretrained": str(backbone), "model.image_size": "64", "stage1.epochs": "1",
             "stage2.epochs": "1", "eval.datasets": ",".join(TARGETS), "seeds": "111"}
    assert set(parameters) <= SCALE_KEYS, f"the page's command sets {set(parameters) - SCALE_KEYS}: not scale"
    args = head[1:] + [w for key, value in {**parameters, **scale}.items() for w in ("-p", key, value)]
    result = aaclip([*args, "--out", str(work / "book"), "--no-progress"], cwd=ROOT, timeout=1200)
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
    return work


def page_text(html: Path) -> str:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(html.read_text(), "html.parser")
    main = soup.find("main")
    for tag in main(["script", "style"]):
        tag.decompose()
    return " ".join(main.get_text(" ").split())


def test_every_chapter_executes_and_renders_at_paper_scale(paper_book):
    html = paper_book / "book" / "html"
    for chapter in CHAPTERS:
        text = page_text(html / "notebooks" / f"{chapter}.html")
        assert "Traceback" not in text, chapter
        assert f"profile paper: {paper_trees.TINY_BACKBONE} at 64 px" in text, f"{chapter}: not the paper profile"
    intro = page_text(html / "notebooks" / "00_miniature.html")
    assert "runs on prepared datasets, not on the miniature" in intro  # the page says what it shows instead
    assert "Not a miniature build" in intro  # and the pretraining and world sections say what replaces them
    assert all(f"{name} target (zero-shot)" in intro for name in TARGETS)  # the real sets' table
    results = page_text(html / "notebooks" / "04_results.html")
    assert "names no defect types" in results  # VisA keeps every anomaly in one folder: no seen/unseen split


def test_polyp_image_metrics_are_undefined_and_left_out(paper_book):
    results = paper_book / "runs" / "paper" / "results"
    for method in ("AA-CLIP", "CLIP"):
        summary = json.loads((results / "Kvasir" / f"{method}-transductive" / "summary.json").read_text())
        assert summary["image_auroc"] is None and summary["counts"]["image_auroc"] == 0  # undefined, not 0
        assert summary["pixel_auroc"] is not None and summary["counts"]["pixel_auroc"] == 1
    text = page_text(paper_book / "book" / "html" / "notebooks" / "04_results.html")
    row = text[text.index("Kvasir AA-CLIP"):][:60]
    assert "undefined" in row and " 0.0 " not in row.split("undefined")[0], row


def test_the_medical_set_is_blurred_and_scored_as_medical(paper_book):
    from aaclip.data.dataset import load_dataset
    from aaclip.runs.checkpoint import load_run
    from aaclip.runs.evaluate import load_predictions
    from aaclip.runs.inference import Method, predict_levels

    results = paper_book / "runs" / "paper" / "results"
    brain, index = load_predictions(results / "Brain" / "AA-CLIP-transductive" / "predictions.npz")
    assert index["domain"] == "medical"
    peak = brain.anomaly_map.reshape(len(brain), -1).max(axis=1)
    np.testing.assert_allclose(brain.pred_score, peak, atol=2e-3)  # medical: the score is the map's maximum
    mvtec, _ = load_predictions(results / "MVTec" / "AA-CLIP-transductive" / "predictions.npz")
    mvtec_peak = mvtec.anomaly_map.reshape(len(mvtec), -1).max(axis=1)
    assert np.abs(mvtec.pred_score - mvtec_peak).max() > 1e-2  # industrial: half the CLS score

    model, cfg = load_run(paper_book / "runs" / "paper", device="cpu")
    data = load_dataset(cfg.runtime.data_root, "Brain", cfg.model.image_size, model.backbone.mean, model.backbone.std)
    batch = data.batch(list(range(len(data))))
    names = data.info.prompt_names
    medical = predict_levels(model, Method.of_run(cfg), batch, names, "medical").raw_map
    industrial = predict_levels(model, Method.of_run(cfg), batch, names, "industrial").raw_map
    assert np.abs(medical - industrial).max() > 1e-3
    np.testing.assert_allclose(brain.raw_map, medical, rtol=5e-3, atol=5e-3)  # the book used the medical blur
