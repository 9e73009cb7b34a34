"""Training configuration: typed dataclasses, YAML presets, the `auto` rules, validation.

A run's configuration is built in four layers, each overriding the one before:

1. the dataclass defaults below,
2. a preset from configs/NAME.yaml (`--cfg`),
3. for presets with `auto_rules: true`, values derived from the data resolution and GPU
   count (`auto_rules`, the rules of the official `auto` config),
4. the command-line flags the user gave.

`validate` is the one place that checks the result; it raises `UserError` with a message
that names the option and what would be accepted.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ada.errors import UserError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"

AUG_MODES = ("ada", "noaug", "fixed", "diffaug")
ADA_HEURISTICS = ("rt", "rv")
D_ARCHITECTURES = ("orig", "skip", "resnet")


@dataclass
class ModelConfig:
    z_dim: int = 512
    w_dim: int = 512
    map_layers: int = 8
    channel_base: int = 32768
    channel_max: int = 512
    num_fp16_res: int = 4
    conv_clamp: float | None = 256
    mbstd_group: int = 4
    d_architecture: str = "resnet"


@dataclass
class LossConfig:
    r1_gamma: float = 10.0
    pl_weight: float = 2.0
    pl_decay: float = 0.01
    pl_batch_shrink: int = 2
    style_mixing: float = 0.9
    # Lazy regularisation: R1 every d_reg_interval D steps, path length every g_reg_interval G steps.
    g_reg_interval: int = 4
    d_reg_interval: int = 16
    # LeCam penalty on D's logits (ada/lecam.py): its weight (0: off) and the decay of its anchors.
    lecam: float = 0.0
    lecam_decay: float = 0.99


@dataclass
class OptimConfig:
    lr: float = 0.0025
    beta1: float = 0.0
    beta2: float = 0.99
    eps: float = 1e-8
    ema_kimg: float = 10.0
    ema_rampup: float | None = None


@dataclass
class AugConfig:
    mode: str = "ada"
    pipe: str = "bgc"
    p: float = 0.0
    target: float = 0.6
    ada_interval: int = 4
    # None: 500, or 100 in a transfer run for a faster reaction, as the official code does.
    ada_kimg: float | None = None
    heuristic: str = "rt"
    p_max: float = 1.0
    # Thousands of images before p may move: D wins early whatever it memorises.
    ada_start_kimg: float = 0.0
    # Kornia augmentations after the pipeline, applied with probability p: 'perspective:0.3,blur'.
    extra: str | None = None
    # mode 'diffaug': DiffAugment's policies (augment/diffaug.py), applied to every image.
    diffaug_policy: str = "color,translation,cutout"
    # APA: reals replaced by generated images with a probability that ADA's law adapts; its target
    # and speed (None: those of ADA, target and ada_kimg).
    apa: bool = False
    apa_target: float | None = None
    apa_kimg: float | None = None


@dataclass
class WandbConfig:
    project: str | None = None
    entity: str | None = None
    group: str | None = None
    name: str | None = None
    mode: str | None = None


@dataclass
class TrainConfig:
    data: str = ""
    outdir: str = "runs"
    cfg: str = "auto"
    auto_rules: bool = False
    gpus: int = 1
    seed: int = 0
    dry_run: bool = False
    kimg: float = 25000.0
    tick: float = 4.0
    snap: int = 50
    metrics: list[str] = field(default_factory=lambda: ["fid50k_full"])
    features: str | None = None
    pr_net: str | None = None
    ppl_net: str | None = None
    # TensorBoard event files in the run directory; None: on when the tensorboard package is installed.
    tensorboard: bool | None = None
    batch: int = 32
    # Images per GPU per pass; the rest of the per-GPU share is gradient accumulation. None: all at once.
    batch_gpu: int | None = None
    cond: bool = False
    subset: int | None = None
    mirror: bool = False
    val: float = 0.05
    workers: int = 3
    resume: str | None = None
    freezed: int = 0
    fp32: bool = False
    bf16: bool = False
    nhwc: bool = False
    allow_tf32: bool = False
    nobench: bool = False
    # torch.compile the networks for Gmain and Dmain (the regularisation phases need double
    # backward, which compiled graphs do not support, so they run eagerly on the same weights).
    compile: bool = False
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    aug: AugConfig = field(default_factory=AugConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def available_presets() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def load_preset(name: str) -> TrainConfig:
    """The dataclass defaults overridden by configs/NAME.yaml."""
    choose = f"choose one of: {', '.join(available_presets())}"
    if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
        # A path would otherwise be joined onto configs/ (an absolute one replacing it).
        raise UserError(f"--cfg={name}: give the name of a preset in configs/, not a file path; {choose}")
    path = CONFIG_DIR / f"{name}.yaml"
    if not path.is_file():
        raise UserError(f"unknown preset --cfg={name}; {choose}")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(values, dict):
        raise UserError(f"{path}: a preset must be a mapping of options, not a {type(values).__name__}")
    cfg = TrainConfig(cfg=name)
    apply_overrides(cfg, values, source=str(path))
    return cfg


def resolve(preset: str, overrides: dict[str, Any], resolution: int | None) -> TrainConfig:
    """The layers of the module docstring: configs/PRESET.yaml, its auto rules at `resolution` (left
    out while the resolution is unknown), then `overrides` (the user's flags). Not validated."""
    if "batch" in overrides and "batch_gpu" not in overrides:
        # A batch the user chose runs in one pass per GPU, as the official --batch does.
        overrides = {**overrides, "batch_gpu": None}
    cfg = load_preset(preset)
    if cfg.auto_rules and resolution is not None:
        apply_overrides(cfg, auto_rules(resolution, overrides.get("gpus", cfg.gpus)), source="auto rules")
    apply_overrides(cfg, overrides, source="command line")
    return cfg


def apply_overrides(cfg: Any, values: dict[str, Any], source: str) -> None:
    """Set dataclass fields from a (nested) dict, refusing unknown keys and values of the wrong type."""
    known = {f.name: f for f in dataclasses.fields(cfg)}
    hints = typing.get_type_hints(type(cfg))
    for key, value in values.items():
        if key not in known:
            raise UserError(f"{source}: unknown option {key!r}; known: {', '.join(sorted(known))}")
        current = getattr(cfg, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise UserError(f"{source}: {key!r} must be a mapping of options")
            apply_overrides(current, value, f"{source}:{key}")
        else:
            expected = _type_mismatch(hints[key], value)
            if expected:
                raise UserError(f"{source}: {key!r} is {value!r}, which is not {expected}")
            setattr(cfg, key, value)


_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "text"}


def _type_mismatch(hint: Any, value: Any) -> str | None:
    """None if `value` fits the field type `hint`, else what the field takes, in words."""
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    for option in options:
        if option is type(None) and value is None:
            return None
        if typing.get_origin(option) is list:
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                return None
        elif option is float:
            if isinstance(value, int | float) and not isinstance(value, bool):
                return None
        elif option is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return None
        elif isinstance(value, option):
            return None
    names = [
        "empty (null)" if o is type(None) else "a list of names" if typing.get_origin(o) is list else _TYPE_NAMES[o]
        for o in options
    ]
    return " or ".join(names)


def auto_rules(resolution: int, gpus: int) -> dict[str, Any]:
    """The official `auto` config: sizes and rates as functions of resolution and GPU count."""
    batch = max(min(gpus * min(4096 // resolution, 32), 64), gpus)
    fmaps = 1 if resolution >= 512 else 0.5
    return {
        "batch": batch,
        "batch_gpu": batch // gpus,
        "model": {"mbstd_group": min(batch // gpus, 4), "channel_base": int(fmaps * 32768)},
        "optim": {"lr": 0.002 if resolution >= 1024 else 0.0025, "ema_kimg": batch * 10 / 32},
        "loss": {"r1_gamma": r1_gamma_heuristic(resolution, batch)},
    }


def r1_gamma_heuristic(resolution: int, batch: int) -> float:
    """R1 weight that scales with the image area and shrinks with the batch: 0.0002 res^2 / batch."""
    return 0.0002 * resolution**2 / batch


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(message)


def validate(cfg: TrainConfig) -> None:
    """Every check on a resolved configuration, with a message a user can act on."""
    from augment import PRESETS as AUGPIPE_PRESETS

    _check(bool(cfg.data), "--data is required: a folder of images, a dataset zip, or a built-in name")
    _check_finite(cfg)
    _check(0 <= cfg.seed < 2**32, f"--seed={cfg.seed} must be in 0..{2**32 - 1}")
    for flag, value in (("--outdir", cfg.outdir), ("--resume", cfg.resume), ("--features", cfg.features),
                        ("--ppl-net", cfg.ppl_net)):
        _check(value is None or bool(value.strip()), f"{flag}= is empty; give a path, or leave the option out")
    _check(cfg.gpus >= 1, f"--gpus={cfg.gpus} must be at least 1")
    _check(cfg.kimg > 0, f"--kimg={cfg.kimg} must be positive")
    _check(cfg.tick > 0, f"--tick={cfg.tick} must be positive")
    _check(cfg.snap >= 1, f"--snap={cfg.snap} must be at least 1 (ticks between snapshots)")
    _check(cfg.batch >= 1, f"--batch={cfg.batch} must be at least 1")
    _check(
        cfg.batch % cfg.gpus == 0,
        f"--batch={cfg.batch} is not divisible by --gpus={cfg.gpus}; use a multiple of the GPU count",
    )
    per_gpu = cfg.batch // cfg.gpus
    batch_gpu = cfg.batch_gpu or per_gpu
    _check(
        batch_gpu >= 1 and per_gpu % batch_gpu == 0,
        f"--batch-gpu={cfg.batch_gpu} must divide the per-GPU batch {per_gpu} (--batch / --gpus)",
    )
    group = min(cfg.model.mbstd_group, batch_gpu)
    _check(
        group == 0 or batch_gpu % group == 0,
        f"per-GPU batch {batch_gpu} is not divisible by the minibatch-stddev group {group}; "
        "use a batch that is a multiple of the group size",
    )
    _check(cfg.subset is None or cfg.subset >= 1, f"--subset={cfg.subset} must be at least 1")
    _check(0 <= cfg.val < 1, f"--val={cfg.val} must be a fraction in [0, 1)")
    _check(cfg.workers >= 0, f"--workers={cfg.workers} must be >= 0")
    _check(cfg.freezed >= 0, f"--freezed={cfg.freezed} must be >= 0")
    _check(cfg.loss.r1_gamma >= 0, f"--gamma={cfg.loss.r1_gamma} must be >= 0")
    _check(cfg.model.d_architecture in D_ARCHITECTURES, f"d_architecture must be one of {D_ARCHITECTURES}")
    _check(cfg.model.map_layers >= 1, "map_layers must be at least 1")
    _check(cfg.model.z_dim >= 1 and cfg.model.w_dim >= 1, "z_dim and w_dim must be at least 1")
    _check(cfg.model.channel_base >= 1 and cfg.model.channel_max >= 1, "channel_base and channel_max must be >= 1")
    _check(cfg.optim.lr > 0, f"lr={cfg.optim.lr} must be positive")
    _check(not (cfg.fp32 and cfg.bf16), "--fp32 and --bf16 contradict each other; give one")
    aug = cfg.aug
    _check(aug.mode in AUG_MODES, f"--aug={aug.mode} is not one of {', '.join(AUG_MODES)}")
    _check(aug.pipe in AUGPIPE_PRESETS, f"--augpipe={aug.pipe} is not one of {', '.join(AUGPIPE_PRESETS)}")
    _check(0 <= aug.p <= 1, f"--p={aug.p} must lie in [0, 1]")
    _check(0 < aug.target < 1, f"--target={aug.target} must lie strictly between 0 and 1")
    _check(aug.ada_interval >= 1, f"--ada-interval={aug.ada_interval} must be at least 1")
    _check(aug.ada_kimg is None or aug.ada_kimg > 0, f"--ada-kimg={aug.ada_kimg} must be positive")
    _check(aug.ada_start_kimg >= 0, f"--ada-start-kimg={aug.ada_start_kimg} must be >= 0")
    _check(aug.heuristic in ADA_HEURISTICS, f"--ada-heuristic={aug.heuristic} is not one of rt, rv")
    _check_beyond_ada(cfg)
    _check(0 < aug.p_max <= 1, f"--p-max={aug.p_max} must lie in (0, 1]")
    _check(aug.p <= aug.p_max, f"--p={aug.p} exceeds --p-max={aug.p_max}")
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
    wandb_modes = (None, "online", "offline", "disabled")
    _check(cfg.wandb.mode in wandb_modes, f"--wandb-mode={cfg.wandb.mode} is not one of online, offline, disabled")


# Config field -> the command-line flag that sets it, where they differ, for messages.
_FLAG_NAMES = {"loss.r1_gamma": "--gamma", "aug.p": "--p", "aug.target": "--target", "aug.ada_kimg": "--ada-kimg",
               "aug.p_max": "--p-max", "loss.lecam": "--lecam", "loss.lecam_decay": "--lecam-decay",
               "aug.apa_target": "--apa-target", "aug.apa_kimg": "--apa-kimg"}


def _check_beyond_ada(cfg: TrainConfig) -> None:
    """LeCam, DiffAugment and APA (numbers are finite by now: `_check_finite`)."""
    from augment.diffaug import parse_policy

    loss, aug = cfg.loss, cfg.aug
    _check(loss.lecam >= 0, f"--lecam={loss.lecam} must be >= 0 (0 turns the LeCam penalty off)")
    _check(0 <= loss.lecam_decay < 1, f"--lecam-decay={loss.lecam_decay} must lie in [0, 1)")
    try:
        parse_policy(aug.diffaug_policy)
    except ValueError as exc:
        raise UserError(f"--diffaug-policy: {exc}") from None
    _check(aug.apa_target is None or 0 < aug.apa_target < 1,
           f"--apa-target={aug.apa_target} must lie strictly between 0 and 1")
    _check(aug.apa_kimg is None or aug.apa_kimg > 0, f"--apa-kimg={aug.apa_kimg} must be positive")


def _check_finite(cfg: Any, prefix: str = "") -> None:
    """Every number in the configuration is finite: inf or nan (from a flag or a preset) has no meaning
    as a length, weight or rate, and would train with, e.g., every R1 step skipped."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        name = prefix + f.name
        if dataclasses.is_dataclass(value):
            _check_finite(value, f"{name}.")
        elif isinstance(value, float) and not math.isfinite(value):
            flag = _FLAG_NAMES.get(name, "--" + name.replace("_", "-") if not prefix else name)
            raise UserError(f"{flag}={value} must be a finite number")


def check_flag_combinations(given: dict[str, Any]) -> None:
    """Options that only mean something together with others, refused as the official train.py does.

    `given` holds only what the user typed (nested like the config).
    """
    aug = given.get("aug", {})
    mode = aug.get("mode", "ada")
    _check(not (mode == "fixed" and "p" not in aug), "--aug=fixed requires --p")
    _check("p" not in aug or mode == "fixed", "--p can only be given with --aug=fixed")
    _check("target" not in aug or mode == "ada", "--target can only be given with --aug=ada")
    for key, flag in (("pipe", "--augpipe"), ("extra", "--aug-extra")):
        for other in ("noaug", "diffaug"):
            _check(key not in aug or mode != other, f"{flag} cannot be given with --aug={other}")
    _check("diffaug_policy" not in aug or mode == "diffaug", "--diffaug-policy can only be given with --aug=diffaug")
    for key, flag in (("apa_target", "--apa-target"), ("apa_kimg", "--apa-kimg")):
        _check(key not in aug or aug.get("apa") is True, f"{flag} can only be given with --apa=1")
    loss = given.get("loss", {})
    _check("lecam_decay" not in loss or loss.get("lecam", 0) > 0,
           "--lecam-decay can only be given with --lecam > 0")
    for key, flag in (("ada_kimg", "--ada-kimg"), ("ada_interval", "--ada-interval"),
                      ("ada_start_kimg", "--ada-start-kimg"),
                      ("heuristic", "--ada-heuristic"), ("p_max", "--p-max")):
        _check(key not in aug or mode == "ada", f"{flag} can only be given with --aug=ada")


def check_against_data(cfg: TrainConfig, resolution: int) -> None:
    """Checks that need the dataset: the networks' and the pipeline's size limits."""
    _check(4 <= resolution <= 1024, f"the data is {resolution}x{resolution}; resolutions 4..1024 are supported")
    _check(math.log2(resolution).is_integer(), f"the data resolution {resolution} is not a power of two")
    _check(
        resolution >= 8 or cfg.aug.mode in ("noaug", "diffaug"),
        f"the augmentation pipeline needs images of at least 8x8 (the data is {resolution}x{resolution}); "
        "use --aug=noaug",
    )
