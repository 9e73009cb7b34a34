"""Checks of a whole training configuration: each declared option within its bounds, the options
that only mean something together, and the limits that need the dataset. One UserError line each."""

from __future__ import annotations

from typing import Any

from ada.checks import check_finite, is_supported_resolution
from ada.config import Option, TrainConfig, get, settings
from ada.errors import UserError


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(message)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def bounds_text(option: Option, integer: bool = False) -> str | None:
    """The declared bounds in words: 'at least 1', 'positive', 'in [0, 1)', 'in 0..255' (integers)."""
    low = (option.ge, "[") if option.ge is not None else (option.gt, "(") if option.gt is not None else None
    high = (option.le, "]") if option.le is not None else (option.lt, ")") if option.lt is not None else None
    if low and high:
        if integer and low[1] == "[" and high[1] == "]":
            return f"in {_number(low[0])}..{_number(high[0])}"
        return f"in {low[1]}{_number(low[0])}, {_number(high[0])}{high[1]}"
    if low:
        if low[1] == "(":
            return "positive" if low[0] == 0 else f"greater than {_number(low[0])}"
        return f"at least {_number(low[0])}"
    if high:
        return f"at most {_number(high[0])}" if high[1] == "]" else f"less than {_number(high[0])}"
    return None


def _in_bounds(option: Option, value: float) -> bool:
    return (
        (option.ge is None or value >= option.ge) and (option.gt is None or value > option.gt)
        and (option.le is None or value <= option.le) and (option.lt is None or value < option.lt)
    )


def _check_declared(cfg: TrainConfig) -> None:
    """Each field against its declaration: choices, bounds, finite numbers and non-empty paths.

    inf or nan (from a flag, --set or a preset) has no meaning as a length, weight or rate, and would
    train with, e.g., every R1 step skipped.
    """
    for setting in settings().values():
        value, option = get(cfg, setting.key), setting.option
        if value is None:
            continue
        if option.choices is not None:
            _check(value in option.choices,
                   f"{setting.name}={value} is not one of {', '.join(option.choices)}")
        if option.path and isinstance(value, str):
            _check(bool(value.strip()), f"{setting.name}= is empty; give a path, or leave the option out")
        if isinstance(value, int | float) and not isinstance(value, bool):
            if isinstance(value, float):  # an int is exact at any size: its bounds say the rest
                check_finite(setting.name, value)
            _check(_in_bounds(option, value),
                   f"{setting.name}={value} must be {bounds_text(option, integer=isinstance(value, int))}")


def validate(cfg: TrainConfig) -> None:
    """Every check on a resolved configuration, with a message a user can act on."""
    _check(bool(cfg.data), "--data is required: a folder of images, a dataset zip, or a built-in name")
    _check_declared(cfg)
    _check(
        cfg.batch % cfg.gpus == 0,
        f"--batch={cfg.batch} is not divisible by --gpus={cfg.gpus}; use a multiple of the GPU count",
    )
    per_gpu = cfg.batch // cfg.gpus
    batch_gpu = cfg.batch_gpu or per_gpu
    _check(
        per_gpu % batch_gpu == 0,
        f"--batch-gpu={cfg.batch_gpu} must divide the per-GPU batch {per_gpu} (--batch / --gpus)",
    )
    group = min(cfg.model.mbstd_group, batch_gpu)
    _check(
        group == 0 or batch_gpu % group == 0,
        f"per-GPU batch {batch_gpu} is not divisible by the minibatch-stddev group {group}; "
        "use a batch that is a multiple of the group size",
    )
    _check(not (cfg.fp32 and cfg.bf16), "--fp32 and --bf16 contradict each other; give one")
    aug = cfg.aug
    _check(aug.p <= aug.p_max, f"--p={aug.p} exceeds --p-max={aug.p_max}")
    from augment.diffaug import parse_policy

    try:
        if aug.diffaug is not None:
            parse_policy(aug.diffaug)
    except ValueError as exc:
        raise UserError(f"--diffaug-policy: {exc}") from None
    from augment.extra_stages import parse_extra

    try:
        parse_extra(aug.extra)
    except ValueError as exc:
        raise UserError(f"--aug-extra: {exc}") from None
    _check(
        not (aug.mode == "ada" and aug.heuristic == "rv" and cfg.val == 0),
        "--ada-heuristic=rv needs withheld validation images; give --val > 0",
    )
    import metrics

    try:
        metrics.parse_metric_names(",".join(cfg.metrics))
    except ValueError as exc:
        raise UserError(f"--metrics: {exc}") from None
    from ada import tfevents

    _check(cfg.tensorboard is not True or tfevents.available(),
           "--tensorboard=1 needs the tensorboard package: pip install tensorboard (or drop the option)")


def check_flag_combinations(given: dict[str, Any]) -> None:
    """Options that only mean something together with others, refused as the official train.py does.

    `given` holds only what the user typed (nested like the config).
    """
    aug = given.get("aug", {})
    mode = aug.get("mode", "ada")
    _check(not (mode == "fixed" and "p" not in aug), "--aug=fixed requires --p")
    _check("p" not in aug or mode == "fixed", "--p can only be given with --aug=fixed")
    _check("target" not in aug or mode == "ada", "--target can only be given with --aug=ada")
    flag = {key: settings()[f"aug.{key}"].name for key in aug if f"aug.{key}" in settings()}
    for key in ("pipe", "extra"):  # options of ADA's pipeline
        for other in ("noaug", "diffaug"):
            _check(key not in aug or mode != other, f"{flag.get(key)} cannot be given with --aug={other}")
    _check("diffaug" not in aug or mode != "noaug",
           "--diffaug-policy cannot be given with --aug=noaug; use --aug=diffaug, or ada or fixed to run it before "
           "ADA's pipe")
    for key in ("apa_target", "apa_kimg"):
        _check(key not in aug or aug.get("apa") is True, f"{flag.get(key)} can only be given with --apa=1")
    loss = given.get("loss", {})
    _check("lecam_decay" not in loss or loss.get("lecam", 0) > 0, "--lecam-decay can only be given with --lecam > 0")
    for key in ("ada_kimg", "ada_interval", "ada_start_kimg", "heuristic", "p_max"):
        _check(key not in aug or mode == "ada", f"{flag.get(key)} can only be given with --aug=ada")


def check_against_data(cfg: TrainConfig, resolution: int) -> None:
    """Checks that need the dataset: the networks' and the pipeline's size limits."""
    _check(is_supported_resolution(resolution),
           f"the data is {resolution}x{resolution}; the side must be a power of two in 4..1024")
    _check(
        resolution >= 8 or cfg.aug.mode in ("noaug", "diffaug"),
        f"the augmentation pipeline needs images of at least 8x8 (the data is {resolution}x{resolution}); "
        "use --aug=noaug",
    )
