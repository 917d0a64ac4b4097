"""The book (aaclip_book): parameters reach the notebooks, bad ones fail early, failures keep the old book."""

import ast
import json
import re
import shutil

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from aaclip.cli import main
from aaclip_book import build as book
from aaclip_book.runtime import DEFAULT_SEEDS

NOTEBOOK_DIR = book.ROOT / "notebooks"
LOGIC = re.compile(r"^\s*(for|while|if)\b", re.M)


def read(name):
    return nbformat.read(str(NOTEBOOK_DIR / f"{name}.ipynb"), as_version=4)


def parameters_cell(nb):
    return next(cell for cell in nb.cells if cell.cell_type == "code")


def setup_cell(nb):
    return [cell for cell in nb.cells if cell.cell_type == "code"][1]


@pytest.mark.parametrize("name", book.NOTEBOOKS)
def test_every_notebook_is_committed_clean_with_the_shared_parameters_and_one_setup_call(name):
    raw = json.loads((NOTEBOOK_DIR / f"{name}.ipynb").read_text())["cells"]
    ids = [cell.get("id") for cell in raw]
    assert None not in ids and len(set(ids)) == len(ids), f"{name}: every cell needs its own id (nbformat 4.5)"
    nb = read(name)
    cells = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert all(not cell.outputs and cell.execution_count is None for cell in cells), f"{name}: commit without outputs"
    first = parameters_cell(nb)
    assert "parameters" in first.metadata.get("tags", []), f"{name}: first code cell must be tagged 'parameters'"
    assigned = {
        node.targets[0].id: ast.literal_eval(node.value)
        for node in ast.parse(first.source).body
        if isinstance(node, ast.Assign)
    }
    assert assigned == book.NOTEBOOK_PARAMETERS
    assert setup_cell(nb).source.strip().endswith("book = setup(profile, parameters, seeds)")


@pytest.mark.parametrize("name", book.NOTEBOOKS)
def test_no_notebook_cell_holds_logic(name):
    """Notebooks hold prose and calls: a loop or a branch belongs in aaclip_book."""
    for cell in read(name).cells:
        if cell.cell_type == "code":
            assert not LOGIC.search(cell.source), f"{name}: a cell holds a loop or branch:\n{cell.source}"


def test_parameters_are_checked_and_put_as_the_notebooks_take_them():
    cfg, injected = book.resolve_parameters("smoke", {"train.seed": "3", "seeds": "4,5"})
    assert cfg.train.seed == 3 and injected == {"profile": "smoke", "parameters": {"train.seed": 3}, "seeds": [4, 5]}
    _, default = book.resolve_parameters("smoke", {})
    assert default == {"profile": "smoke", "parameters": {}, "seeds": list(DEFAULT_SEEDS)}


def test_the_run_folder_follows_the_training_settings_only(smoke_world):
    from aaclip_book import setup

    base = {"runtime.data_root": str(smoke_world)}
    first = setup("smoke", base).cfg.runtime.save_path
    assert setup("smoke", {**base, "eval.normalize": "inductive"}).cfg.runtime.save_path == first
    assert setup("smoke", {**base, "train.seed": 3}).cfg.runtime.save_path != first  # a changed setting: another run
    assert setup("smoke", {**base, "runtime.save_path": "mine"}).cfg.runtime.save_path == "mine"


def test_setup_sets_the_profiles_threads_before_the_world_is_built(smoke_world, monkeypatch):
    """The thread choice holds for every step: the world's pretraining included."""
    import torch

    import aaclip_miniature

    seen = {}

    def world_for(cfg, progress=True):
        seen["threads"] = torch.get_num_threads()
        return None

    monkeypatch.setattr(aaclip_miniature, "world_for", world_for)
    torch.set_num_threads(2)
    try:
        from aaclip_book import setup

        setup("smoke", {"runtime.data_root": str(smoke_world)})
    finally:
        torch.set_num_threads(1)
    assert seen["threads"] == 1


def tiny_book(root, cells):
    """A copy of the book's sources whose only chapter is a small 00_miniature.ipynb made of `cells`."""
    root.mkdir(parents=True)
    for item in ("_config.yml", "_toc.yml", "package-lock.json"):
        shutil.copy2(book.ROOT / item, root / item)
    shutil.copytree(book.ROOT / "book", root / "book", ignore=shutil.ignore_patterns("_build"))
    (root / "notebooks").mkdir()
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(root / "notebooks" / "00_miniature.ipynb"))
    return root


def test_papermill_parameters_reach_the_notebook(tmp_path):
    (tmp_path / "nb").mkdir()
    head = [new_markdown_cell("# A chapter"), new_code_cell(parameters_cell(read("00_miniature")).source, metadata={"tags": ["parameters"]})]
    nb = new_notebook(cells=[*head, new_code_cell("print('seen', profile, parameters, seeds)")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(tmp_path / "nb" / "00_miniature.ipynb"))
    _, injected = book.resolve_parameters("smoke", {"train.seed": "3", "stage2.epochs": "2", "eval.datasets": "mini-scan"})
    book.execute_notebooks(["00_miniature"], tmp_path / "nb", tmp_path / "out", injected, cwd=book.ROOT, progress=False)
    executed = nbformat.read(str(tmp_path / "out" / "00_miniature.ipynb"), as_version=4)
    printed = "".join(o.get("text", "") for cell in executed.cells if cell.cell_type == "code" for o in cell.outputs)
    assert "seen smoke {'train.seed': 3, 'stage2.epochs': 2, 'eval.datasets': ['mini-scan']} [111, 0, 1]" in printed
    source = nbformat.read(str(tmp_path / "nb" / "00_miniature.ipynb"), as_version=4)
    assert all(not c.get("outputs") for c in source.cells), "the source notebook must stay clean"
    book.hide_parameter_cells(tmp_path / "out" / "00_miniature.ipynb")
    hidden = nbformat.read(str(tmp_path / "out" / "00_miniature.ipynb"), as_version=4)
    tagged = [c for c in hidden.cells if "remove-cell" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 2  # ours and papermill's injected parameters: the page shows neither


@pytest.mark.parametrize(
    "flags, named",
    [
        (["-p", "train.sed", "3"], "'train.sed'"),  # unknown name: named, with the valid names listed
        (["-p", "train.seed", "three"], "'train.seed' expects an integer"),
        (["-p", "model.adapter_weight", "heavy"], "'model.adapter_weight' expects a number"),
        (["-p", "stage2.epochs", "-1"], "stage2.epochs=-1: must be >= 0"),
        (["-p", "train.seed", "1", "-p", "train.seed", "2"], "'train.seed' given twice"),
        (["-p", "seeds", "x"], "'seeds' expects an integer"),
        (["--profile", "nonexistent"], "unknown profile 'nonexistent'"),
        (["--notebooks", "09"], "unknown notebook '09'"),
    ],
)
def test_bad_parameters_fail_clearly_before_anything_runs(tmp_path, capsys, flags, named):
    out = tmp_path / "out"
    assert main(["book", "--profile", "smoke", *flags, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert named in err and "Traceback" not in err
    assert not out.exists(), "nothing may be created when the parameters are wrong"


def test_a_failing_cell_is_named_and_the_previous_book_stays(tmp_path):
    root = tiny_book(tmp_path / "src", [
        new_markdown_cell("# Broken"),
        new_code_cell("x = 1"),
        new_code_cell("# the failing cell\ny = x / 0"),
        new_code_cell("print('never runs')"),
    ])
    out = tmp_path / "build"
    (out / "html").mkdir(parents=True)
    (out / "html" / "index.html").write_text("previous book")
    with pytest.raises(book.BookError) as failure:
        book.build_book("smoke", out=out, notebooks=["00"], root=root, progress=False)
    message = str(failure.value)
    assert "notebooks/00_miniature.ipynb, cell 3" in message  # counted in the source notebook, from 1
    assert "# the failing cell" in message and "ZeroDivisionError" in message
    assert (out / "html" / "index.html").read_text() == "previous book"
    assert not list(out.glob(".staging-*")), "the staging copy is moved aside, not left behind"
    assert (out / "last-failed" / "notebooks" / "00_miniature.ipynb").is_file()  # kept for inspection


@pytest.mark.slow
def test_a_build_replaces_the_book_only_when_sphinx_passes_with_warnings_as_errors(tmp_path):
    cells = [new_markdown_cell("# A chapter"), new_code_cell("print(6 * 7)")]
    root = tiny_book(tmp_path / "src", cells)
    out = tmp_path / "build"
    (out / "html").mkdir(parents=True)
    (out / "html" / "index.html").write_text("previous book")

    result = book.build_book("smoke", out=out, notebooks=["00"], root=root, progress=False)
    chapter = (out / "html" / "notebooks" / "00_miniature.html").read_text()
    assert "42" in chapter and (out / "html" / "_static" / "widgets" / "embed-amd.js").is_file()
    assert set(result.timings) == {"00_miniature"}
    assert json.loads((out / "timings.json").read_text())["notebooks"]["00_miniature"] == result.timings["00_miniature"]

    # a dangling cross-reference is only a Sphinx warning, and -W makes it fatal
    (root / "book" / "intro.md").write_text((root / "book" / "intro.md").read_text() + "\nSee {doc}`no_such_page`.\n")
    with pytest.raises(book.BookError, match="no_such_page"):
        book.build_book("smoke", out=out, notebooks=["00"], root=root, progress=False)
    assert (out / "html" / "notebooks" / "00_miniature.html").read_text() == chapter  # the previous book, intact


def _seed_rows(dataset: str, seeds, image_auroc, pixel_auroc) -> list[dict]:
    from aaclip.metrics import METRIC_NAMES

    return [{"dataset": dataset, "method": "AA-CLIP", "normalize": "transductive", "seed": seed, "class_name": "c",
             **{m: pixel_auroc[i] for m in METRIC_NAMES}, "image_auroc": image_auroc[i]} for i, seed in enumerate(seeds)]


def test_an_undefined_image_metric_stays_undefined_over_seeds_not_zero():
    import pandas as pd

    from aaclip_book import results

    rows = _seed_rows("Kvasir", [111, 0], [float("nan")] * 2, [0.8, 0.9]) + _seed_rows("MVTec", [111, 0], [0.7, 0.9], [0.8, 0.9])
    means = results.seed_means(pd.DataFrame(rows))
    stats = results.over_seeds(means).set_index("dataset")
    assert pd.isna(stats.loc["Kvasir", "image_auroc_mean"]) and pd.isna(stats.loc["Kvasir", "image_auroc_std"])
    assert stats.loc["MVTec", "image_auroc_mean"] == pytest.approx(0.8)
    table = results.seed_table(means)
    assert table.loc[("Kvasir", "AA-CLIP"), ("Image AUROC", "mean ± sd")] == results.UNDEFINED  # the row is kept
    assert table.loc[("Kvasir", "AA-CLIP"), ("Pixel AUROC", "mean ± sd")] == "85.0 ± 7.1"



def _predictions_csv(folder, rows):
    folder.mkdir(parents=True)
    lines = ["image_path,class_name,gt_label,pred_score"] + [",".join(map(str, row)) for row in rows]
    (folder / "predictions.csv").write_text("\n".join(lines) + "\n")


def test_defect_types_are_split_into_seen_and_unseen_by_the_training_set(tmp_path):
    """book:protocol-defect-types: chapter 4 reads each run's predictions.csv back, calls a type seen when the
    training set has anomalies of it, and its sentence averages over seeds, then types."""
    import types

    import pandas as pd

    from aaclip.config import Config
    from aaclip_book import results, runs

    (tmp_path / "MVTec").mkdir()
    train = [{"image_path": f"ring/test/{kind}/{i}.png", "label": 1, "class_name": "ring",
              "mask_path": f"ring/ground_truth/{kind}/{i}_mask.png"} for i, kind in enumerate(["scratch", "hole"])]
    (tmp_path / "MVTec" / "full-shot.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train))
    cfg = Config.load("miniature", {"runtime.data_root": str(tmp_path), "train.dataset": "MVTec"})
    frame = []
    for run, seed, method, crack_score in (("a", 111, "AA-CLIP", 0.9), ("b", 0, "AA-CLIP", 0.1), ("a", 111, "CLIP", 0.1)):
        _predictions_csv(runs.results_folder(tmp_path / run, "T", method, "transductive"), [
            ("nut/test/good/0.png", "nut", 0, 0.5), ("nut/test/scratch/1.png", "nut", 1, 0.8),
            ("nut/test/crack/2.png", "nut", 1, crack_score)])
        frame += [{"run": str(tmp_path / run), "seed": seed, "dataset": "T", "method": method, "normalize": mode,
                   "class_name": "nut"} for mode in ("transductive", "inductive")]
    found = results.defect_type_results(types.SimpleNamespace(cfg=cfg), pd.DataFrame(frame))
    assert len(found) == 6  # 3 runs x 2 types, the inductive rows left out
    table = results.defect_type_table(found)
    assert table.loc[("T", "crack"), "seen in training"] == "no" and table.loc[("T", "scratch"), "seen in training"] == "yes"
    assert table.loc[("T", "crack"), "AA-CLIP"] == "50.0 ± 70.7" and table.loc[("T", "crack"), "CLIP"] == 0.0
    numbers = results.defect_type_numbers(found, "T")
    assert numbers["types_seen_AACLIP"] == 100.0 and numbers["types_unseen_AACLIP"] == 50.0
    assert "100.0 over the defect types it was trained on and 50.0 over those it never saw (crack)" in numbers["types_summary"]
    unnamed = found.assign(seen=None)  # a training layout with one anomaly folder (VisA) names no types
    assert "names no defect types" in results.defect_type_numbers(unnamed, "T")["types_summary"]


def test_one_seed_marks_no_ablation_effect_and_gives_no_verdict():
    import pandas as pd

    from aaclip_book.ablations import Ablation, effect_table, findings

    chosen = [Ablation("reference", "reference", {}), Ablation("levels", "last level only", {"model.levels": [4]},
                                                               paper="lower")]

    def table(seeds, ref, variant):
        return pd.DataFrame([{"group": a.group, "variant": a.name, "seed": s, "image_auroc": v[i],
                              "pixel_auroc": v[i], "pixel_aupro": v[i]}
                             for a, v in zip(chosen, (ref, variant)) for i, s in enumerate(seeds)])

    one = effect_table(table([111], [0.8], [0.6]), chosen)
    assert one.loc[("levels", "last level only"), "Δ pixel_auroc"] == "-20.0"  # no noise estimate: no mark
    assert "no noise estimate" in one.loc[("levels", "last level only"), "paper"]
    three = effect_table(table([111, 0, 1], [0.80, 0.81, 0.79], [0.60, 0.61, 0.59]), chosen)
    assert three.loc[("levels", "last level only"), "Δ pixel_auroc"] == "-20.0 *"
    assert three.loc[("levels", "last level only"), "paper"].endswith("reproduced")
    assert not three.loc[("levels", "last level only"), "paper"].endswith("not reproduced")
    said = findings(table([111, 0, 1], [0.80, 0.81, 0.79], [0.60, 0.61, 0.59]), chosen)  # what the prose glues
    assert (said["effects"], said["reproduced"], said["not_reproduced"]) == ("last level only", "last level only", "none")
    assert findings(table([111], [0.8], [0.6]), chosen)["effects"] == "none"


def test_direction_agreement_tells_a_shared_abnormal_direction_from_one_per_class(smoke_cfg, monkeypatch):
    """Chapter 2's direction table: classes whose abnormal anchor moves the same way from the normal
    one agree at 1; classes that each move their own orthogonal way agree at 0 (seen and unseen alike)."""
    import torch

    import aaclip.runs.inference as inference
    from aaclip_book import training, unawareness

    def anchors_for(model, method, names, precision="fp32"):
        normal = torch.nn.functional.normalize(torch.ones(len(names), 16), dim=-1)
        if method is inference.BASELINE:  # one shared direction
            step = torch.zeros(len(names), 16)
            step[:, 0] = 1.0
        else:  # one direction per class, orthogonal to the others (and to the shared one)
            step = torch.eye(16)[1 : 1 + len(names)] * (1 + torch.arange(len(names))[:, None])
        return torch.stack([normal, normal + step], dim=-1)  # (C, D, 2)

    monkeypatch.setattr(inference, "anchors_for", anchors_for)
    table = unawareness.direction_agreement(None, smoke_cfg, training.roles(smoke_cfg))
    assert list(table.index) == ["seen x seen", "seen x unseen", "unseen x unseen"]
    assert table["CLIP"].tolist() == pytest.approx([1.0, 1.0, 1.0])
    assert table.loc[["seen x seen", "unseen x unseen"], "AA-CLIP"].tolist() == pytest.approx([0.0, 0.0])
    numbers = training.direction_numbers(table)
    assert numbers["dir_seen_unseen_before"] == pytest.approx(1.0) and "dir_seen_seen_after" in numbers
