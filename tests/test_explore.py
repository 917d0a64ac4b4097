"""The heatmap explorer's data (book:protocol-explorer): read from saved predictions, shown as scored."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest

from aaclip import explore
from aaclip.errors import AAClipError

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def results(smoke_run, smoke_cfg, tmp_path_factory):
    """AA-CLIP's and plain CLIP's saved predictions on mini-target (as `aaclip test --save-predictions` writes)."""
    from aaclip.data.dataset import load_dataset
    from aaclip.model import AAClip
    from aaclip.runs.checkpoint import load_run
    from aaclip.runs.evaluate import evaluate
    from aaclip.runs.inference import BASELINE, Method

    out = tmp_path_factory.mktemp("explore")
    model, cfg = load_run(smoke_run.save_path)
    b = model.backbone
    data = load_dataset(cfg.runtime.data_root, "mini-target", b.image_size, b.mean, b.std)
    evaluate(model, data, Method.of_run(cfg), cfg.eval, out_dir=out / "aaclip", save_predictions=True, progress=False)
    clip = AAClip.from_config(smoke_cfg.model, smoke_cfg.runtime.data_root, "cpu")
    evaluate(clip, data, BASELINE, smoke_cfg.eval, out_dir=out / "clip", save_predictions=True, progress=False)
    return out


@pytest.fixture(scope="module")
def explored(results):
    return explore.load_explorer([results / "aaclip"], [results / "clip"])


def test_the_shown_map_is_the_map_the_metrics_used(explored, results):
    """At the input size, the 'as scored' maps are evaluation's own, under both normalisations."""
    from aaclip.runs.evaluate import load_predictions

    cls = explored.classes[0]
    image = cls.images[0]
    for mode in explore.MODES:
        saved, _ = load_predictions(results / "aaclip" / "predictions.npz", normalize=mode)
        row = saved.image_path.index(image.image_path)
        size = saved.anomaly_map.shape[-1]
        full = explore.ExploredImage(image.image_path, image.gt_label, image.picture, np.zeros((size, size), bool),
                                     image.grids, image.pred_score)
        fused, levels = explore.shown_maps(cls, full, "AA-CLIP", "scored", mode)
        np.testing.assert_allclose(fused, saved.anomaly_map[row], atol=1e-5)
        assert levels.shape == (cls.n_levels, size, size) and 0 <= levels.min() and levels.max() <= 1
        assert image.pred_score["AA-CLIP"][mode] == pytest.approx(float(saved.pred_score[row]), abs=1e-6)


def test_the_pixel_threshold_marks_the_same_pixels_under_both_normalisations(explored):
    cls = explored.classes[0]
    for image in cls.images:
        regions = [explore.shown_maps(cls, image, "AA-CLIP", "scored", m)[0] >= cls.pixel_threshold["AA-CLIP"][m]
                   for m in explore.MODES]
        assert np.mean(regions[0] != regions[1]) < 1e-3  # one region (up to float rounding at its edge)


def test_the_sample_puts_the_most_wrong_first_and_spreads_the_rest():
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.4, 0.3, 0.2, 0.1])
    labels = np.array([1, 0, 1, 1, 0, 1, 0, 0])  # wrong at 0.5: index 1 (normal, 0.8) and 5 (anomalous, 0.3)
    chosen = explore.choose_images(scores, labels, 0.5, k=5)
    assert chosen[:2] == [1, 5]  # the furthest from the threshold first
    assert 0 in chosen and 7 in chosen  # the highest and the lowest of the rest
    assert len(chosen) == len(set(chosen)) == 5
    assert explore.choose_images(scores, labels, float("nan"), k=3) == [0, 4, 7]  # one label: a spread only


def test_most_wrong_order_lists_errors_first(explored):
    cls = explored.classes[0]
    order = explore.display_order(cls, "most wrong", "transductive")
    t = cls.image_threshold["AA-CLIP"]["transductive"]
    wrong = [bool(im.gt_label) != (im.pred_score["AA-CLIP"]["transductive"] >= t) for im in cls.images]
    flags = [wrong[i] for i in order]
    assert flags == sorted(flags, reverse=True)  # every error before every right answer
    assert sorted(order) == list(range(len(cls.images)))
    labels = [cls.images[i].gt_label for i in explore.display_order(cls, "label", "transductive")]
    assert labels == sorted(labels, reverse=True)


def test_the_budget_drops_the_last_chosen_images(results):
    data = explore.load_explorer([results / "aaclip"], [results / "clip"])
    before = {c.title: [im.image_path for im in c.images] for c in data.classes}
    per_image = explore.entry_bytes(explore.static_entry(data.classes[0].images[0]))
    explore.fit_budget(data, per_image * 2 * len(data.classes), lambda im: explore.entry_bytes(explore.static_entry(im)),
                       keep=1)
    assert data.dropped > 0 and all(1 <= len(c.images) for c in data.classes)
    for c in data.classes:
        assert [im.image_path for im in c.images] == before[c.title][:len(c.images)]


def test_wrong_or_mismatched_predictions_are_refused_naming_the_file(results, tmp_path):
    with pytest.raises(AAClipError, match=r"clip.*predictions of CLIP, expected AA-CLIP"):
        explore.load_explorer([results / "clip"])
    index = json.loads((results / "clip" / "predictions.json").read_text())
    index["image_path"] = [p + ".moved" for p in index["image_path"]]
    other = tmp_path / "clip"
    other.mkdir()
    (other / "predictions.json").write_text(json.dumps(index))
    (other / "predictions.npz").write_bytes((results / "clip" / "predictions.npz").read_bytes())
    with pytest.raises(AAClipError, match=r"no plain-CLIP prediction for .*test both on the same dataset"):
        explore.load_explorer([results / "aaclip"], [other])


def test_aaclip_explore_writes_one_self_contained_page(results, tmp_path):
    out = tmp_path / "page.html"
    command = [sys.executable, "-m", "aaclip", "explore", "--results", str(results / "aaclip"), "--baseline",
               str(results / "clip"), "--out", str(out), "--per-class", "4", "--quiet"]
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert re.search(r"explorer: \d+ images of 7 classes -> .*page.html \(\d\.\d\d MB\)", done.stdout)
    page = out.read_text()
    assert "aaclipExplorer(" in page and "https://" not in page and "http://" not in page
    payload = json.loads(re.search(r'<script type="application/json" id="[^"]+">(.*?)</script>', page, re.S).group(1))
    assert payload["methods"] == ["AA-CLIP", "CLIP"] and all(len(c["images"]) <= 4 for c in payload["classes"])
    bad = subprocess.run([*command[:9], str(tmp_path / "page.png")], capture_output=True, text=True)
    assert bad.returncode != 0 and "ending in .html" in bad.stderr and not (tmp_path / "page.png").exists()
