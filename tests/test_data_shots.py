"""k-shot subsets (book:protocol-datasets): k per class, half normal half anomalous, seeded, recorded in a sidecar."""

import hashlib
import io
import json

import pytest
from PIL import Image

from aaclip.cli import main
from aaclip.data.converters import prepare_dataset
from aaclip.data.metadata import count_labels, read_metadata
from aaclip.data.shots import make_shots, sample_shots, write_shots
from aaclip.errors import AAClipError


def records(classes=("a", "b", "c"), normal=40, anomalous=35):
    return [
        {"image_path": f"{c}/{kind}/{i:03d}.png", "label": label, "class_name": c}
        for c in classes
        for kind, label, n in (("good", 0, normal), ("bad", 1, anomalous))
        for i in range(n)
    ]


def test_balanced_per_class_and_reproducible():
    rows = records()
    for k in (2, 16, 64):
        chosen = sample_shots(rows, k, seed=7)
        assert count_labels(chosen) == {c: (k // 2, k // 2) for c in "abc"}
        assert len({r["image_path"] for r in chosen}) == 3 * k
        assert chosen == sample_shots(rows, k, seed=7)
    assert sample_shots(rows, 16, seed=7) != sample_shots(rows, 16, seed=8)


def test_draw_ignores_line_order_and_is_nested_across_k():
    rows = records()
    shuffled = rows[::-1]
    assert sample_shots(rows, 16, seed=3) == sample_shots(shuffled, 16, seed=3)
    paths = {k: {r["image_path"] for r in sample_shots(rows, k, seed=3)} for k in (2, 16, 64)}
    assert paths[2] < paths[16] < paths[64]


def test_too_few_images_names_every_short_class():
    rows = records(classes=("a",), normal=40, anomalous=35) + records(classes=("b",), normal=5, anomalous=40)
    with pytest.raises(AAClipError) as err:
        sample_shots(rows, 80, seed=0)
    text = str(err.value)
    assert "class 'a' has 35 anomalous image(s), 80-shot needs 40" in text
    assert "class 'b' has 5 normal image(s), 80-shot needs 40" in text
    assert "class 'a' has 40 normal" not in text
    with pytest.raises(AAClipError, match="even k"):
        sample_shots(rows, 3, seed=0)


@pytest.fixture
def prepared(tmp_path):
    """A user's folder dataset 'parts' under tmp_path/data with 2 classes of 10 normal + 9 anomalous."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, "PNG")
    root = tmp_path / "data" / "parts"
    for cls in ("gear", "nut"):
        for kind, n in (("good", 10), ("dent", 9)):
            (root / cls / "test" / kind).mkdir(parents=True)
            for i in range(n):
                (root / cls / "test" / kind / f"{i}.png").write_bytes(buffer.getvalue())
    prepare_dataset("folder", root)
    return root


def test_cli_writes_each_k_with_a_sidecar(prepared, capsys):
    data_root = prepared.parent
    assert main(["shots", "parts", "--k", "2", "16", "--seed", "5", "--data-root", str(data_root)]) == 0
    assert "16-shot.jsonl" in capsys.readouterr().out
    source_hash = hashlib.sha256((prepared / "full-shot.jsonl").read_bytes()).hexdigest()
    for k in (2, 16):
        chosen = read_metadata(prepared / f"{k}-shot.jsonl")
        assert count_labels(chosen) == {"gear": (k // 2, k // 2), "nut": (k // 2, k // 2)}
        sidecar = json.loads((prepared / f"{k}-shot.json").read_text())
        assert (sidecar["k"], sidecar["seed"], sidecar["source"]) == (k, 5, "full-shot.jsonl")
        assert sidecar["source_sha256"] == source_hash
        assert sidecar["counts"] == {"gear": [k // 2, k // 2], "nut": [k // 2, k // 2]}
    first = (prepared / "16-shot.jsonl").read_bytes()
    write_shots(prepared / "full-shot.jsonl", [16], seed=5, masks_required=False)
    assert (prepared / "16-shot.jsonl").read_bytes() == first


def test_nothing_written_when_one_k_cannot_be_drawn(prepared, capsys):
    assert main(["shots", "parts", "--k", "2", "20", "--data-root", str(prepared.parent)]) == 2
    assert "class 'gear' has 9 anomalous image(s), 20-shot needs 10" in capsys.readouterr().err
    assert sorted(p.name for p in prepared.glob("*-shot.*")) == ["full-shot.jsonl"]


def test_source_is_validated_first(prepared):
    next((prepared / "nut" / "test" / "good").iterdir()).unlink()
    with pytest.raises(AAClipError, match="image not found"):
        write_shots(prepared / "full-shot.jsonl", [2], seed=0, masks_required=False)
    with pytest.raises(AAClipError, match="MVTec/full-shot.jsonl not found: run 'aaclip prepare MVTec"):
        make_shots(prepared.parent, "MVTec", [2], seed=0)
