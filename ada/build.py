"""The trainer's parts, built from a config: networks, precision, optimisers and phases,
the augmentation module and the controllers that tune it."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from ada.config import AugConfig, TrainConfig
from ada.controller import ADA_KIMG, ADA_KIMG_TRANSFER, AdaController
from ada.discriminator import Discriminator
from ada.errors import UserError
from ada.loss_scaler import LossScaler
from ada.networks import Generator


@dataclass
class Phase:
    """One of Gmain, Greg, Dmain, Dreg: its module, the parameters it trains, and how often it runs."""

    name: str
    module: torch.nn.Module
    params: list[torch.nn.Parameter]
    opt: torch.optim.Optimizer
    interval: int
    scaler: LossScaler


def network_kwargs(cfg: TrainConfig, resolution: int, channels: int, c_dim: int) -> tuple[dict, dict]:
    """Constructor arguments of G and D for a fresh run (the official argument names)."""
    m = cfg.model
    common = dict(channel_base=m.channel_base, channel_max=m.channel_max, num_fp16_res=m.num_fp16_res,
                  conv_clamp=m.conv_clamp)
    G_kwargs = dict(
        z_dim=m.z_dim, c_dim=c_dim, w_dim=m.w_dim, img_resolution=resolution, img_channels=channels,
        mapping_kwargs=dict(num_layers=m.map_layers), synthesis_kwargs=dict(common),
    )
    D_kwargs = dict(
        c_dim=c_dim, img_resolution=resolution, img_channels=channels, architecture=m.d_architecture,
        epilogue_kwargs=dict(mbstd_group_size=m.mbstd_group), **common,
    )
    return apply_fp32(cfg, G_kwargs, D_kwargs)


def apply_fp32(cfg: TrainConfig, G_kwargs: dict, D_kwargs: dict) -> tuple[dict, dict]:
    """--fp32: no reduced-precision layers and no activation clamping, as the official option does."""
    G_kwargs, D_kwargs = copy.deepcopy(G_kwargs), copy.deepcopy(D_kwargs)
    if cfg.fp32:
        for kwargs in (G_kwargs["synthesis_kwargs"], D_kwargs):
            kwargs["num_fp16_res"] = 0
            kwargs["conv_clamp"] = None
    return G_kwargs, D_kwargs


def build_networks(cfg: TrainConfig, resolution: int, channels: int, c_dim: int) -> tuple[Generator, Discriminator]:
    G_kwargs, D_kwargs = network_kwargs(cfg, resolution, channels, c_dim)
    return Generator(**G_kwargs), Discriminator(**D_kwargs)


def apply_precision(cfg: TrainConfig, G: Generator, G_ema: Generator, D: Discriminator) -> None:
    """The reduced dtype (--bf16 or float16) and memory layout (--nhwc) of the mixed-precision blocks."""
    reduced = torch.bfloat16 if cfg.bf16 else torch.float16
    memory_format = torch.channels_last if cfg.nhwc else torch.contiguous_format
    for net in (G.synthesis, G_ema.synthesis, D):
        net.reduced_dtype = reduced
        net.memory_format = memory_format


def uses_float16(cfg: TrainConfig, G: Generator, D: Discriminator, device: torch.device) -> bool:
    """Whether any block computes in float16 (which needs loss scaling): CUDA, mixed precision, not bf16."""
    blocks = [*G.synthesis.children(), *D.children()]
    return device.type == "cuda" and not cfg.bf16 and any(getattr(b, "use_fp16", False) for b in blocks)


def freeze_d_layers(D: Discriminator, n: int) -> list[torch.nn.Parameter]:
    """Freeze-D: the first n block layers (highest resolutions) get no updates. Returns D's trainable params."""
    layers = D.layer_modules()
    if n > len(layers):
        raise UserError(f"--freezed={n} exceeds the discriminator's {len(layers)} layers")
    frozen = {id(p) for layer in layers[:n] for p in layer.parameters()}
    for layer in layers[:n]:
        layer.requires_grad_(False)
    return [p for p in D.parameters() if id(p) not in frozen]


def lazy_adam(params: list[torch.nn.Parameter], cfg: TrainConfig, reg_interval: int) -> torch.optim.Adam:
    """Adam whose lr and betas compensate for regularising only every `reg_interval` steps."""
    ratio = reg_interval / (reg_interval + 1)
    o = cfg.optim
    # Fused: one kernel per step, and it skips a step flagged by the loss scaler on the device.
    return torch.optim.Adam(
        params, lr=o.lr * ratio, betas=(o.beta1**ratio, o.beta2**ratio), eps=o.eps, fused=True
    )


def build_phases(cfg: TrainConfig, G: Generator, D: Discriminator, d_params: list[torch.nn.Parameter],
                 device: torch.device, float16: bool) -> list[Phase]:
    """Gmain, Greg, Dmain, Dreg in the order they run; a regulariser whose weight is 0 has no phase."""
    phases = []
    for name, module, params, reg_interval in (
        ("G", G, list(G.parameters()), cfg.loss.g_reg_interval),
        ("D", D, d_params, cfg.loss.d_reg_interval),
    ):
        opt = lazy_adam(params, cfg, reg_interval)
        phases.append(Phase(f"{name}main", module, params, opt, 1, LossScaler(device, float16)))
        if name == "G" and cfg.loss.pl_weight == 0:
            continue
        if name == "D" and cfg.loss.r1_gamma == 0:
            continue
        phases.append(Phase(f"{name}reg", module, params, opt, reg_interval, LossScaler(device, float16)))
    return phases


def diffaug_policy(aug: AugConfig) -> str | None:
    """The DiffAugment policy the run applies: all of it with --aug=diffaug unless one is given,
    the given one (or none) before ADA's pipe, none with --aug=noaug."""
    from augment.diffaug import DEFAULT_POLICY

    if aug.mode == "diffaug":
        return aug.diffaug or DEFAULT_POLICY
    return None if aug.mode == "noaug" else aug.diffaug


def build_augment_pipe(cfg: TrainConfig, device: torch.device, controller: AdaController) -> torch.nn.Module | None:
    """The module every image D sees passes through. The ADA pipe reads its p from `controller`,
    which owns it; DiffAugment has no p. A DiffAugment policy given with ADA runs first, on every
    image, as the DiffAugment authors combine the two."""
    a = cfg.aug
    if a.mode == "noaug":
        return None
    from augment.diffaug import DiffAugment

    policy = diffaug_policy(a)
    fixed = None if policy is None else DiffAugment(policy)
    if a.mode == "diffaug":
        return fixed.to(device)
    from augment import AugmentPipe
    from augment.extra_stages import parse_extra

    pipe = AugmentPipe(preset=a.pipe, extra=parse_extra(a.extra), p=lambda: controller.p)
    return (pipe if fixed is None else torch.nn.Sequential(fixed, pipe)).to(device)


def resolve_ada_kimg(cfg: TrainConfig, transfer: bool) -> float:
    """--ada-kimg, resolved where it is known whether this is a transfer run: the record shows the value used."""
    a = cfg.aug
    if a.ada_kimg is None:
        a.ada_kimg = ADA_KIMG_TRANSFER if transfer else ADA_KIMG
    return a.ada_kimg


def build_controller(cfg: TrainConfig, transfer: bool) -> AdaController:
    a = cfg.aug
    return AdaController(
        target=a.target, interval=a.ada_interval, ada_kimg=resolve_ada_kimg(cfg, transfer), p=a.p, p_max=a.p_max,
        heuristic=a.heuristic, adjust=a.mode == "ada", start_kimg=a.ada_start_kimg,
    )


def build_apa_controller(cfg: TrainConfig, transfer: bool) -> AdaController | None:
    """APA's probability, moved by ADA's law and heuristic; its target and speed default to ADA's."""
    a = cfg.aug
    if not a.apa:
        return None
    # Resolved in the configuration, as --ada-kimg is, so that the record shows the values used.
    if a.apa_target is None:
        a.apa_target = a.target
    if a.apa_kimg is None:
        a.apa_kimg = resolve_ada_kimg(cfg, transfer)
    return AdaController(
        target=a.apa_target, interval=a.ada_interval, ada_kimg=a.apa_kimg, heuristic=a.heuristic,
        start_kimg=a.ada_start_kimg,
    )


def environment_setup(cfg: TrainConfig) -> None:
    """Process-wide switches for speed: cuDNN autotuning and TF32 matmuls."""
    torch.backends.cudnn.benchmark = not cfg.nobench
    torch.backends.cuda.matmul.allow_tf32 = cfg.allow_tf32
    torch.backends.cudnn.allow_tf32 = cfg.allow_tf32
