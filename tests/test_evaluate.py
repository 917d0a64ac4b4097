"""Evaluation (book:method-scoring, book:protocol-metrics): result files, normalisations, saved
predictions, single-image predict, overlays."""

import csv
import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from aaclip.data.dataset import load_dataset
from aaclip.metrics import METRIC_NAMES, summarize
from aaclip.runs.checkpoint import load_run
from aaclip.runs.evaluate import TestResult, evaluate, load_predictions, write_results
from aaclip.runs.inference import Method, normalized, predict_images
from aaclip.viz import denormalize, overlay


@pytest.fixture(scope="module")
def trained(smoke_run):
    model, run_cfg = load_run(smoke_run.save_path)
    return model, run_cfg


def target(model, cfg, name="mini-target"):
    b = model.backbone
    return load_dataset(cfg.runtime.data_root, name, b.image_size, b.mean, b.std)


@pytest.fixture(scope="module")
def target_results(trained, smoke_run, tmp_path_factory):
    model, cfg = trained
    out = tmp_path_factory.mktemp("results")
    result = evaluate(model, target(model, cfg), Method.of_run(cfg), cfg.eval, out_dir=out, save_predictions=True,
                      keep_predictions=True, checkpoint=str(smoke_run.checkpoint), progress=False)
    return out, result


@pytest.mark.slow
def test_summary_json_holds_the_dataset_means_and_how_they_were_made(target_results, smoke_run):
    out, result = target_results
    written = json.loads((out / "summary.json").read_text())
    with open(out / "per_class.csv") as handle:
        rows = {r["class_name"]: r for r in csv.DictReader(handle)}
    classes = [c for c in rows if c != "mean"]
    assert len(classes) == written["n_classes"] == 7
    for metric in METRIC_NAMES:
        values = [float(rows[c][metric]) for c in classes if not math.isnan(float(rows[c][metric]))]
        assert written[metric] == pytest.approx(sum(values) / len(values)), metric
        assert result.means[metric] == pytest.approx(written[metric])
    assert written["normalize"] == "transductive" and written["baseline"] is False and written["method"] == "AA-CLIP"
    assert written["checkpoint"] == str(smoke_run.checkpoint)
    assert written["dataset"] == "mini-target" and written["ms_per_image"] > 0
    assert (out / "summary.md").is_file()


@pytest.mark.slow
def test_saved_predictions_reload_for_the_explorer(target_results, smoke_cfg):
    out, _ = target_results
    preds, index = load_predictions(out / "predictions.npz")
    with np.load(out / "predictions.npz", allow_pickle=False) as data:  # plain arrays, no pickles
        assert data["level_grids"].dtype == np.float32 and "anomaly_map" not in data.files  # maps are rebuilt
    n = len(preds)
    evaluated = target_results[1].predictions  # the rebuilt maps are the evaluated ones
    np.testing.assert_allclose(preds.raw_map, evaluated.raw_map, atol=1e-6)
    np.testing.assert_allclose(preds.anomaly_map, evaluated.anomaly_map, atol=1e-6)
    size = smoke_cfg.model.image_size
    assert preds.anomaly_map.shape == preds.gt_mask.shape == (n, size, size)
    assert len(set(preds.class_name)) == 7 and all(p.endswith(".png") for p in preds.image_path)
    assert (index["dataset"], index["method"], index["domain"], index["normalize"]) == (
        "mini-target", "AA-CLIP", "industrial", "transductive")
    # transductive maps are per-class min-max normalised: each class spans [0, 1]
    for name in set(preds.class_name):
        maps = preds.of_class(name).anomaly_map
        assert maps.min() == pytest.approx(0, abs=1e-3) and maps.max() == pytest.approx(1, abs=1e-3)
    # the inductive mode needs no test statistics
    inductive = normalized(preds, "inductive", index["domain"], index["n_levels"])
    reloaded, _ = load_predictions(out / "predictions.npz", normalize="inductive")
    np.testing.assert_allclose(reloaded.anomaly_map, inductive.anomaly_map, atol=1e-6)
    grids_only, _ = load_predictions(out / "predictions.npz", maps=False)
    assert grids_only.anomaly_map is None and grids_only.level_grids.shape[:2] == (n, index["n_levels"])
    assert inductive.anomaly_map.shape == preds.anomaly_map.shape and inductive.pred_score.shape == (n,)
    assert 0 <= inductive.anomaly_map.min() and inductive.anomaly_map.max() <= 1


@pytest.mark.slow
def test_inductive_and_original_resolution_modes_are_recorded(trained, target_results, tmp_path):
    model, cfg = trained
    _, transductive = target_results
    eval_cfg = replace(cfg.eval, normalize="inductive", metric_resolution="original", aupro="off")
    result = evaluate(model, target(model, cfg), Method.of_run(cfg), eval_cfg, out_dir=tmp_path, progress=False)
    written = json.loads((tmp_path / "summary.json").read_text())
    assert (written["normalize"], written["metric_resolution"], written["aupro"]) == ("inductive", "original", "off")
    assert written["pixel_aupro"] is None and result.counts["pixel_aupro"] == 0
    # per-class monotone rescaling and bilinear resizing keep pixel AUROC close to the 518-style figure
    assert result.means["pixel_auroc"] == pytest.approx(transductive.means["pixel_auroc"], abs=0.03)


@pytest.mark.slow
def test_predict_scores_single_images_and_reports_unreadable_ones(trained, smoke_world, tmp_path):
    model, cfg = trained
    method = Method.of_run(cfg)
    images = sorted((smoke_world / "mini-target").rglob("*.png"))
    image = next(p for p in images if "mask" not in str(p).lower())
    one = predict_images(model, method, [image], tmp_path / "one", object_name="hexagonal nut")
    assert len(one) == 1 and one[0]["error"] == "" and 0 <= one[0]["pred_score"] <= 1
    picture = Image.open(tmp_path / "one" / one[0]["overlay"])
    original = Image.open(image).size  # the overlay is drawn at the image's own size, plus its colour bar and score
    assert picture.size[0] > original[0] and picture.size[1] > original[1] and picture.mode == "RGB"

    folder = tmp_path / "inputs"
    folder.mkdir()
    (folder / "a.png").write_bytes(image.read_bytes())
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    (folder / "c.png").write_bytes(image.read_bytes())
    rows = predict_images(model, method, [folder], tmp_path / "many")
    assert [r["image_path"].rsplit("/", 1)[-1] for r in rows] == ["a.png", "broken.png", "c.png"]
    broken = rows[1]
    assert "broken.png" in broken["error"] and broken["pred_score"] is None
    assert rows[0]["pred_score"] == pytest.approx(rows[2]["pred_score"])  # same image, same score
    with open(tmp_path / "many" / "scores.csv") as handle:
        written = list(csv.DictReader(handle))
    assert len(written) == 3 and "broken.png" in written[1]["error"]
    assert sorted(p.name for p in (tmp_path / "many" / "overlays").iterdir()) == ["a.png", "c.png"]


def per_class_example():
    return {
        "bottle": dict.fromkeys(METRIC_NAMES, 0.9) | {"pixel_aupro": 0.8},
        "kvasir": dict.fromkeys(METRIC_NAMES, 0.5) | dict.fromkeys(["image_auroc", "image_ap", "image_f1_max"], math.nan),
        "cable": dict.fromkeys(METRIC_NAMES, 0.7),
    }


def a_result(per_class, aupro="exact") -> TestResult:
    summary = summarize(per_class)
    return TestResult(dataset="MVTec", method="AA-CLIP", normalize="transductive", aupro=aupro, metric_resolution="input",
                      per_class=per_class, means=summary["means"], counts=summary["counts"], n_images=10, seconds=1.0,
                      device="cpu")


def test_write_results_files_parse_back(tmp_path):
    per_class = per_class_example()
    paths = write_results(tmp_path / "out", a_result(per_class))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["per_class.csv", "predictions.csv", "summary.json", "summary.md"]
    assert all(p.exists() for p in paths.values())

    table = pd.read_csv(paths["per_class.csv"], index_col="class_name")
    assert list(table.index) == ["bottle", "kvasir", "cable", "mean"]
    assert list(table.columns) == list(METRIC_NAMES)
    assert math.isnan(table.loc["kvasir", "image_auroc"])
    assert table.loc["mean", "image_auroc"] == pytest.approx(0.8)
    assert table.loc["bottle", "pixel_aupro"] == 0.8

    document = json.loads(paths["summary.json"].read_text())
    assert document["image_auroc"] == pytest.approx(0.8) and document["pixel_auroc"] == pytest.approx(0.7)
    assert document["counts"]["image_auroc"] == 2 and document["n_classes"] == 3
    assert document["per_class"]["kvasir"]["image_auroc"] is None
    assert document["dataset"] == "MVTec" and document["aupro"] == "exact" and document["ms_per_image"] == 100.0

    markdown = paths["summary.md"].read_text()
    assert "| kvasir | – | – | – | 50.0 | 50.0 | 50.0 | 50.0 |" in markdown
    assert "| **mean** | **80.0** |" in markdown
    assert "| classes in mean | 2/3 | 2/3 | 2/3 | 3/3 | 3/3 | 3/3 | 3/3 |" in markdown
    assert "AUPRO (exact" in markdown


def test_legacy_aupro_is_labelled_in_results(tmp_path):
    """book:protocol-aupro: legacy AUPRO is labelled as legacy wherever shown."""
    paths = write_results(tmp_path, a_result(per_class_example(), aupro="legacy"))
    assert "AUPRO (legacy)" in paths["summary.md"].read_text()
    assert json.loads(paths["summary.json"].read_text())["aupro"] == "legacy"


def test_failed_write_keeps_previous_results(tmp_path, monkeypatch):
    """A crash half-way through writing leaves the previous files whole and no temporaries."""
    per_class = per_class_example()
    write_results(tmp_path, a_result(per_class))
    before = {p.name: p.read_text() for p in tmp_path.iterdir()}

    real_write_text = Path.write_text

    def crash_half_way(self, text, *args, **kwargs):
        real_write_text(self, text[: len(text) // 2], *args, **kwargs)
        raise OSError("disk full")

    monkeypatch.setattr(Path, "write_text", crash_half_way)
    changed = {name: dict.fromkeys(METRIC_NAMES, 0.1) for name in per_class}
    with pytest.raises(OSError, match="disk full"):
        write_results(tmp_path, a_result(changed))
    monkeypatch.undo()
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == before


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
