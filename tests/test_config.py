"""Presets, the auto rules and validation."""

from __future__ import annotations

import pytest

from ada import config, config_checks
from ada.errors import UserError
from tests.conftest import REPO


def test_the_presets_are_the_yaml_files_of_configs():
    assert config.available_presets() == sorted(p.stem for p in (REPO / "configs").glob("*.yaml"))
    assert {"auto", "stylegan2", "paper256", "paper512", "paper1024", "cifar", "tiny", "cpu"} <= set(
        config.available_presets())


@pytest.mark.parametrize("name", config.available_presets())
def test_every_preset_loads_and_validates(name):
    cfg = config.load_preset(name)
    cfg.data = "somewhere"
    config_checks.validate(cfg)
    assert cfg.cfg == name


def test_paper_presets_match_the_ada_paper():
    p256 = config.load_preset("paper256")
    assert (p256.batch, p256.model.channel_base, p256.loss.r1_gamma, p256.optim.ema_kimg) == (64, 16384, 1, 20)
    p1024 = config.load_preset("paper1024")
    assert (p1024.model.channel_base, p1024.optim.lr, p1024.loss.r1_gamma) == (32768, 0.002, 2)
    assert (p1024.batch, p1024.batch_gpu) == (32, 4)  # the official batch over 8 reference GPUs
    cifar = config.load_preset("cifar")
    assert (cifar.loss.pl_weight, cifar.loss.style_mixing, cifar.model.d_architecture) == (0, 0, "orig")


def test_auto_rules_follow_the_official_formulas():
    rules = config.auto_rules(resolution=256, gpus=1)
    assert rules["batch"] == 16
    assert rules["model"] == {"mbstd_group": 4, "channel_base": 16384}
    assert rules["loss"]["r1_gamma"] == pytest.approx(0.0002 * 256**2 / 16)
    assert rules["optim"] == {"lr": 0.0025, "ema_kimg": 5.0}
    big = config.auto_rules(resolution=1024, gpus=8)
    assert big["batch"] == 32 and big["model"]["channel_base"] == 32768 and big["optim"]["lr"] == 0.002


def test_unknown_preset_names_the_choices():
    with pytest.raises(UserError, match="unknown preset --cfg=nope; choose one of: auto"):
        config.load_preset("nope")


def test_unknown_option_in_overrides_is_refused():
    cfg = config.load_preset("tiny")
    with pytest.raises(UserError, match="unknown option 'loss.bogus'; known: loss.d_reg_interval"):
        config.apply_overrides(cfg, {"loss": {"bogus": 1}}, source="test")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"batch": 6, "gpus": 4}, "not divisible by --gpus"),
        ({"batch": 6}, "minibatch-stddev group"),
        ({"aug": {"target": 1.0}}, r"--target=1.0 must be in \(0, 1\)"),
        ({"aug": {"p": 1.5}}, r"--p=1.5 must be in \[0, 1\]"),
        ({"aug": {"pipe": "xyz"}}, "--augpipe=xyz is not one of"),
        ({"aug": {"mode": "always"}}, "--aug=always"),
        ({"val": 1.0}, r"--val=1.0 must be in \[0, 1\)"),
        ({"kimg": 0}, "--kimg=0.0 must be positive"),
        ({"gpus": 0}, "--gpus=0 must be at least 1"),
        ({"optim": {"lr": 0}}, "optim.lr=0.0 must be positive"),
        ({"model": {"d_architecture": "deep"}}, "model.d_architecture=deep is not one of orig, skip, resnet"),
        ({"fp32": True, "bf16": True}, "contradict"),
        ({"aug": {"p_max": 0.5, "p": 0.6}}, "exceeds --p-max"),
    ],
)
def test_validation_messages(overrides, message):
    cfg = config.load_preset("tiny")
    cfg.data = "x"
    config.apply_overrides(cfg, overrides, source="test")
    with pytest.raises(UserError, match=message):
        config_checks.validate(cfg)


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"aug": {"mode": "fixed"}}, "--aug=fixed requires --p"),
        ({"aug": {"p": 0.2}}, "--p can only be given with --aug=fixed"),
        ({"aug": {"mode": "noaug", "target": 0.7}}, "--target can only be given with --aug=ada"),
        ({"aug": {"mode": "noaug", "pipe": "bg"}}, "--augpipe cannot be given with --aug=noaug"),
        ({"aug": {"mode": "fixed", "p": 0.2, "ada_kimg": 10}}, "--ada-kimg can only be given with --aug=ada"),
    ],
)
def test_flag_combinations_the_official_code_refuses(given, message):
    with pytest.raises(UserError, match=message):
        config_checks.check_flag_combinations(given)


def test_valid_flag_combinations_pass():
    config_checks.check_flag_combinations({"aug": {"mode": "fixed", "p": 0.3, "pipe": "bg"}})
    config_checks.check_flag_combinations({"aug": {"target": 0.7, "ada_kimg": 100}})


def test_rv_heuristic_needs_a_validation_split_and_metrics_are_checked():
    cfg = config.load_preset("tiny")
    cfg.data = "x"
    config.apply_overrides(cfg, {"val": 0.0, "aug": {"heuristic": "rv"}}, source="test")
    with pytest.raises(UserError, match="--ada-heuristic=rv needs"):
        config_checks.validate(cfg)
    cfg.aug.heuristic = "rt"
    cfg.metrics = ["fid50x"]
    with pytest.raises(UserError, match="--metrics"):
        config_checks.validate(cfg)


def test_augmentation_needs_8_pixels():
    cfg = config.load_preset("tiny")
    with pytest.raises(UserError, match="at least 8x8"):
        config_checks.check_against_data(cfg, 4)
    cfg.aug.mode = "noaug"
    config_checks.check_against_data(cfg, 4)
