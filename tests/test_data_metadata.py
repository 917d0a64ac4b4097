"""book:protocol-datasets metadata: reading, atomic writing, and validation that reports every problem with file:line."""

import json

import pytest
from PIL import Image

from aaclip.data.metadata import MetadataError, read_metadata, validate_metadata, write_metadata
from aaclip.errors import AAClipError


def image(path, size=(8, 8), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size).save(path)
    return path


def write_lines(path, lines):
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


@pytest.fixture
def root(tmp_path):
    image(tmp_path / "good" / "a.png")
    image(tmp_path / "bad" / "b.png")
    image(tmp_path / "masks" / "b.png", mode="L")
    return tmp_path


def test_reads_reference_style_float_labels_as_ints(root):
    path = write_lines(
        root / "full-shot.jsonl",
        [
            {"image_path": "good/a.png", "label": 0.0, "class_name": "x"},
            "",  # blank lines are allowed
            {"image_path": "bad/b.png", "label": 1.0, "class_name": "x", "mask_path": "masks/b.png"},
        ],
    )
    records = validate_metadata(path)
    assert [r["label"] for r in records] == [0, 1]
    assert all(type(r["label"]) is int for r in records)
    assert "mask_path" not in records[0]


def test_write_then_read_round_trip_in_spec_key_order(root):
    records = [
        {"class_name": "x", "label": 0, "image_path": "good/a.png", "mask_path": ""},
        {"image_path": "bad/b.png", "label": 1, "class_name": "x", "mask_path": "masks/b.png"},
    ]
    path = write_metadata(root / "full-shot.jsonl", records)
    lines = path.read_text().splitlines()
    assert lines[0] == '{"image_path": "good/a.png", "label": 0, "class_name": "x"}'
    assert list(json.loads(lines[1])) == ["image_path", "label", "class_name", "mask_path"]
    assert read_metadata(path)[1]["mask_path"] == "masks/b.png"
    assert sorted(p.name for p in root.iterdir()) == ["bad", "full-shot.jsonl", "good", "masks"]  # no temp files


def test_every_problem_is_reported_with_file_and_line(root):
    image(root / "bad" / "c.png", size=(8, 8))
    image(root / "masks" / "c.png", size=(4, 8), mode="L")
    image(root / "bad" / "d.png")
    (root / "broken.png").write_bytes(b"not an image at all")
    path = write_lines(
        root / "full-shot.jsonl",
        [
            {"image_path": "good/a.png", "label": 0, "class_name": "x"},  # line 1: fine
            '{"image_path": "good/a.png", "label": 0',  # 2: not JSON
            {"image_path": "good/z.png", "class_name": "x"},  # 3: no label
            {"image_path": "good/a.png", "label": 2, "class_name": "x"},  # 4: bad label
            {"image_path": "missing.png", "label": 0, "class_name": "x"},  # 5: missing image
            {"image_path": "bad/b.png", "label": 1, "class_name": "x"},  # 6: anomalous without mask
            {"image_path": "bad/c.png", "label": 1, "class_name": "x", "mask_path": "masks/c.png"},  # 7: sizes
            {"image_path": "broken.png", "label": 0, "class_name": "x"},  # 8: unreadable
            {"image_path": "good/a.png", "label": 0, "class_name": "x"},  # 9: duplicate of line 1
            "[1, 2]",  # 10: not an object
            {"image_path": "bad/d.png", "label": 1, "class_name": "x", "mask_path": "masks/nope.png"},  # 11
        ],
    )
    with open(path, "ab") as handle:
        handle.write(b'{"image_path": "\xff.png", "label": 0, "class_name": "x"}\n')  # 12: not UTF-8
    with pytest.raises(MetadataError) as caught:
        validate_metadata(path)
    err = caught.value
    assert isinstance(err, AAClipError)
    by_line = {}
    for problem in err.problems:
        assert problem.startswith(f"{path}:")
        line = int(problem[len(str(path)) + 1 :].split(":")[0])
        by_line.setdefault(line, []).append(problem)
    assert sorted(by_line) == [2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]
    assert "not valid JSON" in by_line[2][0]
    assert "missing key 'label'" in by_line[3][0]
    assert "label must be 0 or 1, got 2" in by_line[4][0]
    assert "image not found" in by_line[5][0] and "missing.png" in by_line[5][0]
    assert "has no mask_path" in by_line[6][0]
    assert "4x8" in by_line[7][0] and "8x8" in by_line[7][0]
    assert "not a readable image" in by_line[8][0] and "broken.png" in by_line[8][0]
    assert "duplicate" in by_line[9][0] and f"{path}:1" in by_line[9][0]
    assert "not a JSON object" in by_line[10][0]
    assert "mask not found" in by_line[11][0] and "nope.png" in by_line[11][0]
    assert "not UTF-8" in by_line[12][0]
    assert str(err).startswith("11 problems in ")


def test_masks_optional_when_the_dataset_has_none(root):
    path = write_lines(root / "full-shot.jsonl", [{"image_path": "bad/b.png", "label": 1, "class_name": "x"}])
    assert validate_metadata(path, masks_required=False)[0]["label"] == 1
    with pytest.raises(MetadataError, match="has no mask_path"):
        validate_metadata(path, masks_required=True)


def test_paths_resolve_against_the_given_root(root, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("meta") / "full-shot.jsonl"
    write_lines(elsewhere, [{"image_path": "good/a.png", "label": 0, "class_name": "x"}])
    with pytest.raises(MetadataError, match="image not found"):
        validate_metadata(elsewhere)  # default root: the file's own folder
    assert len(validate_metadata(elsewhere, root)) == 1


def test_empty_or_missing_file_is_an_error(root):
    with pytest.raises(MetadataError, match="file not found"):
        validate_metadata(root / "nope.jsonl")
    with pytest.raises(MetadataError, match="no records"):
        validate_metadata(write_lines(root / "empty.jsonl", []))
