"""Training configuration: typed dataclasses, YAML presets, the `auto` rules.

A run's configuration is built in four layers, each overriding the one before:

1. the dataclass defaults below,
2. a preset: configs/NAME.yaml, shipped inside the package as `ada.presets`, or any YAML file
   of the same form (`--cfg`),
3. for presets with `auto_rules: true`, values derived from the data resolution and GPU
   count (`auto_rules`, the rules of the official `auto` config),
4. the command-line flags and `--set KEY=VALUE` overrides the user gave.

Every field is declared once, with `option(...)`: its default, its help text, its command-line
flag (the official name where the official train.py has one), its allowed values and whether it
defines the run (a continued run may not change it). The command line (`ada.options`), `--set`,
`--help-config`, the type checks of presets (`ada.field_types`) and the range checks of
`ada.config_checks.validate` all read that declaration. `validate` is the one place that checks a
resolved configuration; it raises `UserError` with a message that names the option and what
would be accepted.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ada import field_types
from ada.checks import MAX_SEED
from ada.errors import UserError
from augment import PRESETS as AUGPIPE_PRESETS

# The package that holds configs/*.yaml once installed (pyproject.toml maps configs/ onto it).
PRESET_PACKAGE = "ada.presets"
# `--cfg=auto` on a machine without CUDA: the official auto schedule is sized for GPUs.
CPU_PRESET = "cpu"


@dataclass(frozen=True)
class Option:
    """The declaration of one config field; see the module docstring for what is derived from it.

    help: one line; `{builtins}` and `{presets}` are filled in with the built-in dataset and preset names.
    flag: the command-line flag, or None for fields set only by presets and `--set`.
    official: the flag has the name and meaning of the official stylegan2-ada-pytorch train.py option.
    choices: the allowed values. ge/gt/le/lt: bounds of a number (None values are not checked); every
      number must also be finite.
    path: the value names a file or directory, so an empty one (`--resume=`) is refused.
    defines_run: a run continued from its directory (`--resume RUN_DIR`) refuses a different value.
    settable: whether `--set` may give it (`cfg` is chosen with `--cfg`).
    default_text: what --help shows as the default, where the field's default needs words.
    """

    help: str
    flag: str | None = None
    official: bool = False
    choices: tuple[str, ...] | None = None
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    metavar: str | None = None
    path: bool = False
    defines_run: bool = True
    settable: bool = True
    default_text: str | None = None


def option(default: Any = dataclasses.MISSING, *, factory: Any = dataclasses.MISSING, **declaration: Any) -> Any:
    """A dataclass field with its `Option` declaration."""
    return field(default=default, default_factory=factory, metadata={"option": Option(**declaration)})


@dataclass
class ModelConfig:
    z_dim: int = option(512, ge=1, help="Dimension of the latent z")
    w_dim: int = option(512, ge=1, help="Dimension of the intermediate latent w")
    map_layers: int = option(8, ge=1, help="Layers of the mapping network")
    channel_base: int = option(32768, ge=1, help="Feature maps at resolution r: min(channel_base / r, channel_max)")
    channel_max: int = option(512, ge=1, help="Most feature maps of any layer")
    num_fp16_res: int = option(4, ge=0, help="Highest resolutions computed in reduced precision on a GPU")
    conv_clamp: float | None = option(256, gt=0, help="Clamp of the reduced-precision activations (null: none)")
    mbstd_group: int = option(4, ge=0, help="Group size of D's minibatch-stddev layer (0: off)")
    d_architecture: str = option("resnet", choices=("orig", "skip", "resnet"), help="Discriminator architecture")


@dataclass
class LossConfig:
    r1_gamma: float = option(10.0, flag="--gamma", official=True, ge=0, metavar="FLOAT",
                             help="R1 regularisation weight")
    pl_weight: float = option(2.0, ge=0, help="Path-length regularisation weight (0: off)")
    pl_decay: float = option(0.01, ge=0, le=1, help="Decay of the path-length running mean")
    pl_batch_shrink: int = option(2, ge=1, help="Batch divisor of the path-length phase")
    style_mixing: float = option(0.9, ge=0, le=1, help="Probability of style mixing")
    # Lazy regularisation: R1 every d_reg_interval D steps, path length every g_reg_interval G steps.
    g_reg_interval: int = option(4, ge=1, help="G steps between path-length regularisation steps")
    d_reg_interval: int = option(16, ge=1, help="D steps between R1 regularisation steps")
    # LeCam penalty on D's logits (ada/lecam.py): its weight (0: off) and the decay of its anchors.
    lecam: float = option(0.0, flag="--lecam", ge=0, metavar="FLOAT", default_text="0, off",
                          help="LeCam penalty weight on D's logits (Tseng et al. 2021)")
    lecam_decay: float = option(0.99, flag="--lecam-decay", ge=0, lt=1, metavar="FLOAT",
                                help="EMA decay of the LeCam anchors")


@dataclass
class OptimConfig:
    lr: float = option(0.0025, gt=0, help="Adam learning rate of G and D")
    beta1: float = option(0.0, ge=0, lt=1, help="Adam beta1")
    beta2: float = option(0.99, ge=0, lt=1, help="Adam beta2")
    eps: float = option(1e-8, gt=0, help="Adam epsilon")
    ema_kimg: float = option(10.0, ge=0, help="Half-life of G_ema in thousands of images")
    ema_rampup: float | None = option(None, gt=0, help="G_ema half-life ramp-up as a share of the images so far "
                                                       "(null: none)")


@dataclass
class AugConfig:
    mode: str = option("ada", flag="--aug", official=True, choices=("ada", "noaug", "fixed", "diffaug"),
                       help="Augmentation mode (diffaug: DiffAugment, Zhao et al. 2020)")
    pipe: str = option("bgc", flag="--augpipe", official=True, choices=tuple(AUGPIPE_PRESETS),
                       help="Augmentation pipeline")
    p: float = option(0.0, flag="--p", official=True, ge=0, le=1, metavar="FLOAT",
                      help="Augmentation probability for --aug=fixed")
    target: float = option(0.6, flag="--target", official=True, gt=0, lt=1, metavar="FLOAT",
                           help="ADA target value of the overfitting heuristic")
    ada_interval: int = option(4, flag="--ada-interval", ge=1, metavar="INT", help="Minibatches between p updates")
    # None: 500, or 100 in a transfer run for a faster reaction, as the official code does.
    ada_kimg: float | None = option(None, flag="--ada-kimg", gt=0, metavar="KIMG",
                                    default_text="500; 100 when fine-tuning",
                                    help="ADA speed: kimg for p to move by 1")
    heuristic: str = option("rt", flag="--ada-heuristic", choices=("rt", "rv"),
                            help="Overfitting heuristic that drives p")
    p_max: float = option(1.0, flag="--p-max", gt=0, le=1, metavar="FLOAT", help="Upper bound of the adaptive p")
    # Thousands of images before p may move: D wins early whatever it memorises.
    ada_start_kimg: float = option(0.0, flag="--ada-start-kimg", ge=0, metavar="KIMG",
                                   help="kimg before the adaptive p may move")
    # Kornia augmentations after the pipeline, applied with probability p: 'perspective:0.3,blur'.
    extra: str | None = option(None, flag="--aug-extra", metavar="LIST", default_text="none",
                               help="Kornia augmentations after the pipeline, with probability p: "
                                    "perspective[:0.3], erasing[:0.33], blur[:1], sharpness[:0.5]")
    # DiffAugment's policies (augment/diffaug.py), applied to every image: the whole pipe with
    # --aug=diffaug (None: all three), or run before ADA's pipe with --aug=ada or fixed (None: off).
    diffaug: str | None = option(None, flag="--diffaug-policy", metavar="LIST",
                                 default_text="color,translation,cutout with --aug=diffaug; none otherwise",
                                 help="DiffAugment policies: the pipe with --aug=diffaug, or a fixed stage "
                                      "before ADA's pipe with --aug=ada or fixed")
    # APA: reals replaced by generated images with a probability that ADA's law adapts; its target
    # and speed (None: those of ADA, target and ada_kimg).
    apa: bool = option(False, flag="--apa", help="Adaptive pseudo augmentation (APA, Jiang et al. 2021)")
    apa_target: float | None = option(None, flag="--apa-target", gt=0, lt=1, metavar="FLOAT", default_text="--target",
                                      help="APA target of the overfitting heuristic")
    apa_kimg: float | None = option(None, flag="--apa-kimg", gt=0, metavar="KIMG", default_text="--ada-kimg",
                                    help="APA speed: kimg for p_apa to move by 1")


@dataclass
class WandbConfig:
    project: str | None = option(None, flag="--wandb-project", defines_run=False, metavar="NAME",
                                 default_text="off", help="Log to this wandb project")
    entity: str | None = option(None, flag="--wandb-entity", defines_run=False, metavar="NAME",
                                default_text="your wandb default", help="wandb entity (team or user)")
    group: str | None = option(None, flag="--wandb-group", defines_run=False, metavar="NAME",
                               default_text="the dataset name", help="wandb group")
    name: str | None = option(None, flag="--wandb-name", defines_run=False, metavar="NAME",
                              default_text="the run directory name", help="wandb run name")
    mode: str | None = option(None, flag="--wandb-mode", defines_run=False, choices=("online", "offline", "disabled"),
                              default_text="online", help="wandb mode")


@dataclass
class TrainConfig:
    data: str = option("", flag="--data", official=True, metavar="PATH", default_text="required",
                       help="Training data: an image folder, a dataset zip, or a built-in name ({builtins})")
    outdir: str = option("runs", flag="--outdir", official=True, defines_run=False, metavar="DIR", path=True,
                         help="Where to make run directories")
    cfg: str = option("auto", flag="--cfg", official=True, settable=False, metavar="NAME|FILE",
                      default_text="auto: the cpu preset without a GPU",
                      help="Preset ({presets}) or a YAML file of the same form")
    auto_rules: bool = option(False, help="Derive batch, gamma, channels, lr and EMA from the data resolution and "
                                          "GPU count (the official auto config)")
    gpus: int = option(1, flag="--gpus", official=True, ge=1, defines_run=False, metavar="INT",
                       help="Number of GPUs (processes)")
    seed: int = option(0, flag="--seed", official=True, ge=0, le=MAX_SEED, metavar="INT", help="Random seed")
    kimg: float = option(25000.0, flag="--kimg", official=True, gt=0, defines_run=False, metavar="KIMG",
                         help="Training length in thousands of real images")
    tick: float = option(4.0, flag="--tick", gt=0, defines_run=False, metavar="KIMG",
                         help="Progress report interval in kimg")
    snap: int = option(50, flag="--snap", official=True, ge=1, defines_run=False, metavar="TICKS",
                       help="Snapshot interval in ticks")
    metrics: list[str] = option(factory=lambda: ["fid50k_full"], flag="--metrics", official=True, defines_run=False,
                                metavar="LIST", help="Comma-separated metrics, e.g. fid50k_full,kid50k_full, or none")
    features: str | None = option(None, flag="--features", defines_run=False, metavar="PATH", path=True,
                                  default_text="Inception", help="TorchScript feature network for the metrics")
    pr_net: str | None = option(None, flag="--pr-net", defines_run=False, metavar="PATH", path=True,
                                default_text="the --features network",
                                help="TorchScript feature network for precision/recall (NVIDIA's vgg16.pt)")
    ppl_net: str | None = option(None, flag="--ppl-net", defines_run=False, metavar="PATH", path=True,
                                 default_text="$ADA_PPL_NET", help="TorchScript network for the PPL distance")
    # TensorBoard event files in the run directory; None: on when the tensorboard package is installed.
    tensorboard: bool | None = option(None, flag="--tensorboard", defines_run=False,
                                      default_text="on when tensorboard is installed",
                                      help="TensorBoard event files in the run directory")
    batch: int = option(32, flag="--batch", official=True, ge=1, metavar="INT", help="Total batch size over all GPUs")
    # Images per GPU per pass; the rest of the per-GPU share is gradient accumulation. None: all at once.
    batch_gpu: int | None = option(None, flag="--batch-gpu", ge=1, defines_run=False, metavar="INT",
                                   help="Images per GPU per pass (gradient accumulation)")
    cond: bool = option(False, flag="--cond", official=True, help="Train a class-conditional model")
    subset: int | None = option(None, flag="--subset", official=True, ge=1, metavar="INT", default_text="all",
                                help="Train on a fixed random subset of N images")
    mirror: bool = option(False, flag="--mirror", official=True, help="Add x-flipped copies of the images")
    val: float = option(0.05, flag="--val", ge=0, lt=1, metavar="FLOAT",
                        help="Share of images withheld for the r_v monitor")
    workers: int = option(3, flag="--workers", official=True, ge=0, defines_run=False, metavar="INT",
                          help="Data loader worker processes")
    resume: str | None = option(None, flag="--resume", official=True, defines_run=False, metavar="PATH", path=True,
                                default_text="none",
                                help="Continue a run directory, or fine-tune from a checkpoint or official pickle")
    freezed: int = option(0, flag="--freezed", official=True, ge=0, metavar="INT",
                          help="Freeze-D: freeze the first N layers of D")
    fp32: bool = option(False, flag="--fp32", official=True, defines_run=False, help="Disable mixed precision")
    bf16: bool = option(False, flag="--bf16", defines_run=False, help="Mixed precision in bfloat16 instead of float16")
    nhwc: bool = option(False, flag="--nhwc", official=True, defines_run=False,
                        help="Channels-last memory format in the reduced-precision layers")
    allow_tf32: bool = option(False, flag="--allow-tf32", official=True, defines_run=False,
                              help="Allow TF32 matmuls and convolutions")
    nobench: bool = option(False, flag="--nobench", official=True, defines_run=False,
                           help="Disable the cuDNN benchmark mode")
    # torch.compile the networks for Gmain and Dmain (the regularisation phases need double
    # backward, which compiled graphs do not support, so they run eagerly on the same weights).
    compile: bool = option(False, flag="--compile", defines_run=False, help="torch.compile G and D for the main phases")
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    aug: AugConfig = field(default_factory=AugConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------- the declarations


@dataclass(frozen=True)
class Setting:
    """One leaf field of TrainConfig: its dotted key ("loss.r1_gamma"), type, default and declaration."""

    key: str
    type: Any
    default: Any
    option: Option

    @property
    def name(self) -> str:
        """How messages name it: the flag, or the `--set` key."""
        return self.option.flag or self.key


def _defaults(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def _walk(cls: type, prefix: str = "") -> Iterator[Setting]:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _walk(hints[f.name], f"{prefix}{f.name}.")
        else:
            yield Setting(prefix + f.name, hints[f.name], _defaults(f), f.metadata["option"])


@functools.cache
def settings() -> dict[str, Setting]:
    """Every leaf field of TrainConfig by dotted key, in declaration order."""
    return {s.key: s for s in _walk(TrainConfig)}


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'aug': {'mode': 'ada'}} -> {'aug.mode': 'ada'}."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict) and f"{prefix}{key}" not in settings():
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def nest(flat: dict[str, Any]) -> dict[str, Any]:
    """{'aug.mode': 'ada'} -> {'aug': {'mode': 'ada'}}."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


# ----------------------------------------------------------------------------- presets


def available_presets() -> list[str]:
    return sorted(p.name[: -len(".yaml")] for p in importlib.resources.files(PRESET_PACKAGE).iterdir()
                  if p.name.endswith(".yaml"))


def is_preset_file(spec: str) -> bool:
    """`--cfg` names a YAML file rather than a preset."""
    return spec.endswith((".yaml", ".yml")) or "/" in spec or "\\" in spec


def _preset_text(spec: str) -> tuple[str, str]:
    """(where it was read from, its YAML text) for a preset name or a YAML file path."""
    choose = f"choose one of: {', '.join(available_presets())}, or give a YAML file"
    if is_preset_file(spec):
        path = Path(spec).expanduser()
        if not path.is_file():
            raise UserError(f"--cfg={spec}: no such file; {choose}")
        try:
            return str(path), path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"--cfg={spec}: cannot read it ({exc})") from None
    resource = importlib.resources.files(PRESET_PACKAGE) / f"{spec}.yaml"
    if not spec or not resource.is_file():
        raise UserError(f"unknown preset --cfg={spec}; {choose}")
    return f"preset {spec}", resource.read_text(encoding="utf-8")


def preset_values(spec: str) -> dict[str, Any]:
    """The mapping a preset name or YAML file holds, not yet checked against the fields."""
    source, text = _preset_text(spec)
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        raise UserError(f"{source}: not valid YAML ({where}{getattr(exc, 'problem', None) or exc})") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise UserError(f"{source}: a preset is a mapping of options (key: value), not a {type(values).__name__}")
    return values


def load_preset(spec: str) -> TrainConfig:
    """The dataclass defaults overridden by a preset (configs/NAME.yaml) or a YAML file of the same form.

    A file is recorded (`cfg`) by its absolute path, so that the run says which file it came from.
    """
    values = preset_values(spec)
    cfg = TrainConfig(cfg=str(Path(spec).expanduser().resolve()) if is_preset_file(spec) else spec)
    apply_overrides(cfg, values, source=spec if is_preset_file(spec) else f"preset {spec}")
    return cfg


def preset_label(spec: str) -> str:
    """A preset's short name for run directory names and tables: the name, or a YAML file's stem."""
    return Path(spec).stem if is_preset_file(spec) else spec


@functools.cache
def preset_decided() -> frozenset[str]:
    """Dotted keys that some preset or the auto rules set: their defaults come from the preset."""
    keys = set(flatten(auto_rules(256, 1)))
    for name in available_presets():
        keys.update(flatten(preset_values(name)))
    return frozenset(keys)


def resolve(preset: str, overrides: dict[str, Any], resolution: int | None) -> TrainConfig:
    """The layers of the module docstring: the preset, its auto rules at `resolution` (left out while
    the resolution is unknown), then `overrides` (the user's flags). Not validated."""
    if "batch" in overrides and "batch_gpu" not in overrides:
        # A batch the user chose runs in one pass per GPU, as the official --batch does.
        overrides = {**overrides, "batch_gpu": None}
    cfg = load_preset(preset)
    if cfg.auto_rules and resolution is not None:
        apply_overrides(cfg, auto_rules(resolution, overrides.get("gpus", cfg.gpus)), source="auto rules")
    apply_overrides(cfg, overrides, source="command line")
    return cfg


def apply_overrides(cfg: TrainConfig, values: dict[str, Any], source: str) -> None:
    """Set fields from a (nested) dict, refusing unknown keys and values of the wrong type."""
    known = settings()
    for key, value in flatten(values).items():
        setting = known.get(key)
        if any(k.startswith(key + ".") for k in known):
            raise UserError(f"{source}: {key!r} must be a mapping of options")
        if setting is None or not setting.option.settable:
            parent = key.rpartition(".")[0]
            depth = key.count(".")
            siblings = sorted({".".join(k.split(".")[: depth + 1]) for k in known
                               if k.startswith(f"{parent}.") or not parent} - {"cfg"})
            raise UserError(f"{source}: unknown option {key!r}; known: {', '.join(siblings)}")
        try:
            value = field_types.coerce(setting, value)
        except ValueError as exc:
            raise UserError(f"{source}: {key}: {exc}") from None
        *parents, leaf = key.split(".")
        node: Any = cfg
        for part in parents:
            node = getattr(node, part)
        setattr(node, leaf, value)


def get(cfg: TrainConfig, key: str) -> Any:
    """A field by dotted key."""
    node: Any = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node


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
