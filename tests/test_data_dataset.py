"""The torch Dataset: preprocessing (book:method-preprocessing), joint augmentation (book:method-augmentation), one Batch type."""

import io
import json

import numpy as np
import pytest
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from PIL import Image

from aaclip.batch import Batch
from aaclip.data.dataset import AnomalyDataset, load_dataset
from aaclip.data.metadata import MetadataError, write_metadata
from aaclip.errors import AAClipError

MEAN = torch.tensor(OPENAI_DATASET_MEAN).view(3, 1, 1)
STD = torch.tensor(OPENAI_DATASET_STD).view(3, 1, 1)


def save(image: Image.Image, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path.name


def pixels(item) -> torch.Tensor:
    """The item's image back in [0, 1]."""
    return item.image[0] * STD + MEAN


def one(tmp_path, image, mask=None, size=16, mean=OPENAI_DATASET_MEAN, std=OPENAI_DATASET_STD, **options):
    """A dataset of one image (anomalous when a mask is given)."""
    record = {"image_path": save(image, tmp_path / "img.png"), "label": int(mask is not None), "class_name": "x"}
    if mask is not None:
        record["mask_path"] = "mask/" + save(mask, tmp_path / "mask" / "m.png")
    return AnomalyDataset([record], tmp_path, size, mean, std, **options)


def test_item_fields_resize_without_crop_and_clip_normalisation(tmp_path):
    item = one(tmp_path, Image.new("RGB", (12, 7), (200, 100, 50)))[0]
    assert isinstance(item, Batch) and len(item) == 1
    assert item.image.shape == (1, 3, 16, 16) and item.image.dtype == torch.float32
    expected = (torch.tensor([200, 100, 50]).view(3, 1, 1) / 255 - MEAN) / STD
    torch.testing.assert_close(item.image[0], expected.expand(3, 16, 16), atol=1e-5, rtol=0)
    assert item.gt_mask.shape == (1, 16, 16) and item.gt_mask.dtype == torch.bool
    assert item.gt_mask.sum() == 0 and item.gt_label.tolist() == [0]  # normal image: empty mask
    assert (item.class_name, item.image_path) == (["x"], [str(tmp_path / "img.png")])
    # no crop: a left-half stripe stays the left half after the aspect-changing resize
    striped = np.zeros((7, 12, 3), np.uint8)
    striped[:, :6] = 255
    image = pixels(one(tmp_path, Image.fromarray(striped))[0])
    assert image[:, :, :7].min() > 0.95 and image[:, :, 9:].max() < 0.05


@pytest.mark.parametrize(
    "image, gray",
    [(Image.new("L", (8, 8), 100), 100), (Image.new("LA", (8, 8), (100, 0)), 100),
     (Image.new("RGBA", (8, 8), (100, 100, 100, 0)), 100), (Image.new("1", (8, 8), 1), 255),
     (Image.new("I;16", (8, 8), 100 * 257), 100), (Image.new("P", (8, 8), 3), 3)],
)  # fmt: skip
def test_any_mode_becomes_rgb(tmp_path, image, gray):
    if image.mode == "P":
        image.putpalette([v for i in range(256) for v in (i, i, i)])
    item = one(tmp_path, image)[0]
    assert item.image.shape == (1, 3, 16, 16)
    torch.testing.assert_close(pixels(item), torch.full((3, 16, 16), gray / 255), atol=1e-4, rtol=0)


def test_the_backbones_own_mean_and_std_are_used(tmp_path):
    """book:method-preprocessing: the model's preprocessing, not a hard-wired CLIP constant."""
    image = Image.new("RGB", (8, 8), (128, 128, 128))
    item = one(tmp_path, image, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))[0]
    torch.testing.assert_close(item.image, torch.full((1, 3, 16, 16), (128 / 255 - 0.5) / 0.25), atol=1e-5, rtol=0)


def test_mask_nearest_resize_then_nonzero(tmp_path):
    values = np.zeros((8, 8), np.uint8)
    values[:, 4:] = 128
    values[0, 4] = 1  # faint but nonzero: still defect
    item = one(tmp_path, Image.new("RGB", (8, 8)), Image.fromarray(values), size=16)[0]
    expected = torch.zeros(1, 16, 16, dtype=torch.bool)
    expected[:, :, 8:] = True
    assert item.gt_label.tolist() == [1]
    assert torch.equal(item.gt_mask, expected)
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 3] = 255  # opaque everywhere: alpha is not the defect
    rgba[:, 4:, 0] = 255
    item = one(tmp_path, Image.new("RGB", (8, 8)), Image.fromarray(rgba, "RGBA"), size=16)[0]
    assert torch.equal(item.gt_mask, expected)


def square_pair(tmp_path, **options):
    """A white off-centre rectangle on black, and the same rectangle as mask."""
    values = np.zeros((32, 32), np.uint8)
    values[4:12, 6:20] = 255
    return one(tmp_path, Image.fromarray(values).convert("RGB"), Image.fromarray(values), size=32, **options)


def test_joint_augmentation_keeps_the_mask_on_the_defect(tmp_path):
    dataset = square_pair(tmp_path, augment=True)
    masks = set()
    for seed in range(16):
        torch.manual_seed(seed)
        item = dataset[0]
        image = pixels(item)
        bright = image.mean(0) > 0.9
        assert torch.equal(bright, item.gt_mask[0]), seed
        # nearest, fill 0 on the normalised tensor: every pixel is black, white, or the mean colour where
        # the rotation or translation uncovered it (no blended pixels)
        filled = (image - MEAN).abs().amax(0) < 1e-5
        assert (((image < 0.01) | (image > 0.99)).all(0) | filled).all(), seed
        masks.add(item.gt_mask.numpy().tobytes())
    assert len(masks) > 6  # rotation, translation and flips really vary


def test_a_rotated_images_uncovered_corner_holds_the_mean_colour_as_released(tmp_path):
    """The released code rotates the normalised tensor: "fill 0" is CLIP's mean colour, not black."""
    dataset = one(tmp_path, Image.new("RGB", (32, 32), (255, 255, 255)), size=32, augment=True)
    dataset.geometry = torchvision_rotation(45)
    item = dataset[0]
    corner = pixels(item)[:, 0, 0]
    torch.testing.assert_close(corner, MEAN[:, 0, 0], atol=1e-5, rtol=0)
    assert not item.gt_mask.any()  # the mask's fill is "no defect"


def torchvision_rotation(degrees):
    from torchvision.transforms import v2

    return v2.RandomRotation((degrees, degrees), interpolation=v2.InterpolationMode.NEAREST, fill=0)


def test_colour_jitter_runs_on_the_original_size_before_the_resize(tmp_path):
    """The released order: jitter the PIL image at its own size, then resize to the input size."""
    seen = []
    dataset = one(tmp_path, Image.new("RGB", (12, 7), (200, 100, 50)), size=16, color_jitter=True)
    dataset.jitter = lambda image: seen.append(image.size) or image
    dataset[0]
    assert seen == [(12, 7)]


def test_one_mask_rule_in_every_path(tmp_path):
    """Grayscale != 0, as released, both for the model's masks and for the original-resolution metrics."""
    from aaclip.data.dataset import load_mask, read_mask

    values = np.zeros((8, 8, 3), np.uint8)
    values[:, :4, 2] = 1  # a faint blue: grayscale 0.114 * 1 rounds to 0, so not a defect
    values[:, 4:, 0] = 255
    Image.fromarray(values).save(tmp_path / "m.png")
    expected = np.zeros((8, 8), bool)
    expected[:, 4:] = True
    assert np.array_equal(read_mask(tmp_path / "m.png"), expected)
    assert np.array_equal(load_mask(tmp_path / "m.png", 8)[0].numpy() != 0, expected)


def test_augmentation_is_reproducible_from_torch_seed(tmp_path):
    dataset = square_pair(tmp_path, augment=True, color_jitter=True)
    dataset.records *= 4

    def run(workers):
        torch.manual_seed(11)
        loader = torch.utils.data.DataLoader(dataset, batch_size=2, num_workers=workers, collate_fn=Batch.collate)
        return torch.cat([batch.image for batch in loader])

    first = run(0)
    assert torch.equal(first, run(0))
    assert not torch.equal(first[0], first[1])  # each item draws its own augmentation
    assert torch.equal(run(2), run(2))  # DataLoader workers: seeded from torch's generator too


def test_color_jitter_changes_the_image_only(tmp_path):
    plain = square_pair(tmp_path)[0]
    dataset = square_pair(tmp_path, color_jitter=True)
    changed = 0
    for seed in range(8):
        torch.manual_seed(seed)
        item = dataset[0]
        assert torch.equal(item.gt_mask, plain.gt_mask)
        changed += not torch.allclose(item.image, plain.image)
    assert changed >= 4  # each of the three jitters applies with p 0.7


def test_corrupt_image_error_names_the_file(tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, "PNG")
    (tmp_path / "truncated.png").write_bytes(buffer.getvalue()[:300])
    (tmp_path / "garbage.png").write_bytes(b"\x89PNG definitely not")
    for name in ("truncated.png", "garbage.png"):
        dataset = AnomalyDataset([{"image_path": name, "label": 0, "class_name": "x"}], tmp_path, 8,
                                 OPENAI_DATASET_MEAN, OPENAI_DATASET_STD)
        with pytest.raises(AAClipError, match=f"cannot read image {tmp_path / name}"):
            dataset[0]


def test_load_dataset_validates_and_selects_classes(tmp_path):
    root = tmp_path / "MVTec"
    records = []
    for cls in ("bottle", "cable"):
        records.append({"image_path": f"{cls}/test/good/0.png", "label": 0, "class_name": cls})
        records.append({"image_path": f"{cls}/test/cut/0.png", "label": 1, "class_name": cls,
                        "mask_path": f"{cls}/ground_truth/cut/0_mask.png"})  # fmt: skip
    for record in records:
        for key in ("image_path", "mask_path"):
            if key in record:
                save(Image.new("RGB", (8, 8)), root / record[key])
    clip = (OPENAI_DATASET_MEAN, OPENAI_DATASET_STD)
    with pytest.raises(AAClipError, match="run 'aaclip prepare MVTec --root"):
        load_dataset(tmp_path, "mvtec", 16, *clip)
    write_metadata(root / "full-shot.jsonl", records)
    dataset = load_dataset(tmp_path, "mvtec-ad", 16, *clip, classes=["cable"])
    assert [r["class_name"] for r in dataset.records] == ["cable", "cable"]
    assert load_dataset(tmp_path, "mvtec", 16, *clip).class_names == ["bottle", "cable"]
    assert dataset.info.name == "MVTec" and dataset[1].gt_mask.shape == (1, 16, 16)
    with pytest.raises(AAClipError, match="no class 'screw'; it has bottle, cable"):
        load_dataset(tmp_path, "mvtec", 16, *clip, classes=["screw"])
    with pytest.raises(AAClipError, match="run 'aaclip shots MVTec --k 2'"):
        load_dataset(tmp_path, "mvtec", 16, *clip, shot=2)
    write_metadata(root / "full-shot.jsonl", [{**records[0], "class_name": "botle"}] + records[1:])
    with pytest.raises(AAClipError, match="class.es. botle not in MVTec: bottle, cable, capsule"):
        load_dataset(tmp_path, "mvtec", 16, *clip)
    write_metadata(root / "full-shot.jsonl", records)
    (root / "cable/ground_truth/cut/0_mask.png").unlink()
    with pytest.raises(MetadataError, match=r"full-shot.jsonl:4: mask not found"):
        load_dataset(tmp_path, "mvtec", 16, *clip)
    assert json.loads((root / "full-shot.jsonl").read_text().splitlines()[0])["label"] == 0


def test_a_batch_joins_items_and_refuses_fields_that_disagree(tmp_path):
    dataset = square_pair(tmp_path)
    dataset.records = dataset.records * 3
    batch = Batch.collate([dataset[i] for i in range(3)])
    assert len(batch) == 3 and batch.image.shape == (3, 3, 32, 32) and batch.gt_mask.shape == (3, 32, 32)
    assert batch.gt_label.tolist() == [1, 1, 1] and batch.class_name == ["x"] * 3
    picked = batch.select([2, 0])
    assert len(picked) == 2 and torch.equal(picked.image[1], batch.image[0])
    with pytest.raises(AAClipError, match="one image_path, class_name and gt_label per image"):
        Batch(image_path=["a", "b"], class_name=["x"], gt_label=torch.tensor([0, 1]))
    with pytest.raises(AAClipError, match="batch field pred_score has 1 entries for 2 images"):
        Batch(image_path=["a", "b"], class_name=["x", "x"], gt_label=np.array([0, 1]), pred_score=np.array([0.5]))
    with pytest.raises(AAClipError, match=r"gt_mask \(1, 8, 8\) does not match image \(1, 3, 32, 32\)"):
        Batch(image_path=["a"], class_name=["x"], gt_label=torch.tensor([0]), image=torch.zeros(1, 3, 32, 32),
              gt_mask=torch.zeros(1, 8, 8, dtype=torch.bool))
