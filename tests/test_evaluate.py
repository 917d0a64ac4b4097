"""Evaluation (SPEC 6, 8): summary files, normalisations, saved predictions, single-image predict, overlays."""

import csv
import json
import math

import numpy as np
import pytest
from PIL import Image

from aaclip import evaluate
from aaclip.evaluate import load_predictions, predict_images
from aaclip.metrics import METRIC_NAMES
from aaclip.viz import denormalize, overlay

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def target_results(smoke_cfg, smoke_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("results")
    summary = evaluate.test(smoke_cfg, "mini-target", out_dir=out, save_predictions=True, progress=False)
    return out, summary


def test_summary_json_holds_the_dataset_means_and_how_they_were_made(target_results, smoke_run):
    out, summary = target_results
    written = json.loads((out / "summary.json").read_text())
    with open(out / "per_class.csv") as handle:
        rows = {r["class_name"]: r for r in csv.DictReader(handle)}
    classes = [c for c in rows if c != "mean"]
    assert len(classes) == written["n_classes"] == 7
    for metric in METRIC_NAMES:
        values = [float(rows[c][metric]) for c in classes if not math.isnan(float(rows[c][metric]))]
        assert written[metric] == pytest.approx(sum(values) / len(values)), metric
        assert summary[metric] == pytest.approx(written[metric])
    assert written["normalize"] == "transductive" and written["baseline"] is False
    assert written["checkpoint"] == str(smoke_run.checkpoint) and written["config"]["backbone"] == "aaclip-tiny"
    assert written["dataset"] == "mini-target" and written["ms_per_image"] > 0
    assert (out / "summary.md").is_file()


def test_saved_predictions_reload_for_the_explorer(target_results, smoke_cfg):
    out, _ = target_results
    preds = load_predictions(out / "predictions.npz")
    with np.load(out / "predictions.npz", allow_pickle=False) as data:  # plain arrays, no pickles
        assert data["anomaly_map"].dtype == np.float16
    n = len(preds)
    assert preds.anomaly_map.shape == preds.gt_mask.shape == (n, smoke_cfg.image_size, smoke_cfg.image_size)
    assert len(set(preds.class_name)) == 7 and all(p.endswith(".png") for p in preds.image_path)
    # transductive maps are per-class min-max normalised: each class spans [0, 1]
    for name in set(preds.class_name):
        maps = preds.select(name).anomaly_map
        assert maps.min() == pytest.approx(0, abs=1e-3) and maps.max() == pytest.approx(1, abs=1e-3)
    # the inductive mode needs no test statistics; pixel ranking within a class is unchanged
    inductive, scores = preds.normalized("inductive")
    assert inductive.shape == preds.anomaly_map.shape and scores.shape == (n,)
    assert 0 <= inductive.min() and inductive.max() <= 1


def test_inductive_and_original_resolution_modes_are_recorded(smoke_cfg, smoke_run, target_results, tmp_path):
    _, transductive = target_results
    cfg = smoke_cfg.replace(normalize="inductive", metric_resolution="original", aupro="off")
    summary = evaluate.test(cfg, "mini-target", out_dir=tmp_path, progress=False)
    written = json.loads((tmp_path / "summary.json").read_text())
    assert (written["normalize"], written["metric_resolution"], written["aupro"]) == ("inductive", "original", "off")
    assert written["pixel_aupro"] is None and summary["counts"]["pixel_aupro"] == 0
    # per-class monotone rescaling and bilinear resizing keep pixel AUROC close to the 518-style figure
    assert summary["pixel_auroc"] == pytest.approx(transductive["pixel_auroc"], abs=0.03)


def test_predict_scores_single_images_and_reports_unreadable_ones(smoke_cfg, smoke_run, smoke_world, tmp_path):
    from aaclip.checkpoint import load_model

    model, cfg = load_model(smoke_run.save_path, smoke_cfg)
    images = sorted((smoke_world / "mini-target").rglob("*.png"))
    image = next(p for p in images if "mask" not in str(p).lower())
    one = predict_images(model, cfg, [image], tmp_path / "one", object_name="hexagonal nut")
    assert len(one) == 1 and one[0]["error"] == "" and 0 <= one[0]["pred_score"] <= 1
    picture = Image.open(tmp_path / "one" / one[0]["overlay"])
    assert picture.size == (cfg.image_size, cfg.image_size) and picture.mode == "RGB"

    folder = tmp_path / "inputs"
    folder.mkdir()
    (folder / "a.png").write_bytes(image.read_bytes())
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    (folder / "c.png").write_bytes(image.read_bytes())
    rows = predict_images(model, cfg, [folder], tmp_path / "many")
    assert [r["image_path"].rsplit("/", 1)[-1] for r in rows] == ["a.png", "broken.png", "c.png"]
    broken = rows[1]
    assert "broken.png" in broken["error"] and broken["pred_score"] is None
    assert rows[0]["pred_score"] == pytest.approx(rows[2]["pred_score"])  # same image, same score
    with open(tmp_path / "many" / "scores.csv") as handle:
        written = list(csv.DictReader(handle))
    assert len(written) == 3 and "broken.png" in written[1]["error"]
    assert sorted(p.name for p in (tmp_path / "many" / "overlays").iterdir()) == ["a.png", "c.png"]


def test_overlay_uses_a_fixed_colour_scale():
    import matplotlib

    grey = np.full((8, 8, 3), 128, np.uint8)
    low = overlay(grey, np.zeros((4, 4)), alpha=1.0)
    high = overlay(grey, np.ones((4, 4)), alpha=1.0)
    jet = matplotlib.colormaps["jet"]
    assert np.allclose(low[0, 0] / 255, jet(0.0)[:3], atol=1 / 255)
    assert np.allclose(high[0, 0] / 255, jet(1.0)[:3], atol=1 / 255)
    # a map of constant 0.2 is coloured as 0.2, not stretched to the top of the scale
    assert np.allclose(overlay(grey, np.full((4, 4), 0.2), alpha=1.0)[0, 0] / 255, jet(0.2)[:3], atol=1 / 255)
    assert overlay(grey, np.zeros((4, 4)), alpha=0.0).tolist() == grey.tolist()


def test_denormalize_inverts_the_clip_normalisation():
    import torch

    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    pixels = torch.randint(0, 256, (3, 5, 5), dtype=torch.uint8)
    normalised = (pixels.float() / 255 - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    assert np.array_equal(denormalize(normalised, mean, std), pixels.permute(1, 2, 0).numpy())
