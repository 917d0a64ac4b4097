"""Converters (book:protocol-datasets): fake trees in every original layout, named exactly as the reference file lists.

Each tree holds tiny generated images at the reference paths; the converter must give back the
reference rows (as sets, labels as ints), compare counts with the expected split, and fail
clearly, naming the path, on broken trees, without writing anything.
"""

import csv
import functools
import io
import json
import warnings
from pathlib import Path

import pytest
from PIL import Image

from aaclip.cli import main
from aaclip.data.converters import CountMismatchWarning, LayoutError, prepare_dataset
from aaclip.data.dataset import load_dataset
from aaclip.data.metadata import read_metadata, validate_metadata
from aaclip.data.registry import DATASETS, get_dataset
from aaclip.errors import AAClipError

REFERENCE = Path(__file__).resolve().parent / "reference-metadata"  # a copy of ../shared/reference-metadata (Apache-2.0, see its LICENSE)
FORMATS = {".png": "PNG", ".jpg": "JPEG", ".bmp": "BMP"}


@functools.cache
def tiny_image(suffix: str, size=(8, 8)) -> bytes:
    """One small encoded image per format; the trees reuse its bytes for speed."""
    buffer = io.BytesIO()
    Image.new("RGB", size, (120, 60, 30)).save(buffer, FORMATS[suffix.lower()])
    return buffer.getvalue()


def reference_rows(name: str) -> list[dict]:
    path = REFERENCE / get_dataset(name).folder / "full-shot.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_files(root: Path, rel_paths) -> None:
    made = set()
    for rel in rel_paths:
        path = root / rel
        if path.parent not in made:
            path.parent.mkdir(parents=True, exist_ok=True)
            made.add(path.parent)
        path.write_bytes(tiny_image(path.suffix))


def build_tree(root: Path, name: str, rows: list[dict]) -> Path:
    """The original layout of dataset `name` holding exactly `rows` (VisA: plus train rows in its csv)."""
    write_files(root, [r[key] for r in rows for key in ("image_path", "mask_path") if r.get(key)])
    if get_dataset(name).layout == "visa":
        train = [(r["class_name"], f"{r['class_name']}/Data/Images/Normal/train_{i}.JPG") for i, r in enumerate(rows)]
        train = train[::100]  # some train rows, which the converter must leave out
        write_files(root, [path for _, path in train])
        write_visa_csv(root, [(c, "train", "normal", p, "") for c, p in train] + [visa_csv_row(r) for r in rows])
    return root


def visa_csv_row(row: dict) -> tuple:
    label = "anomaly" if int(row["label"]) else "normal"
    return (row["class_name"], "test", label, row["image_path"], row.get("mask_path", ""))


def write_visa_csv(root: Path, rows) -> Path:
    path = root / "split_csv" / "1cls.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["object", "split", "label", "image", "mask"])
        writer.writerows(rows)
    return path


def as_set(rows: list[dict], class_name: str | None = None) -> set:
    """Rows as comparable tuples; `class_name` replaces the reference's own name for one-class sets."""
    return {(r["image_path"], int(r["label"]), r.get("mask_path") or None, class_name or r["class_name"]) for r in rows}


def expected_set(name: str, rows: list[dict]) -> set:
    info = get_dataset(name)
    return as_set(rows, info.classes[0] if len(info.classes) == 1 else None)


@pytest.mark.parametrize("name", [n for n in DATASETS if n != "MVTec"])
def test_converter_reproduces_the_reference_split(tmp_path, name):
    rows = reference_rows(name)
    root = build_tree(tmp_path / name, name, rows)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CountMismatchWarning)  # the counts must match the registry
        result = prepare_dataset(name, root)
    assert result.mismatches == []
    assert result.counts == DATASETS[name].expected
    assert result.path == root / "full-shot.jsonl"
    assert as_set(read_metadata(result.path)) == expected_set(name, rows)


def test_prepare_cli_on_an_mvtec_tree(tmp_path, capsys):
    rows = reference_rows("MVTec")
    root = build_tree(tmp_path / "MVTec", "MVTec", rows)
    assert main(["prepare", "mvtec-ad", "--root", str(root)]) == 0
    out = capsys.readouterr()
    assert "15 classes, 467 normal / 1258 anomalous" in out.out and "warning" not in out.err
    assert as_set(read_metadata(root / "full-shot.jsonl")) == as_set(rows)


def test_count_mismatch_warns_naming_the_class_and_strict_fails_without_writing(tmp_path, capsys):
    root = build_tree(tmp_path / "MPDD", "MPDD", reference_rows("MPDD"))
    (root / "connector" / "test" / "good" / "000.png").unlink()
    with pytest.warns(CountMismatchWarning, match="'connector': 29 normal / 14 anomalous, expected 30 / 14"):
        result = prepare_dataset("mpdd", root)
    assert result.path.is_file()
    result.path.unlink()

    assert main(["prepare", "MPDD", "--root", str(root), "--strict"]) == 2
    err = capsys.readouterr().err
    assert "class 'connector'" in err and "Traceback" not in err
    assert not (root / "full-shot.jsonl").exists()
    assert main(["prepare", "MPDD", "--root", str(root)]) == 0
    assert "warning: class 'connector'" in capsys.readouterr().err


def test_extra_folder_is_named_and_skipped(tmp_path):
    root = build_tree(tmp_path / "BTAD", "BTAD", reference_rows("BTAD"))
    write_files(root, ["04/test/ok/000.png"])
    with pytest.warns(CountMismatchWarning, match="04 is not a BTAD class"):
        result = prepare_dataset("btad", root)
    assert set(result.counts) == {"01", "02", "03"}


def test_out_elsewhere_writes_absolute_paths(tmp_path):
    rows = reference_rows("CVC-300")
    root = build_tree(tmp_path / "tree", "CVC-300", rows)
    result = prepare_dataset("cvc-300", root, out=tmp_path / "meta")
    assert result.path == tmp_path / "meta" / "full-shot.jsonl"
    assert not (root / "full-shot.jsonl").exists()
    records = validate_metadata(result.path)
    assert all(Path(r["image_path"]).is_absolute() for r in records)
    assert len(records) == 60


def broken(tmp_path, name, rows, damage):
    """Build a tree from `rows`, apply `damage`, and return the LayoutError text (nothing written)."""
    root = build_tree(tmp_path / name, name, rows)
    damage(root)
    with pytest.raises(LayoutError) as err:
        prepare_dataset(name, root)
    assert not (root / "full-shot.jsonl").exists()
    return str(err.value), root


def test_defect_image_without_mask(tmp_path):
    rows = [r for r in reference_rows("MVTec") if r["class_name"] == "bottle"]
    mask = "bottle/ground_truth/broken_large/000_mask.png"
    text, root = broken(tmp_path, "MVTec", rows, lambda r: (r / mask).unlink())
    assert f"{root}/bottle/test/broken_large/000.png: mask not found" in text
    assert "000_mask" in text


def test_missing_mask_folder_is_an_error_but_a_missing_class_is_not(tmp_path):
    rows = [r for r in reference_rows("BTAD") if r["class_name"] != "03"]
    text, root = broken(tmp_path, "BTAD", rows, lambda r: (r / "01/ground_truth/ko").rename(r / "01/ground_truth/old"))
    assert f"mask folder not found: {root}/01/ground_truth/ko" in text
    assert "03" not in text.replace(str(root), "")  # class 03 is simply left out (a warning, see below)


def test_missing_good_folder(tmp_path):
    rows = [r for r in reference_rows("MPDD") if r["class_name"] == "tubes" and int(r["label"]) == 1]
    text, root = broken(tmp_path, "MPDD", rows, lambda r: None)
    assert f"folder not found: {root}/tubes/test/good" in text


@pytest.mark.parametrize("name, folder", [("Liver", "test/Ungood/label"), ("Kvasir", "masks")])
def test_medical_layouts_need_their_mask_folder(tmp_path, name, folder):
    rows = reference_rows(name)[:40]

    def remove_masks(root):
        for path in (root / folder).iterdir():
            path.unlink()
        (root / folder).rmdir()

    text, root = broken(tmp_path, name, rows, remove_masks)
    assert f"mask folder not found: {root}/{folder}" in text


def test_mask_size_differs_from_image(tmp_path):
    rows = reference_rows("ColonDB")[:5]

    def resize_mask(root):
        Image.new("L", (4, 4)).save(root / rows[0]["mask_path"])

    text, root = broken(tmp_path, "ColonDB", rows, resize_mask)
    assert f"{root}/{rows[0]['image_path']}: mask {rows[0]['mask_path']!r} is 4x4 but image" in text


def test_visa_bad_csv_rows_are_named_by_line(tmp_path):
    root = tmp_path / "VisA"
    candle = [r for r in reference_rows("VisA") if r["class_name"] == "candle"]
    rows = [r for r in candle if int(r["label"]) == 0][:2] + [r for r in candle if int(r["label"]) == 1][:2]
    write_files(root, [r[k] for r in rows for k in ("image_path", "mask_path") if r.get(k)])
    anomaly = next(r for r in rows if int(r["label"]) == 1)
    path = write_visa_csv(
        root,
        [visa_csv_row(r) for r in rows]
        + [("candle", "test", "weird", "candle/x.JPG", ""),  # line 6
           ("candle", "test", "anomaly", anomaly["image_path"] + "_", ""),  # line 7: no mask
           ("candle", "test"),  # line 8: short row
           ("candle", "val", "normal", "candle/y.JPG", ""),  # line 9
           ("candle", "test", "normal", "candle/missing.JPG", "")],  # line 10: file missing
    )  # fmt: skip
    with pytest.raises(LayoutError) as err:
        prepare_dataset("visa", root)
    text = str(err.value)
    for line, message in [(6, "label must be normal or anomaly"), (7, "anomalous image without a mask"),
                          (8, "expected 5 fields"), (9, "split must be train or test")]:  # fmt: skip
        assert f"{path}:{line}: {message}" in text
    assert f"{path}:10" not in text  # row problems stop before the file check
    assert not (root / "full-shot.jsonl").exists()

    write_visa_csv(root, [visa_csv_row(r) for r in rows] + [("candle", "test", "normal", "candle/missing.JPG", "")])
    with pytest.raises(LayoutError, match=f"{path}:6: image not found: {root}/candle/missing.JPG"):
        prepare_dataset("visa", root)


def test_visa_without_csv_or_columns(tmp_path):
    with pytest.raises(LayoutError, match="split_csv/1cls.csv: file not found"):
        prepare_dataset("visa", tmp_path)
    path = tmp_path / "split_csv" / "1cls.csv"
    path.parent.mkdir()
    path.write_text("object,split,image\ncandle,test,a.JPG\n")
    with pytest.raises(LayoutError, match="1cls.csv:1: missing column.*label, mask"):
        prepare_dataset("visa", tmp_path)


def test_missing_root_and_unknown_dataset(tmp_path):
    with pytest.raises(AAClipError, match="dataset root not found"):
        prepare_dataset("mvtec", tmp_path / "nope")
    assert main(["prepare", "mvtec-3d", "--root", str(tmp_path)]) == 2


# ---------------------------------------------------------------------------- a user's own folder
def test_folder_with_classes_and_masks_becomes_a_usable_dataset(tmp_path, capsys):
    root = tmp_path / "data" / "parts"
    write_files(
        root,
        ["gear/test/good/a.png", "gear/test/good/b.png", "gear/test/dent/c.png",
         "gear/ground_truth/dent/c_mask.png", "washer/test/good/d.png", "washer/test/rust/e.jpg",
         "washer/ground_truth/rust/e.png", "washer/train/good/ignored.png"],
    )  # fmt: skip
    assert main(["prepare", "folder", "--root", str(root), "--domain", "medical"]) == 0
    assert "2 classes, 3 normal / 2 anomalous" in capsys.readouterr().out
    assert as_set(read_metadata(root / "full-shot.jsonl")) == {
        ("gear/test/good/a.png", 0, None, "gear"),
        ("gear/test/good/b.png", 0, None, "gear"),
        ("gear/test/dent/c.png", 1, "gear/ground_truth/dent/c_mask.png", "gear"),
        ("washer/test/good/d.png", 0, None, "washer"),
        ("washer/test/rust/e.jpg", 1, "washer/ground_truth/rust/e.png", "washer"),
    }
    info = get_dataset("parts", data_root=tmp_path / "data")
    assert (info.domain, info.classes, info.has_masks, info.layout) == ("medical", ("gear", "washer"), True, "folder")
    dataset = load_dataset(tmp_path / "data", "parts", 16, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert len(dataset) == 5 and dataset.info == info


def test_single_class_folder_without_masks(tmp_path):
    root = tmp_path / "mine"
    write_files(root, ["good/a.png", "good/b.png", "scratch/c.png", "hole/d.bmp"])
    result = prepare_dataset("folder", root, dataset_name="widgets")
    assert as_set(result.records) == {
        ("good/a.png", 0, None, "widgets"), ("good/b.png", 0, None, "widgets"),
        ("scratch/c.png", 1, None, "widgets"), ("hole/d.bmp", 1, None, "widgets"),
    }  # fmt: skip
    assert result.info.has_masks is False
    assert json.loads((root / "dataset.json").read_text())["prompt_names"] == {"widgets": "widgets"}


def test_folder_masks_are_all_or_nothing(tmp_path):
    root = tmp_path / "mine"
    write_files(root, ["test/good/a.png", "test/scratch/c.png", "ground_truth/scratch/c_mask.png", "test/hole/d.png"])
    with pytest.raises(LayoutError, match="hole/d.png: no mask in ground_truth/ although other defect images"):
        prepare_dataset("folder", root)
    (root / "ground_truth" / "scratch" / "c_mask.png").unlink()
    write_files(root, ["test/scratch/e.png"])
    with pytest.raises(LayoutError, match="scratch/e.png: mask not found"):
        prepare_dataset("folder", root)  # a defect folder with masks needs one for each image


def test_folder_errors(tmp_path, capsys):
    with pytest.raises(LayoutError, match="no good/ folder"):
        prepare_dataset("folder", tmp_path)
    write_files(tmp_path / "x", ["good/a.png"])
    with pytest.raises(AAClipError, match="registered dataset MVTec"):
        prepare_dataset("folder", tmp_path / "x", dataset_name="mvtec")
    assert main(["prepare", "mvtec", "--root", str(tmp_path), "--name", "x"]) == 2
    assert "--name, --domain and --allow-one-label" in capsys.readouterr().err
