"""The benchmark scripts run at a tiny size and write well-formed results (issue 6).

No time is asserted (figures depend on the machine); what a user relies on is checked: every
script measures both sides of its comparison, the ratio is computed from the same run's
medians, targets say met or missed, results land atomically, `run_all.py` stages and writes the
book's table, and the book-build figures are read from the file `aaclip book` writes.
"""

from __future__ import annotations

import importlib
import json
import math
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from aaclip.errors import AAClipError

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "benchmarks"
TINY_FLAGS = ["--backbone", "aaclip-tiny", "--image-size", "64", "--repeats", "1", "--warmup", "1", "--device", "cpu"]
MACHINE_KEYS = {"date", "cpu_count", "cpu_model", "torch", "open_clip", "device", "device_name",
                "load_average_start", "load_average_end"}


@pytest.fixture
def bench(monkeypatch):
    """Import a benchmark module of the `benchmarks` package (from the checkout, as `python -m` runs it)."""
    monkeypatch.syspath_prepend(str(REPO))
    return lambda name: importlib.import_module(f"benchmarks.{name}")


@pytest.fixture
def TINY(tiny_backbone):
    """The tiny CLIP with random weights at 64 px, one repeat: seconds, not minutes."""
    return [*TINY_FLAGS, "--pretrained", str(tiny_backbone)]


def check_summary(entry: dict, repeats: int) -> None:
    assert entry["repeats"] == repeats == len(entry["seconds"])
    assert entry["median_s"] == statistics.median(entry["seconds"])
    assert entry["median_s"] > 0 and entry["items_per_s"] > 0 and entry["peak_mib"] >= 0


def test_inference_compares_plain_clip_with_the_full_aaclip_scoring(bench, tmp_path, TINY):
    out = tmp_path / "inference.json"
    returned = bench("inference").main([*TINY, "--batch-sizes", "1", "2", "--precisions", "fp32", "bf16", "--json", str(out)])
    written = json.loads(out.read_text())
    assert written["benchmark"] == "inference" and MACHINE_KEYS <= set(written["machine"])
    assert written["settings"]["aaclip_call"].startswith("aaclip.runs.inference.score_batch")
    rows = written["results"]
    assert [(r["precision"], r["batch_size"]) for r in rows] == [("fp32", 1), ("fp32", 2), ("bf16", 1), ("bf16", 2)]
    for row in rows:
        check_summary(row["plain"], 1)
        check_summary(row["aaclip"], 1)
        assert row["ratio"] == pytest.approx(row["aaclip"]["median_s"] / row["plain"]["median_s"])
        assert row["target_met"] == (row["ratio"] <= 1.15)
        assert row["aaclip"]["ms_per_item"] == pytest.approx(1000 * row["aaclip"]["median_s"] / row["batch_size"])
    (target,) = written["targets"]
    assert target["value"] == pytest.approx(max(r["ratio"] for r in rows), abs=1e-4)
    assert target["limit"] == 1.15 and target["met"] == (target["value"] <= 1.15)
    assert written["model"]["backbone"] == "aaclip-tiny" and returned["results"] == rows
    assert not list(tmp_path.glob("*.tmp"))  # written atomically


def test_training_times_the_library_step_frozen_and_with_backbone_gradients(bench, tmp_path, TINY):
    out = tmp_path / "training.json"
    bench("training").main([*TINY, "--batch-sizes", "2", "--steps", "2", "--json", str(out)])
    written = json.loads(out.read_text())
    (row,) = written["results"]
    check_summary(row["frozen"], 1)
    check_summary(row["backbone_grad"], 1)
    assert row["ratio"] == pytest.approx(row["frozen"]["median_s"] / row["backbone_grad"]["median_s"])
    assert written["targets"][0]["limit"] == 0.6
    # warm-up epoch + one timed epoch per configuration, 2 steps each, all through Trainer.run_epoch
    assert written["steps_run"] == 3 * 2 and written["losses_finite"]
    assert written["trainable_image_params"] == written["model"]["trainable_image"]
    assert written["backbone_params"] == written["model"]["frozen"] > written["vision_params"] > 0
    assert written["command"].startswith("python -m benchmarks.training") and "--json" not in written["command"]


def test_evaluation_times_the_metrics_against_scikit_learn(bench, tmp_path, TINY):
    out = tmp_path / "evaluation.json"
    bench("evaluation").main(["--n-maps", "4", "--size", "32", "--repeats", "2", "--pipeline", "skip", "--json", str(out)])
    written = json.loads(out.read_text())
    m = written["metrics"]
    assert m["n_pixels"] == 4 * 32 * 32
    assert len(m["aaclip_exact"]["seconds"]) == len(m["aaclip_no_aupro"]["seconds"]) == 2
    assert m["speedup_like_for_like"] == pytest.approx(m["sklearn"]["median_s"] / m["aaclip_no_aupro"]["median_s"])
    assert m["max_abs_difference"] < 1e-9  # the same three numbers as scikit-learn
    assert 0 <= m["values"]["aaclip"]["pixel_aupro"] <= 1
    assert written["pipeline"] == {"measured": False, "why": written["pipeline"]["why"]}


@pytest.mark.slow
def test_evaluation_times_the_test_pipeline_of_a_trained_run(bench, tmp_path, smoke_run, smoke_cfg):
    out = tmp_path / "evaluation.json"
    bench("evaluation").main(["--n-maps", "2", "--size", "16", "--repeats", "1", "--save-path", str(smoke_run.save_path),
                              "--data-root", smoke_cfg.runtime.data_root, "--json", str(out)])
    pipe = json.loads(out.read_text())["pipeline"]
    assert pipe["measured"] and pipe["source"] == "given run"
    assert [d["dataset"] for d in pipe["datasets"]] == list(smoke_cfg.eval.datasets)
    for d in pipe["datasets"]:
        assert d["n_images"] > 0 and d["seconds"] > 0
        assert d["ms_per_image"] == pytest.approx(1000 * d["seconds"] / d["n_images"])
        assert 0 <= d["pixel_auroc"] <= 1


def test_evaluation_names_a_save_path_without_a_run(bench, tmp_path, TINY):
    with pytest.raises(AAClipError, match=re.escape(str(tmp_path / "nothing"))):
        bench("evaluation").main(["--n-maps", "2", "--size", "16", "--save-path", str(tmp_path / "nothing"),
                                  "--json", str(tmp_path / "e.json")])
    assert not (tmp_path / "e.json").exists()


def test_book_build_reads_the_timings_of_aaclip_book(bench, tmp_path, TINY):
    book_build = bench("book_build")
    missing = book_build.read_timings(tmp_path / "timings.json")
    assert missing["built"] is False and "make book" in missing["why"]
    timings = tmp_path / "timings.json"  # the shape aaclip_book.build.build_book writes
    timings.write_text(json.dumps({"profile": "miniature", "parameters": {"profile": "miniature"},
                                   "notebooks": {"00_miniature": 12.5, "01_anomaly_unawareness": 30.0}, "total_seconds": 60.2}))
    read = book_build.read_timings(timings)
    assert read["built"] and read["notebooks"] == {"00_miniature": 12.5, "01_anomaly_unawareness": 30.0}
    assert read["notebooks_total_s"] == pytest.approx(42.5) and read["total_s"] == 60.2
    timings.write_text("{not json")
    with pytest.raises(AAClipError, match="timings.json"):
        book_build.read_timings(timings)


def test_run_all_stages_results_and_writes_the_table(bench, tmp_path, TINY):
    timings = REPO / "book" / "_build" / "timings.json"
    run = subprocess.run([sys.executable, "-m", "benchmarks.run_all", "--quick", "--only", "book_build", "--out", str(tmp_path)],
                         capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 0, run.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["book_build.json", "run.json", "table.md"]  # no staging left
    record = json.loads((tmp_path / "run.json").read_text())
    assert record["plan"] == "quick" and set(record["scripts"]) == {"book_build"}
    table = (tmp_path / "table.md").read_text()
    assert table.startswith("## Latest run") and "\n# " not in table  # the book page holds the only level-1 title
    assert ("Not built" in table) != timings.is_file()
    assert "GPU" in table and "not measured" in table

    import torch

    if not torch.cuda.is_available():  # a failing script: exit 2, message names it, previous results kept
        before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
        failed = subprocess.run([sys.executable, "-m", "benchmarks.run_all", "--only", "training", "--device", "cuda",
                                 "--out", str(tmp_path)], capture_output=True, text=True, cwd=REPO)
        assert failed.returncode == 2 and "benchmarks.training failed" in failed.stderr
        assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_table_shows_every_figure_and_target(bench, tmp_path, TINY):
    run_all = bench("run_all")
    bench("inference").main([*TINY, "--batch-sizes", "1", "--precisions", "fp32", "--json", str(tmp_path / "inference.json")])
    bench("evaluation").main(["--n-maps", "2", "--size", "16", "--repeats", "1", "--pipeline", "skip",
                              "--json", str(tmp_path / "evaluation.json")])
    results = run_all.load_results(tmp_path)
    results["book_build"] = {"results": {"built": True, "timings_file": "book/_build/timings.json", "built_at": "today",
                                         "profile": "miniature", "parameters": {}, "notebooks": {"00_miniature": 7.25},
                                         "notebooks_total_s": 7.25, "total_s": 9.0}}
    results["run"] = {"plan": "cpu", "device": "cpu", "total_s": 61.0, "load_average_before": [1.0, 1.0, 1.0]}
    table = run_all.table(results)
    row = results["inference"]["results"][0]
    assert f"{row['ratio']:.3f}x" in table and f"{row['plain']['ms_per_item']:,.1f}" in table
    assert ("| met |" in table) == results["inference"]["targets"][0]["met"]
    assert "| 00_miniature | 7.2 |" in table or "| 00_miniature | 7.3 |" in table
    assert "scikit-learn" in table and "Exact AUPRO on its own" in table
    assert "--plan full" in table and "--device cuda" in table
    assert not any(math.isnan(v) for v in [row["ratio"]])


def test_the_gpu_check_runs_at_a_tiny_size_on_cpu_and_the_table_shows_it(bench, tmp_path, TINY):
    """benchmarks/gpu_check.sh's code, on CPU: every figure it promises is there, and run_all's table shows it."""
    out = tmp_path / "gpu_check.json"
    bench("gpu_check").main(["--device", "cpu", "--backbone", "aaclip-tiny", "--pretrained", TINY[TINY.index("--pretrained") + 1],
                             "--image-size", "64", "--batch-sizes", "1", "2", "--compile", "off", "--repeats", "1",
                             "--warmup", "1", "--n-images", "6", "--json", str(out)])
    written = json.loads(out.read_text())
    rows = written["inference"]
    assert [(r["precision"], r["batch_size"]) for r in rows] == [("fp32", 1), ("fp32", 2), ("bf16", 1), ("bf16", 2)]
    assert all(r["items_per_s"] > 0 and r["peak_mib"] >= 0 for r in rows)
    assert [s["precision"] for s in written["stage2_step"]] == ["fp32", "bf16"]
    c = written["fp32_vs_bf16"]
    assert c["n_images"] == 6 and c["raw_map_max_abs_difference"] > 0  # bf16 does move the maps
    assert set(c["metric_differences"]) == set(c["metrics"]["fp32"]) - {"image_threshold", "pixel_threshold"}
    run_all = bench("run_all")
    table = run_all.table({"gpu_check": written})
    assert "### GPU check" in table and "fp32 against bf16" in table
    script = (REPO / "benchmarks" / "gpu_check.sh").read_text()
    assert "--device cuda" in script and "--batch-sizes 1 8 32" in script and "--compile off on" in script


@pytest.mark.slow
def test_the_probe_measures_what_the_frozen_features_tell_on_every_level(bench, smoke_world, tmp_path):
    """The ceiling figure of book:protocol-miniature-clip: a probe per level and on all levels, held-out aux
    classes and zero-shot mini-target, and its map's per-class pixel AUROC on both targets."""
    out = tmp_path / "probe.json"
    bench("probe").main(["--data-root", str(smoke_world), "--profile", "smoke", "--json", str(out)])
    written = json.loads(out.read_text())
    assert written["benchmark"] == "probe" and written["settings"]["levels"] == [2, 4, 6, 8]
    levels = written["results"]["levels"]
    assert set(levels) == {"2", "4", "6", "8", "all"}
    assert all(0 <= v[k] <= 1 for v in levels.values() for k in ("heldout_aux", "target"))
    maps = written["results"]["map_pixel_auroc"]
    assert set(maps["mini-target"]["per_class"]) == {"nut", "capsule", "bottle", "screw", "weave", "grain", "tile"}
    assert maps["mini-scan"]["per_class"].keys() == {"brain"}
    assert maps["mini-target"]["mean"] == pytest.approx(sum(maps["mini-target"]["per_class"].values()) / 7, abs=1e-3)
    table = bench("run_all").table({"probe": written})  # the appendix shows it
    assert "### The miniature's ceiling" in table and f"| all | {levels['all']['heldout_aux']:.3f} |" in table


@pytest.mark.slow
def test_heldout_aux_trains_without_the_heldout_classes_and_summarises_over_seeds(bench, smoke_world, tmp_path):
    """book:protocol-heldout-aux: a setting is compared on auxiliary classes its runs never trained on, with stage 2's
    milestone kept at the profile's share of the (shorter) fold schedule; no target dataset is touched."""
    out, work = tmp_path / "heldout.json", tmp_path / "work"
    bench("heldout_aux").main(["--profile", "smoke", "--data-root", str(smoke_world), "--json", str(out),
                               "--work-dir", str(work), "--folds", "ring,stripes", "--seeds", "111", "0",
                               "--candidate", "stage1.orth_weight=0.1", "--candidate", "stage1.orth_weight=1.0"])
    written = json.loads(out.read_text())
    trained_on = {json.loads(line)["class_name"] for line in (work / "data/fold0-train/full-shot.jsonl").open()}
    tested_on = {json.loads(line)["class_name"] for line in (work / "data/fold0-heldout/full-shot.jsonl").open()}
    assert tested_on == {"ring", "stripes"} and trained_on == {"plate", "pcb", "cookie", "mesh", "marble"}
    config = json.loads((work / "runs/fold0/candidate1-seed0/last.json").read_text())["config"]
    assert config["stage1"]["orth_weight"] == 1.0 and config["train"]["dataset"] == "fold0-train"
    assert config["stage2"]["milestones"] == [42]  # 54 of 8 x ceil(70 / 8) = 72 iterations -> of 8 x ceil(50 / 8) = 56
    for name, result in written["results"].items():
        assert [r["seed"] for r in result["runs"]] == [111, 0] and all(r["candidate"] == name for r in result["runs"])
        by_seed = [v["pixel_auroc"] for v in result["by_seed"].values()]
        assert result["mean"]["pixel_auroc"] == pytest.approx(statistics.fmean(by_seed))
        assert result["sd"]["pixel_auroc"] == pytest.approx(statistics.stdev(by_seed))
    assert written["results"]["stage1.orth_weight=0.1"]["runs"] != written["results"]["stage1.orth_weight=1.0"]["runs"]
    table = bench("run_all").table({"heldout_aux": written})
    assert "### A setting chosen on held-out mini-aux classes" in table and "| `stage1.orth_weight=1.0` |" in table


@pytest.mark.parametrize("flags, named", [
    (["--folds", "ring,gear"], "gear not a class of mini-aux"),
    (["--folds", "ring,plate,pcb,cookie,stripes,mesh,marble"], "nothing is left to train on"),
    (["--candidate", "stage1.orth_wieght=1.0"], "orth_wieght"),
    (["--candidate", "stage1.orth_weight"], "write KEY=VALUE"),
])
def test_heldout_aux_refuses_a_bad_fold_or_candidate_before_training(bench, smoke_world, tmp_path, flags, named):
    args = ["--profile", "smoke", "--data-root", str(smoke_world), "--json", str(tmp_path / "h.json"),
            "--work-dir", str(tmp_path / "work")]
    if "--candidate" not in flags:
        args += ["--candidate", "stage1.orth_weight=0.1"]
    with pytest.raises(AAClipError, match=named):
        bench("heldout_aux").main(args + flags)
    assert not (tmp_path / "work" / "runs").exists() and not (tmp_path / "h.json").exists()
