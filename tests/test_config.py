"""One Config flows from papermill parameters, CLI flags and profile files to the library."""

import pytest

from aaclip.config import Config, ConfigError, available_profiles, read_profile


def test_defaults_are_the_spec_paper_setting():
    cfg = Config()
    # SPEC 1, 4, 5: backbone, input size and the two optimisers' settings
    assert (cfg.backbone, cfg.pretrained, cfg.image_size) == ("ViT-L-14-336", "openai", 518)
    assert (cfg.stage1_lr, cfg.stage1_batch_size, cfg.stage1_epochs) == (1e-5, 16, 5)
    assert (cfg.stage2_lr, cfg.stage2_batch_size, cfg.stage2_epochs) == (5e-4, 2, 20)
    assert cfg.stage2_milestones == [16000, 32000] and cfg.betas == [0.5, 0.999]
    assert (cfg.activation, cfg.vv_attention, cfg.stage1_loss) == ("gelu", "self", "released")
    assert cfg.adapter_weight == 0.1 and cfg.orth_weight == 0.1


def test_profiles_exist_and_load():
    assert {"paper", "miniature", "smoke"} <= set(available_profiles())
    for name in available_profiles():
        cfg = Config.load(name)
        assert cfg.profile == name


def test_overrides_win_over_the_profile_and_strings_are_coerced():
    cfg = Config.load("smoke", seed="7", shot="16", test_datasets="a, b", augment="false", stage2_lr="1e-3")
    assert (cfg.seed, cfg.shot, cfg.test_datasets, cfg.augment, cfg.stage2_lr) == (7, 16, ["a", "b"], False, 1e-3)


def test_unknown_name_is_rejected_with_the_valid_names():
    with pytest.raises(ConfigError, match=r"unknown parameters 'sede'.*valid names: .*seed"):
        Config.load("smoke", sede=3)


def test_wrong_type_names_the_parameter():
    with pytest.raises(ConfigError, match="'seed' expects an integer"):
        Config.load(None, seed="three")
    with pytest.raises(ConfigError, match="'augment' expects true/false"):
        Config.load(None, augment=3)


def test_bad_choice_and_bad_shot_are_rejected():
    with pytest.raises(ConfigError, match="normalize='both'"):
        Config(normalize="both")
    with pytest.raises(ConfigError, match="shot=3"):
        Config(shot=3)


def test_unknown_profile_lists_choices(tmp_path):
    with pytest.raises(ConfigError, match="unknown profile 'tiny'.*miniature"):
        read_profile("tiny")
    bad = tmp_path / "p.yaml"
    bad.write_text("seed: 1\nsede: 2\n")
    with pytest.raises(ConfigError, match=r"p.yaml: unknown keys 'sede'"):
        read_profile(str(bad))


def test_replace_round_trips_and_revalidates():
    cfg = Config.load("smoke")
    assert cfg.replace(seed=cfg.seed + 1).seed == cfg.seed + 1
    assert Config.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError):
        cfg.replace(activation="relu")
