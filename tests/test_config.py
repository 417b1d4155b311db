import json

import pytest

from pitguard.cli import main
from pitguard.config import build_config, config_from_dict, load_config, parse_set
from pitguard.core.errors import ConfigError, PitguardError
from pitguard.recipes import recipe_names

ALL_RECIPES = {
    "resnet50-head-only",
    "resnet50-aug",
    "resnet50-aug-cosine",
    "resnet50-aug-normalized",
    "resnet50-difflr",
    "resnet18-aug",
    "mobilenetv3-large",
    "efficientnet-b0",
    "efficientnet-b2",
    "efficientnet-b2-ls",
    "convnextv2-tiny",
    "convnextv2-tiny-ls",
    "dinov2-vits14-probe",
    "cpu-fast",
    "cpu-best",
    "small-fast",
    "lite0",
    "lite1",
    "lite2",
}


def test_set_values_are_parsed_by_type():
    cfg = load_config(
        "cpu-fast",
        sets=["train.lr=3e-4", "model.channels=0,2", "augment.enabled=false", "train.epochs=7"],
    )
    assert cfg.train.lr == 3e-4 and cfg.model.channels == (0, 2)
    assert cfg.augment.enabled is False and cfg.train.epochs == 7
    assert cfg.recipe == "cpu-fast"


def test_all_problems_reported_at_once_with_closest_key():
    with pytest.raises(ConfigError) as err:
        load_config(
            sets=[
                "train.lrr=1",
                "trian.epochs=3",
                "train.epochs=x",
                "model.normalize=foo",
                "train.label_smoothing=2",
            ]
        )
    problems = err.value.problems
    assert problems == [
        "--set: unknown key 'train.lrr'; did you mean train.lr?",
        "--set: unknown key 'trian.epochs'; did you mean train.epochs?",
        "--set: train.epochs: expected an integer, got 'x'",
        "--set: model.normalize='foo': choose one of none, imagenet, data, pretrained",
        "--set: train.label_smoothing=2.0: must be between 0 and 1",
    ]


def test_yaml_file_errors_name_the_file_and_line(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("train:\n  lr: 0.1\n  optimiser: sgd\nmodel:\n  normalize: foo\n")
    with pytest.raises(ConfigError) as err:
        load_config(config_file=bad)
    assert err.value.problems == [
        f"{bad}:3: unknown key 'train.optimiser'; did you mean train.optimizer?",
        f"{bad}:5: model.normalize='foo': choose one of none, imagenet, data, pretrained",
    ]
    broken = tmp_path / "broken.yaml"
    broken.write_text("train:\n  lr: [1, 2\n")
    with pytest.raises(PitguardError, match=r"broken.yaml:\d+: not valid YAML"):
        load_config(config_file=broken)


def test_choices_and_ranges_sit_on_the_fields():
    from typing import get_args

    from pitguard.config import TrainConfig, field_types
    from pitguard.data.load import DecodeOptions

    assert get_args(field_types(TrainConfig)["optimizer"]) == ("adamw", "adam", "sgd")
    # the decoder refuses exactly what the setting refuses, naming the same choices
    with pytest.raises(PitguardError, match=r"modes='keep': use one of skip, convert"):
        DecodeOptions(modes="keep").validate()
    with pytest.raises(ConfigError, match=r"data.modes='keep': choose one of skip, convert"):
        load_config(sets=["data.modes=keep"])
    with pytest.raises(ConfigError, match=r"train.batch_size=0: must be > 0"):
        load_config(sets=["train.batch_size=0"])


def test_malformed_set():
    with pytest.raises(ConfigError, match=r"--set 'lr': write section.key=value"):
        parse_set(["lr"])


def test_unknown_recipe_suggests_name():
    with pytest.raises(
        PitguardError, match=r"unknown recipe 'resnet50-agu'; did you mean resnet50-aug\?"
    ):
        load_config("resnet50-agu")


def test_every_published_recipe_ships_and_validates():
    assert set(recipe_names()) == ALL_RECIPES
    for name in recipe_names():
        cfg = load_config(name)
        assert cfg.recipe == name


def test_config_round_trips_through_json():
    cfg = load_config("efficientnet-b2-ls", sets=["model.channels=0,2"])
    again = config_from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg


def test_defaults_without_overrides():
    assert build_config({}).train.optimizer == "adamw"


def test_recipes_cli_lists_one_line_each(capsys):
    assert main(["recipes"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == len(ALL_RECIPES)
    assert any(line.startswith("resnet50-aug ") and "94.05%" in line for line in lines)


def test_train_cli_config_error_exits_2(capsys, tmp_path):
    assert (
        main(
            [
                "train",
                "--recipe",
                "cpu-fast",
                "--data",
                str(tmp_path),
                "--out",
                str(tmp_path / "r"),
                "--set",
                "train.lrr=1",
            ]
        )
        == 2
    )
    assert "did you mean train.lr?" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()  # nothing written before the config is valid


def test_centre_crop_checked_against_the_crop_size():
    assert load_config("cpu-fast", sets=["model.crop=80"]).model.crop == 80
    with pytest.raises(
        ConfigError, match=r"model.crop=-1: must be 0 \(the whole crop\) or a side in px"
    ):
        load_config(sets=["model.crop=-1"])
    with pytest.raises(ConfigError, match=r"model.crop=160 is larger than data.size=128"):
        load_config(sets=["model.crop=160"])
    with pytest.raises(ConfigError, match=r"model.crop=1 is smaller than model.downsample=2"):
        load_config(sets=["model.crop=1", "model.downsample=2"])


def test_learned_downsampling_needs_blocks_to_reduce():
    cfg = load_config("cpu-fast", sets=["model.downsample_mode=learned"])
    assert (cfg.model.downsample, cfg.model.downsample_mode) == (2, "learned")
    with pytest.raises(ConfigError, match=r"model.downsample_mode=learned with model.downsample=1"):
        load_config(sets=["model.downsample_mode=learned"])
    with pytest.raises(ConfigError, match=r"side read \(90 px\) is not a multiple of 4"):
        load_config(
            "cpu-fast",
            sets=["model.downsample_mode=learned", "model.crop=90", "model.downsample=4"],
        )
    with pytest.raises(ConfigError, match=r"model.downsample_mode=.*average.*learned"):
        load_config(sets=["model.downsample_mode=max"])


def test_upsampling_is_refused_with_pooling():
    assert load_config("lite0", sets=["model.upsample=2"]).model.upsample == 2
    with pytest.raises(ConfigError, match=r"model.upsample=2 with model.downsample=2 enlarges"):
        load_config("cpu-fast", sets=["model.upsample=2"])
    with pytest.raises(ConfigError, match=r"model.upsample=0"):
        load_config(sets=["model.upsample=0"])


def test_relations_are_checked_on_the_merged_settings(tmp_path):
    # size from a file, crop from --set: valid together, though not against the defaults
    big = tmp_path / "big.yaml"
    big.write_text("data:\n  size: 192\n")
    cfg = load_config(config_file=big, sets=["model.crop=160"])
    assert (cfg.data.size, cfg.model.crop) == (192, 160)
    with pytest.raises(ConfigError, match=r"merged settings: model.crop=200 is larger"):
        load_config(config_file=big, sets=["model.crop=200"])


def test_fit_val_needs_a_run_that_chooses_nothing_on_val():
    cfg = load_config("cpu-fast", sets=["train.fit_val=true"])
    assert cfg.train.fit_val and cfg.train.select_metric == "last"
    with pytest.raises(
        ConfigError, match=r"train.fit_val trains on the val part.*set train.select_metric=last"
    ):
        load_config("cpu-best", sets=["train.fit_val=true"])  # cpu-best chooses on val accuracy


@pytest.mark.parametrize(
    "item",
    [
        "train.max_minutes=nan",
        "train.lr=inf",
        "train.lr=-inf",
        "augment.rotate=nan",
        "train.weight_decay=NaN",
        "train.momentum=nan",
    ],
)
def test_non_finite_numbers_are_refused_naming_the_key(item):
    with pytest.raises(ConfigError) as err:
        load_config("small-fast", sets=[item])
    key, _, value = item.partition("=")
    assert err.value.problems == [f"--set: {key}: expected a finite number, got {value!r}"]


def test_non_finite_numbers_in_yaml_are_refused_with_file_and_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: .nan\n  max_minutes: .inf\n")
    with pytest.raises(ConfigError) as err:
        load_config("small-fast", path)
    assert err.value.problems == [
        f"{path}:2: train.lr: expected a finite number, got nan",
        f"{path}:3: train.max_minutes: expected a finite number, got inf",
    ]


@pytest.mark.parametrize(
    ("item", "problem"),
    [
        ("train.lr=0", "train.lr=0.0: must be > 0"),
        ("train.threads=-2", "train.threads=-2: must be >= 0"),
        ("train.patience=-1", "train.patience=-1: must be >= 0"),
        ("augment.brightness=1.5", "augment.brightness=1.5: must be between 0 and 1"),
        ("augment.blur_sigma=-1", "augment.blur_sigma=-1.0: must be >= 0"),
        ("train.step_gamma=0", "train.step_gamma=0.0: must be > 0"),
    ],
)
def test_out_of_range_numbers_are_refused(item, problem):
    with pytest.raises(ConfigError) as err:
        load_config("small-fast", sets=[item])
    assert err.value.problems == [f"--set: {problem}"]


@pytest.mark.parametrize("item", ["train.max_minutes=nan", "train.lr=inf"])
def test_train_refuses_a_non_finite_setting_before_any_work(synth_dir, tmp_path, capsys, item):
    out = tmp_path / "r"
    argv = ["train", "--recipe", "small-fast", "--data", str(synth_dir), "--out", str(out)]
    assert main([*argv, "--set", item]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: invalid configuration") and item.partition("=")[0] in err
    assert "expected a finite number" in err and not out.exists()
