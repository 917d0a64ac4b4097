"""book:protocol-metrics metrics: equal to scikit-learn on tied inputs, exact and legacy AUPRO against plain
reference implementations and hand-computed cases, NaN for undefined metrics, the dataset
mean, and result files that are written atomically."""

import json
import math
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_auc_score

from aaclip.metrics import (
    METRIC_NAMES,
    MetricInputError,
    defect_type,
    evaluate_class,
    image_auroc_by_type,
    pixel_metrics,
    summarize,
)

REPO = Path(__file__).resolve().parents[1]


def random_class(seed, n_images=10, size=20, levels=6, dtype=np.float32, offset=0.0, n_normal=3):
    """Maps quantised to `levels` values (many ties inside and across labels), blob masks."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n_images, size, size), dtype=bool)
    for mask in masks[n_normal:]:
        for _ in range(rng.integers(1, 4)):
            y, x = rng.integers(0, size - 2, 2)
            h, w = rng.integers(1, size // 3, 2)
            mask[y:y + h, x:x + w] = True
    maps = rng.random(masks.shape) + 0.5 * masks * rng.random(masks.shape)
    if levels:
        maps = np.round(maps * levels) / levels
    maps = (maps + offset).astype(dtype)
    pred_score = np.round(maps.max(axis=(1, 2)) * 2, 1).astype(dtype)  # ties between images too
    gt_label = masks.any(axis=(1, 2)).astype(int)
    return pred_score, gt_label, maps, masks


def sklearn_f1_max(labels, scores):
    precision, recall, _ = precision_recall_curve(labels, scores)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = 2 * precision * recall / (precision + recall)
    return np.max(f1[np.isfinite(f1)])


# ------------------------------------------------------------------ plain reference AUPROs


def regions_of(masks):
    """(image index, region mask) of every 8-connected ground-truth region."""
    regions = []
    for i, mask in enumerate(masks):
        labelled, n = ndimage.label(mask, structure=np.ones((3, 3)))
        regions += [(i, labelled == k) for k in range(1, n + 1)]
    return regions


def reference_aupro_exact(maps, masks, limit=0.3):
    """book:protocol-metrics exact AUPRO, slowly: one pass over the pixels for every distinct score."""
    regions, normal = regions_of(masks), ~masks
    points = [(0.0, 0.0)]
    for threshold in np.unique(maps)[::-1]:
        above = maps >= threshold
        fpr = (above & normal).sum() / normal.sum()
        pro = np.mean([above[i][region].mean() for i, region in regions])
        points.append((fpr, pro))
    area = 0.0
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x0 >= limit:
            break
        if x1 > limit:  # interpolate the curve at the limit
            y1, x1 = y0 + (y1 - y0) * (limit - x0) / (x1 - x0), limit
        area += (x1 - x0) * (y0 + y1) / 2
    return area / limit


def reference_aupro_legacy(maps, masks, max_step=200, expect_fpr=0.3):
    """`cal_pro_score` as released by APRIL-GAN / AnomalyCLIP / AA-CLIP (skimage -> scipy label)."""
    min_th, max_th = maps.min(), maps.max()
    delta = (max_th - min_th) / max_step
    thresholds = np.arange(min_th, max_th, delta)
    assert len(thresholds) == max_step  # the released arange can give 201; these inputs do not
    regions = regions_of(masks)
    pros, fprs = [], []
    for th in thresholds:
        binary = maps > th
        pros.append(np.mean([binary[i][region].sum() / region.sum() for i, region in regions]))
        fprs.append(np.logical_and(~masks, binary).sum() / (~masks).sum())
    pros, fprs = np.array(pros), np.array(fprs)
    keep = fprs < expect_fpr
    fprs = fprs[keep]
    fprs = (fprs - fprs.min()) / (fprs.max() - fprs.min())
    return auc(fprs, pros[keep])


def one_image(scores, mask):
    return np.array([scores], dtype=np.float32), np.array([mask], dtype=bool)


# ------------------------------------------------------------------ scikit-learn equality


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("levels,dtype,offset", [(3, np.float32, 0.0), (12, np.float32, -0.6),
                                                 (None, np.float32, 0.0), (7, np.float64, -0.2)])
def test_auroc_ap_f1_equal_sklearn_with_ties(seed, levels, dtype, offset):
    """book:protocol-metrics: AUROC, AP and F1-max equal scikit-learn to 1e-6 on tied, negative and float64 scores."""
    pred_score, gt_label, maps, masks = random_class(seed, levels=levels, dtype=dtype, offset=offset)
    result = evaluate_class(pred_score, gt_label, maps, masks)
    for prefix, labels, scores in [("image", gt_label, pred_score), ("pixel", masks.ravel(), maps.ravel())]:
        assert result[f"{prefix}_auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-6)
        assert result[f"{prefix}_ap"] == pytest.approx(average_precision_score(labels, scores), abs=1e-6)
        assert result[f"{prefix}_f1_max"] == pytest.approx(sklearn_f1_max(labels, scores), abs=1e-6)


def test_f1_max_treats_tied_scores_as_one_threshold():
    """book:protocol-metrics F1-max: at score 0.8 one normal and one anomalous image tie; the best F1 is 0.8
    (threshold 0.8: precision 2/3, recall 1), not 1.0 as breaking the tie would give."""
    result = evaluate_class([0.9, 0.8, 0.8, 0.3], [1, 0, 1, 0])
    assert result["image_f1_max"] == pytest.approx(0.8)
    assert result["image_auroc"] == pytest.approx(roc_auc_score([1, 0, 1, 0], [0.9, 0.8, 0.8, 0.3]))
    assert result["image_auroc"] == pytest.approx(0.875)  # 3 of 4 pairs ordered, 1 tied


def test_torch_inputs_and_channel_dimension_match_numpy():
    """The dataset yields gt_mask as (N, 1, H, W) float tensors; results equal the numpy ones."""
    torch = pytest.importorskip("torch")
    pred_score, gt_label, maps, masks = random_class(3)
    expected = evaluate_class(pred_score, gt_label, maps, masks)
    got = evaluate_class(torch.from_numpy(pred_score), torch.from_numpy(gt_label),
                         torch.from_numpy(maps), torch.from_numpy(masks).float().unsqueeze(1))
    assert got == pytest.approx(expected, abs=1e-12)


# ------------------------------------------------------------------ undefined metrics


def test_one_label_only_gives_nan_not_zero():
    """book:protocol-metrics: all images anomalous (polyp sets) -> image metrics NaN, pixel metrics defined."""
    _, _, maps, masks = random_class(0, n_normal=0)
    assert masks.any(axis=(1, 2)).all()
    result = evaluate_class(maps.max(axis=(1, 2)), np.ones(len(maps)), maps, masks)
    assert all(math.isnan(result[m]) for m in ("image_auroc", "image_ap", "image_f1_max"))
    assert all(0 < result[m] < 1 for m in ("pixel_auroc", "pixel_ap", "pixel_f1_max", "pixel_aupro"))


def test_no_anomalous_pixel_gives_nan_pixel_metrics():
    """book:protocol-metrics: a class without defect pixels has no pixel AUROC/AP/F1/AUPRO."""
    _, _, maps, masks = random_class(1)
    result = evaluate_class(maps.max(axis=(1, 2)), [0, 1] * 5, maps, np.zeros_like(masks))
    assert not math.isnan(result["image_auroc"])
    assert all(math.isnan(result[m]) for m in ("pixel_auroc", "pixel_ap", "pixel_f1_max", "pixel_aupro"))


def test_aupro_off_and_missing_maps_give_nan():
    pred_score, gt_label, maps, masks = random_class(2)
    off = evaluate_class(pred_score, gt_label, maps, masks, aupro="off")
    exact = evaluate_class(pred_score, gt_label, maps, masks, aupro="exact")
    assert math.isnan(off["pixel_aupro"])
    assert {k: off[k] for k in METRIC_NAMES[:-1]} == {k: exact[k] for k in METRIC_NAMES[:-1]}
    image_only = evaluate_class(pred_score, gt_label)
    assert all(math.isnan(image_only[m]) for m in ("pixel_auroc", "pixel_ap", "pixel_f1_max", "pixel_aupro"))
    assert [k for k in exact if k in METRIC_NAMES] == list(METRIC_NAMES)
    assert {"image_threshold", "pixel_threshold"} <= set(exact)


def test_the_f1_max_threshold_is_where_f1_is_largest():
    """A score at or above the threshold counts as anomalous, and then F1 equals the F1-max."""
    from sklearn.metrics import f1_score

    pred_score, gt_label, maps, masks = random_class(4)
    result = evaluate_class(pred_score, gt_label, maps, masks)
    for scores, labels, prefix in ((pred_score, gt_label, "image"), (maps.ravel(), masks.ravel(), "pixel")):
        predicted = np.asarray(scores) >= result[f"{prefix}_threshold"]
        assert f1_score(np.asarray(labels).astype(bool), predicted) == pytest.approx(result[f"{prefix}_f1_max"], abs=1e-9)


# ------------------------------------------------------------------ exact AUPRO


def test_exact_aupro_one_region():
    """book:protocol-metrics exact AUPRO. Region of 2 pixels (0.95, 0.75), 10 normal pixels 0.9 .. 0.0:
    PRO is 0.5 on FPR [0, 0.2] and 1 on [0.2, 0.3]: area 0.2, / 0.3 = 2/3."""
    maps, masks = one_image([[0.95, 0.75, 0.9, 0.8], [0.7, 0.6, 0.5, 0.4], [0.3, 0.2, 0.1, 0.0]],
                            [[1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    assert pixel_metrics(maps, masks)["pixel_aupro"] == pytest.approx(2 / 3)


def test_exact_aupro_averages_regions_not_pixels():
    """book:protocol-metrics: PRO is the mean over regions. Region A (1 px, 0.95) and region B (4 px, two at
    0.85, two at 0.05); 20 normal pixels 0.9, 0.8, ..., 0.3 and 13 zeros (FPR steps of 0.05).
    PRO 0.5 on [0, 0.05], 0.75 on [0.05, 0.3]: (0.025 + 0.1875) / 0.3."""
    scores = np.zeros((5, 5))
    mask = np.zeros((5, 5))
    scores[0, 0], mask[0, 0] = 0.95, 1
    scores[3:, 3:], mask[3:, 3:] = [[0.85, 0.85], [0.05, 0.05]], 1
    normal_slots = np.flatnonzero(mask.ravel() == 0)
    scores.ravel()[normal_slots[:7]] = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3]
    maps, masks = one_image(scores, mask)
    assert pixel_metrics(maps, masks)["pixel_aupro"] == pytest.approx(0.2125 / 0.3)


def test_exact_aupro_uses_8_connectivity():
    """book:protocol-metrics: (0,0) touches (1,1) diagonally, so {(0,0), (1,1), (1,2)} is ONE region of 3 pixels
    and only (0,0) scores high: PRO = 1/3 up to FPR 0.3 (4-connectivity would give 1/2)."""
    scores = np.zeros((4, 4))
    mask = np.zeros((4, 4))
    mask[0, 0] = mask[1, 1] = mask[1, 2] = 1
    scores[0, 0], scores[1, 1], scores[1, 2] = 0.95, 0.05, 0.05
    normal_slots = np.flatnonzero(mask.ravel() == 0)
    scores.ravel()[normal_slots[:4]] = [0.9, 0.8, 0.7, 0.6]  # 13 normal pixels
    maps, masks = one_image(scores, mask)
    assert pixel_metrics(maps, masks)["pixel_aupro"] == pytest.approx(1 / 3)


def test_exact_aupro_counts_normal_pixels_of_defect_free_images():
    """book:protocol-metrics: FPR runs over all normal pixels of the class, those of defect-free images too.
    A defect image (region 0.95 and 0.75; 13 normal pixels 0.9 .. 0.0) and a clean image
    (two pixels at 0.99): N = 28; the curve stays at PRO 0 up to FPR 2/28 because of the
    clean image, then 0.5 up to 4/28, then 1 up to 0.3."""
    defect = [[0.95, 0.75, 0.9, 0.8, 0.7], [0.6, 0.5, 0.4, 0.3, 0.2], [0.1, 0.0, 0, 0, 0]]
    defect_mask = [[1, 1, 0, 0, 0], [0, 0, 0, 0, 0], [0, 0, 0, 0, 0]]
    clean = [[0.99, 0.99, 0, 0, 0], [0, 0, 0, 0, 0], [0, 0, 0, 0, 0]]
    maps = np.array([defect, clean], dtype=np.float32)
    masks = np.array([defect_mask, np.zeros((3, 5))], dtype=bool)
    n_normal = (~masks).sum()
    assert n_normal == 28
    # thresholds: 0.99 -> FPR 2/28, PRO 0; 0.95 -> PRO 0.5; 0.9, 0.8 -> FPR 4/28; 0.75 -> PRO 1;
    # 0.7 .. 0.4 -> FPR 8/28 (0.286); 0.3 -> 9/28 (0.321) crosses the limit at PRO 1.
    expected = (0.5 * (4 / 28 - 2 / 28) + 1.0 * (0.3 - 4 / 28)) / 0.3
    assert pixel_metrics(maps, masks)["pixel_aupro"] == pytest.approx(expected)
    assert pixel_metrics(maps[:1], masks[:1])["pixel_aupro"] > expected  # the clean image's false positives count


def test_exact_aupro_ties_between_region_and_normal_pixels():
    """book:protocol-metrics ties: a region pixel at 0.5 ties with 4 normal pixels, so the curve goes linearly
    from (0.2, 0.5) to (0.6, 1); interpolated at 0.3 it is 0.625: (0.1 + 0.05625) / 0.3."""
    maps, masks = one_image([[0.95, 0.5, 0.9, 0.8], [0.5, 0.5, 0.5, 0.5], [0.0, 0.0, 0.0, 0.0]],
                            [[1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    assert pixel_metrics(maps, masks)["pixel_aupro"] == pytest.approx(0.15625 / 0.3)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("levels", [5, 40, None])
def test_exact_aupro_equals_plain_implementation(seed, levels):
    """book:protocol-metrics exact AUPRO against a loop over every distinct threshold."""
    _, _, maps, masks = random_class(seed, n_images=6, size=14, levels=levels)
    expected = reference_aupro_exact(maps, masks)
    assert pixel_metrics(maps, masks)["pixel_aupro"] == pytest.approx(expected, abs=1e-9)


# ------------------------------------------------------------------ legacy AUPRO


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("levels", [7, None])
def test_legacy_aupro_equals_released_loop(seed, levels):
    """book:protocol-metrics legacy AUPRO: 200 thresholds between min and max, FPR < 0.3 rescaled, trapezoid."""
    _, _, maps, masks = random_class(seed, n_images=6, size=14, levels=levels)
    expected = reference_aupro_legacy(maps, masks)
    got = pixel_metrics(maps, masks, aupro="legacy")["pixel_aupro"]
    assert got == pytest.approx(expected, abs=1e-9)


def test_legacy_aupro_differs_from_exact_on_the_one_region_case():
    """book:protocol-metrics legacy on the one-region case (exact: 2/3). Kept points (FPR < 0.3): (0, 0.5),
    (0.1, 0.5), (0.2, 0.5) and (0.2, 1); FPR rescaled by 0.2, the area is 0.5: the jump to
    PRO 1 at the last kept FPR adds nothing."""
    maps, masks = one_image([[0.95, 0.75, 0.9, 0.8], [0.7, 0.6, 0.5, 0.4], [0.3, 0.2, 0.1, 0.0]],
                            [[1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    assert pixel_metrics(maps, masks, aupro="legacy")["pixel_aupro"] == pytest.approx(0.5)
    assert reference_aupro_legacy(maps, masks) == pytest.approx(0.5)


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize("change,message", [
    (lambda s, l, m, g: (s[:-1], l, m, g), "pred_score and gt_label"),
    (lambda s, l, m, g: (s, l, m, g[:, :-1]), "gt_mask has shape"),
    (lambda s, l, m, g: (s, l + 1, m, g), "gt_label must hold only 0 and 1"),
    (lambda s, l, m, g: (s, l, m, g * 0.5), r"gt_mask\[3\] must hold only 0 and 1 \(or booleans\), found \[0.5\]"),
    (lambda s, l, m, g: (s, l, np.where(g, np.nan, m), g), "anomaly_map contains NaN"),
    (lambda s, l, m, g: (s, l, np.where(g, m, np.inf), g), "anomaly_map contains NaN or infinite"),
    (lambda s, l, m, g: (np.full_like(s, np.nan), l, m, g), "pred_score contains NaN"),
])
def test_bad_input_names_the_problem(change, message):
    args = change(*random_class(0))
    with pytest.raises(MetricInputError, match=message):
        evaluate_class(*args)
    with pytest.raises(MetricInputError, match="aupro must be one of"):
        evaluate_class(*random_class(0), aupro="approximate")


def test_memory_stays_near_one_copy_of_the_scores():
    """Bounded memory: pixel metrics allocate one copy of the float32 scores plus small arrays
    per anomalous pixel. A float64 copy or an int64 sort index of all pixels (what sorting
    the flattened arrays takes) would alone be twice the maps."""
    rng = np.random.default_rng(0)
    maps = rng.random((100, 160, 160), dtype=np.float32)
    masks = np.zeros(maps.shape, dtype=bool)
    masks[::2, 40:68, 50:78] = True  # about 3% anomalous pixels, as in real defect maps
    tracemalloc.start()
    try:
        pixel_metrics(maps, masks, aupro="exact")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1.6 * maps.nbytes


# ------------------------------------------------------------------ dataset mean and files


def per_class_example():
    return {
        "bottle": dict.fromkeys(METRIC_NAMES, 0.9) | {"pixel_aupro": 0.8},
        "kvasir": dict.fromkeys(METRIC_NAMES, 0.5) | dict.fromkeys(["image_auroc", "image_ap", "image_f1_max"], math.nan),
        "cable": dict.fromkeys(METRIC_NAMES, 0.7),
    }


def test_summarize_skips_nan_and_counts_classes():
    """book:protocol-metrics: unweighted mean over classes, NaN left out (never averaged as 0), with counts."""
    summary = summarize(per_class_example())
    assert summary["n_classes"] == 3
    assert summary["means"]["image_auroc"] == pytest.approx(0.8)  # (0.9 + 0.7) / 2
    assert summary["counts"]["image_auroc"] == 2
    assert summary["means"]["pixel_auroc"] == pytest.approx(0.7)
    assert summary["means"]["pixel_aupro"] == pytest.approx(2 / 3)
    assert summary["counts"]["pixel_auroc"] == 3
    nothing = summarize({"a": dict.fromkeys(METRIC_NAMES, math.nan)})
    assert math.isnan(nothing["means"]["image_ap"]) and nothing["counts"]["image_ap"] == 0



def test_image_auroc_by_type_sets_each_type_against_its_own_classs_normals():
    """book:protocol-defect-types: a type's AUROC uses only the anomalies of that type, against the normal
    images of the same class, averaged over the classes that have the type; a class without normals adds nothing."""
    paths = ["nut/test/good/0.png", "nut/test/good/1.png", "nut/test/crack/2.png", "nut/test/hole/3.png",
             "tile/test/good/4.png", "tile/test/crack/5.png", "tile/test/crack/6.png", "pcb\\test\\hole\\7.png"]
    classes = ["nut", "nut", "nut", "nut", "tile", "tile", "tile", "pcb"]
    labels = [0, 0, 1, 1, 0, 1, 1, 1]
    scores = [0.2, 0.6, 0.9, 0.1, 0.5, 0.7, 0.3, 0.9]
    by_type = image_auroc_by_type(scores, labels, classes, paths)
    assert list(by_type) == ["crack", "hole"]  # normal images name no type
    # crack: nut 1.0 (0.9 above both normals), tile 0.5 (0.7 above, 0.3 below the one normal)
    assert by_type["crack"] == {"image_auroc": pytest.approx(0.75), "classes": 2, "images": 3}
    # hole: nut 0.0 (0.1 below both normals); pcb has no normal image, so only its count is kept
    assert by_type["hole"] == {"image_auroc": pytest.approx(0.0), "classes": 1, "images": 2}
    assert defect_type("pcb\\test\\hole\\7.png") == "hole"
    with pytest.raises(MetricInputError, match="image_path have 8, 8, 8 and 7"):
        image_auroc_by_type(scores, labels, classes, paths[:-1])


# ------------------------------------------------------------------ benchmark


def test_benchmark_script_writes_its_figures(tmp_path):
    out = tmp_path / "bench.json"
    subprocess.run([sys.executable, "-m", "benchmarks.metrics", "--n-maps", "4", "--size", "24",
                    "--repeats", "2", "--json", str(out)], check=True, capture_output=True, text=True, timeout=120, cwd=REPO)
    figures = json.loads(out.read_text())
    assert figures["n_pixels"] == 4 * 24 * 24 and figures["n_maps"] == 4 and figures["size"] == 24
    assert len(figures["aaclip_times"]) == 2 and len(figures["sklearn_times"]) == 1
    assert figures["aaclip_seconds"] > 0 and figures["sklearn_seconds"] > 0 and figures["speedup"] > 0
    assert figures["aaclip_peak_mib"] >= 0 and figures["sklearn_peak_mib"] > 0
    assert figures["max_abs_difference"] < 1e-9
