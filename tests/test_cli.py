"""`aaclip train | test | predict | describe`: flags map onto Config; errors are printed, not raised."""

import json

import pytest

from aaclip.cli import build_parser, main
from aaclip.runs.cli import config_from


def parse(*argv):
    return build_parser().parse_args(list(argv))


def test_train_flags_map_onto_the_profile_and_config():
    args = parse(
        "train", "--profile", "smoke", "--data-root", "world", "--dataset", "mini-aux", "--shot", "16",
        "--save-path", "ckpt", "--stage2-epochs", "3", "--stage2-milestones", "10,20", "--no-stage1",
        "--set", "stage1.orth_weight=0.2", "--seed", "5", "--device", "cpu",
    )  # fmt: skip
    cfg = config_from(args)
    assert (cfg.runtime.profile, cfg.runtime.data_root, cfg.train.dataset, cfg.train.shot, cfg.runtime.save_path) == (
        "smoke", "world", "mini-aux", 16, "ckpt"
    )  # fmt: skip
    assert (cfg.stage2.epochs, cfg.stage2.milestones, cfg.stage1.enabled, cfg.stage2.enabled) == (3, [10, 20], False, True)
    assert (cfg.stage1.orth_weight, cfg.train.seed, cfg.runtime.device) == (0.2, 5, "cpu")
    assert cfg.model.backbone == "aaclip-tiny"  # from the smoke profile, untouched by absent flags


def test_flags_and_their_help_come_from_the_config_declarations(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--stage2-epochs" in text and "stage-2 epochs (paper: 20)" in text
    assert "--activation {gelu,quick_gelu}" in text and "--augment, --no-augment" in text


def test_paper_is_the_default_profile():
    cfg = config_from(parse("test", "--dataset", "MVTec", "--save-path", "run", "--out", "res", "--aupro", "legacy"))
    assert (cfg.runtime.profile, cfg.model.backbone, cfg.model.image_size, cfg.runtime.data_root) == (
        "paper", "ViT-L-14-336", 518, "data")
    assert (cfg.runtime.save_path, cfg.eval.aupro, cfg.eval.normalize) == ("run", "legacy", "transductive")


def test_bad_values_are_errors_naming_the_key(capsys):
    assert main(["train", "--profile", "smoke", "--set", "train.no_such_key=1"]) == 2
    assert "train.no_such_key" in capsys.readouterr().err
    assert main(["test", "--profile", "smoke", "--baseline", "--dataset", "mini-target", "--normalize", "sometimes"]) == 2
    assert "eval.normalize='sometimes'" in capsys.readouterr().err
    assert main(["test", "--dataset", "mini-target"]) == 2
    assert "give --save-path RUN" in capsys.readouterr().err


def test_unknown_dataset_lists_the_choices(tmp_path, capsys):
    code = main(["train", "--profile", "smoke", "--data-root", str(tmp_path), "--dataset", "MVTecc",
                 "--save-path", str(tmp_path / "ckpt")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "unknown dataset 'MVTecc'" in err and "MVTec" in err and "prepared folder" in err and "CVC-300" in err


def test_describe_prints_parameter_counts_and_levels(tiny_backbone, capsys):
    assert main(["describe", "--backbone", "aaclip-tiny", "--pretrained", str(tiny_backbone), "--image-size", "96"]) == 0
    info = json.loads(capsys.readouterr().out)
    # book:method-adapters generalised by depth: tiny CLIP (width 64, depth 8/4, embedding 128) -> 1 text
    # adapter (64 x 64) + projection (64 x 128), 2 image adapters (64 x 64) + 4 seg projections + 1 det
    # projection (64 x 128 each), no bias
    from aaclip_miniature.tiny_clip import MODEL_CFG

    width, embed = MODEL_CFG["vision_cfg"]["width"], MODEL_CFG["embed_dim"]  # the fixture's tiny CLIP
    assert (info["trainable_text"], info["trainable_image"]) == (
        width * width + width * embed, 2 * width * width + 5 * width * embed)
    assert info["levels"] == [2, 4, 6, 8] and info["grid"] == [12, 12] and info["frozen"] > 0


@pytest.mark.slow
def test_predict_reports_an_unreadable_image_by_name(smoke_cfg, smoke_run, smoke_world, tmp_path, capsys):
    image = next(p for p in sorted((smoke_world / "mini-target").rglob("*.png")) if "mask" not in str(p).lower())
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"definitely not a jpeg")
    code = main(["predict", "--save-path", str(smoke_run.save_path), str(image), str(broken),
                 "--out", str(tmp_path / "out"), "--quiet"])  # a checkpoint is enough: no profile, no data root
    captured = capsys.readouterr()
    assert code == 1 and "broken.jpg" in captured.err and "scored 1 of 2 images" in captured.out
    assert len(list((tmp_path / "out" / "overlays").rglob("*.png"))) == 1
