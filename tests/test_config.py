"""One Config flows from papermill parameters, CLI flags and profile files to the library."""

import dataclasses

import pytest

from aaclip.config import GROUPS, IDENTITY_GROUPS, Config, ConfigError, available_profiles, field_paths, read_profile


def test_defaults_are_the_papers_setting():
    cfg = Config()
    # book:method-backbone, book:method-stage1, book:method-stage2: backbone, input size, the two optimisers
    assert (cfg.model.backbone, cfg.model.pretrained, cfg.model.image_size) == ("ViT-L-14-336", "openai", 518)
    assert (cfg.stage1.lr, cfg.stage1.batch_size, cfg.stage1.epochs) == (1e-5, 16, 5)
    assert (cfg.stage2.lr, cfg.stage2.batch_size, cfg.stage2.epochs) == (5e-4, 2, 20)
    assert cfg.stage2.milestones == [16000, 32000] and cfg.train.betas == [0.5, 0.999]
    assert (cfg.model.activation, cfg.model.vv_attention, cfg.stage1.loss) == ("gelu", "self", "released")
    assert cfg.model.adapter_weight == 0.1 and cfg.stage1.orth_weight == 0.1


def test_profiles_exist_and_load():
    assert {"paper", "miniature", "smoke"} <= set(available_profiles())
    for name in available_profiles():
        cfg = Config.load(name)
        assert cfg.runtime.profile == name


def test_overrides_win_over_the_profile_and_strings_are_coerced():
    cfg = Config.load("smoke", {"train.seed": "7", "train.shot": "16", "eval.datasets": "a, b",
                                "train.augment": "false", "stage2.lr": "1e-3"})
    assert (cfg.train.seed, cfg.train.shot, cfg.eval.datasets, cfg.train.augment, cfg.stage2.lr) == (7, 16, ["a", "b"], False, 1e-3)


def test_nested_and_dotted_overrides_mean_the_same():
    assert Config.load("smoke", {"stage2": {"epochs": 3}}) == Config.load("smoke", {"stage2.epochs": 3})


def test_unknown_name_is_rejected_with_the_valid_names():
    with pytest.raises(ConfigError, match=r"unknown parameters 'train.sede'.*valid names: .*train.seed"):
        Config.load("smoke", {"train.sede": 3})
    with pytest.raises(ConfigError, match=r"'seed' is not a 'group.field' name"):
        Config.load("smoke", {"seed": 3})


def test_wrong_type_names_the_parameter():
    with pytest.raises(ConfigError, match="'train.seed' expects an integer"):
        Config.load(None, {"train.seed": "three"})
    with pytest.raises(ConfigError, match="'train.augment' expects true/false"):
        Config.load(None, {"train.augment": 3})


@pytest.mark.parametrize(("key", "value", "message"), [
    ("eval.normalize", "both", "eval.normalize='both': choose one of transductive, inductive"),
    ("train.shot", 3, "train.shot=3: use -1"),
    ("stage2.epochs", -1, "stage2.epochs=-1: must be >= 0"),
    ("stage1.batch_size", 0, "stage1.batch_size=0: must be > 0"),
    ("model.image_size", 0, "model.image_size=0: must be > 0"),
    ("model.adapter_weight", 1.5, r"model.adapter_weight=1.5: must lie in \[0, 1\]"),
    ("model.levels", [3, 2], "model.levels=\\[3, 2\\]: need increasing"),
    ("eval.batch_size", -2, "eval.batch_size=-2: must be > 0"),
])
def test_values_out_of_range_are_rejected_naming_the_key(key, value, message):
    with pytest.raises(ConfigError, match=message):
        Config.load("smoke", {key: value})


def test_every_field_declares_its_help_once_and_each_group_its_role():
    for path in field_paths():
        group, name = path.split(".")
        declared = next(f for f in dataclasses.fields(GROUPS[group]) if f.name == name)
        assert declared.metadata.get("help"), f"{path} has no help text"
    assert set(IDENTITY_GROUPS) < set(GROUPS) and "eval" not in IDENTITY_GROUPS and "runtime" not in IDENTITY_GROUPS


def test_the_identity_part_holds_every_training_field_and_nothing_else():
    cfg = Config.load("smoke")
    part = cfg.identity_part()
    assert set(part) == set(IDENTITY_GROUPS)
    assert cfg.replace({"eval.normalize": "inductive", "runtime.device": "cuda"}).identity_part() == part
    for changed in ({"stage2.gamma": 0.3}, {"train.augment": False}, {"model.seg_relu": True}):
        assert cfg.replace(changed).identity_part() != part, changed


def test_unknown_profile_lists_choices(tmp_path):
    with pytest.raises(ConfigError, match="unknown profile 'tiny'.*miniature"):
        read_profile("tiny")
    bad = tmp_path / "p.yaml"
    bad.write_text("train:\n  seed: 1\n  sede: 2\n")
    with pytest.raises(ConfigError, match=r"p.yaml: unknown keys 'train.sede'"):
        read_profile(str(bad))


def test_a_profile_file_of_ones_own_loads_like_a_named_one(tmp_path):
    mine = tmp_path / "mine.yaml"
    mine.write_text("stage2:\n  epochs: 3\nruntime:\n  threads: 1\n")
    cfg = Config.load(str(mine))
    assert (cfg.stage2.epochs, cfg.runtime.threads, cfg.runtime.profile) == (3, 1, "mine")


def test_replace_round_trips_and_revalidates():
    cfg = Config.load("smoke")
    assert cfg.replace({"train.seed": cfg.train.seed + 1}).train.seed == cfg.train.seed + 1
    assert Config.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError):
        cfg.replace({"model.activation": "relu"})
