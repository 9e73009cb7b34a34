"""Seconds per thousand training images of full StyleGAN2-ADA iterations, on random data.

    python benchmarks/train_speed.py --res 16 --batch 32 --cbase 1024 --cmax 512 --map 2 --z-dim 512
    python benchmarks/train_speed.py --preset paper256 --res 64 --batch 8
    python benchmarks/train_speed.py ... --augpipe bgc --p 0.6 --official /path/to/stylegan2-ada-pytorch

One iteration is what `ada.training.Trainer.train_step` does: the phases Gmain, Dmain every
step, Greg every 4th and Dreg every 16th (lazy regularisation), Adam steps, the G_ema update
and the ADA controller. Timing runs our real trainer on an in-memory dataset of random
images, so the figure is what a user gets; use `--iters` a multiple of 16 so every round
holds the same mix of phases.

The configuration is a TrainConfig built as `ada train` builds it: `--preset NAME` loads
configs/NAME.yaml (with the `auto` rules at --res and one GPU where the preset asks for them),
and the flags given here override it. Without --preset it is the reference configuration of
DESIGN.md (batch 32, channel_base 1024, channel_max 512, 2 mapping layers, z_dim 512, fp32),
so that figures stay comparable with earlier ones; mixed precision there needs --fp16 or --bf16.

With `--official DIR` (a checkout of NVlabs/stylegan2-ada-pytorch, kept outside this
repository and never copied into it), the official training step is timed at the same
configuration: its StyleGAN2Loss.accumulate_gradients phases over batch_gpu rounds, Adam,
the G_ema update and its ADA adjustment, with its reference (non-CUDA) ops. Each side runs in
its own process (so its peak memory is its own), and the two take turns round by round, the
other one idle, so both see the same machine load. Compare ratios from one run, never
absolute figures from different runs or days.

The last line is always `sec/kimg: X` for our trainer (median over the rounds).
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import sys
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from harness import Sides

from ada import config as config_mod
from ada import config_checks
from ada.config import TrainConfig
from ada.errors import UserError

DATASET_IMAGES = 256


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The options, with `config` added: the resolved TrainConfig our side runs."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=config_mod.available_presets(), default=None,
                        help="a configs/ preset (default: the reference configuration)")
    parser.add_argument("--res", type=int, default=16, help="image resolution (a power of two)")
    parser.add_argument("--batch", type=int, default=None, help="default: the preset's, else 32")
    parser.add_argument("--batch-gpu", type=int, default=None,
                        help="images per pass; the rest of --batch is gradient accumulation (default: all)")
    parser.add_argument("--cbase", type=int, default=None, help="channel_base (default: the preset's, else 1024)")
    parser.add_argument("--cmax", type=int, default=None, help="channel_max (default: the preset's, else 512)")
    parser.add_argument("--map", type=int, default=None, help="mapping layers (default: the preset's, else 2)")
    parser.add_argument("--z-dim", type=int, default=None, help="default: the preset's, else 512")
    parser.add_argument("--w-dim", type=int, default=None, help="default: the preset's, else --z-dim")
    parser.add_argument("--gamma", type=float, default=None,
                        help="R1 weight (default: the preset's, else 0.0002 res^2 / batch)")
    parser.add_argument("--augpipe", default="none", help="augmentation preset, or 'none'")
    parser.add_argument("--p", type=float, default=0.6, help="augmentation probability (ADA starts here)")
    parser.add_argument("--iters", type=int, default=16, help="timed iterations per round (a multiple of 16)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per side; medians are reported")
    parser.add_argument("--warmup", type=int, default=4, help="untimed iterations before the first round")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    precision = parser.add_mutually_exclusive_group()
    precision.add_argument("--fp32", action="store_true",
                           help="float32 everywhere, no clamping (the default without --preset)")
    precision.add_argument("--fp16", action="store_true",
                           help="float16 in the num_fp16_res highest resolutions, activations clamped to "
                                "conv_clamp (the default with --preset; on a CPU those blocks stay float32)")
    precision.add_argument("--bf16", action="store_true", help="bfloat16 instead of float16 in those blocks")
    parser.add_argument("--nhwc", action="store_true", help="channels-last memory format in those blocks")
    parser.add_argument("--allow-tf32", action="store_true", help="allow TF32 matmuls and convolutions")
    parser.add_argument("--nobench", action="store_true", help="disable the cuDNN benchmark mode")
    parser.add_argument("--compile", action="store_true", help="torch.compile G and D for the main phases (ours)")
    parser.add_argument("--official", type=Path, default=None, help="a checkout of NVlabs/stylegan2-ada-pytorch")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="after timing, profile N iterations of each side and print the top operators")
    args = parser.parse_args(argv)
    if args.res < 4 or args.res & (args.res - 1):
        parser.error(f"--res={args.res} is not a power of two >= 4")
    if not 0 <= args.p <= 1:
        parser.error(f"--p={args.p} must lie in [0, 1]")
    if min(args.iters, args.rounds) < 1 or args.warmup < 0 or args.profile < 0:
        parser.error("--iters and --rounds must be at least 1, --warmup and --profile at least 0")
    if args.official is not None and not (args.official / "training" / "loss.py").is_file():
        parser.error(f"--official={args.official} has no training/loss.py; "
                     "pass a checkout of NVlabs/stylegan2-ada-pytorch")
    if args.augpipe != "none":
        from augment import PRESETS

        if args.augpipe not in PRESETS:
            parser.error(f"--augpipe={args.augpipe} is not one of none, {', '.join(PRESETS)}")
        if args.res < 8:
            parser.error(f"--augpipe={args.augpipe} needs --res of at least 8; use --augpipe none")
    try:
        args.config = train_config(args)
    except UserError as exc:
        parser.error(str(exc))
    return args


def reference_rules(res: int, batch: int, z_dim: int) -> dict[str, Any]:
    """The reference configuration of DESIGN.md (16x16, batch 32, channel_base 1024, fp32), as overrides."""
    return {
        "batch": batch,
        "fp32": True,
        "model": {"channel_base": 1024, "channel_max": 512, "map_layers": 2, "z_dim": z_dim, "w_dim": z_dim,
                  "mbstd_group": min(batch, 4)},
        "loss": {"r1_gamma": config_mod.r1_gamma_heuristic(res, batch)},
        "optim": {"ema_kimg": batch * 10 / 32, "ema_rampup": 0.05},
    }


def flag_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """What the flags given here change, nested as TrainConfig is (flags left out change nothing)."""
    top: dict[str, Any] = {}
    if args.batch is not None:
        # As `ada train --batch`: a batch chosen here runs in one pass unless --batch-gpu says otherwise.
        top["batch"], top["batch_gpu"] = args.batch, None
    if args.batch_gpu is not None:
        top["batch_gpu"] = args.batch_gpu
    if args.fp32:
        top["fp32"], top["bf16"] = True, False
    elif args.fp16 or args.bf16:
        top["fp32"], top["bf16"] = False, args.bf16
    for flag in ("nhwc", "allow_tf32", "nobench", "compile"):
        if getattr(args, flag):
            top[flag] = True
    model = {key: getattr(args, flag) for flag, key in (("cbase", "channel_base"), ("cmax", "channel_max"),
                                                         ("map", "map_layers"), ("z_dim", "z_dim"),
                                                         ("w_dim", "w_dim"))
             if getattr(args, flag) is not None}
    loss = {"r1_gamma": args.gamma} if args.gamma is not None else {}
    aug = {"mode": "noaug"} if args.augpipe == "none" else {"mode": "ada", "pipe": args.augpipe, "p": args.p}
    return {**top, "model": model, "loss": loss, "aug": aug}


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The preset (or the reference configuration), its rules at --res, then the flags; validated.

    A preset resolves as `ada train` resolves it (`ada.config.resolve`), with --res standing in for the data.
    """
    if args.preset is not None:
        cfg = config_mod.resolve(args.preset, flag_overrides(args), args.res)
    else:
        cfg = TrainConfig(cfg="reference")
        rules = reference_rules(args.res, args.batch or 32, args.z_dim or 512)
        config_mod.apply_overrides(cfg, rules, source="reference configuration")
        config_mod.apply_overrides(cfg, flag_overrides(args), source="command line")
    cfg.data, cfg.workers, cfg.seed = "random", 0, 0
    config_checks.validate(cfg)
    return cfg


def precision_text(cfg: TrainConfig, device: str) -> str:
    m = cfg.model
    if cfg.fp32 or m.num_fp16_res == 0:
        return "fp32" + ("" if cfg.fp32 or m.conv_clamp is None else f", conv_clamp {m.conv_clamp:g}")
    dtype = "bf16" if cfg.bf16 else "fp16"
    cpu_note = " (float32 on this CPU)" if dtype == "fp16" and torch.device(device).type != "cuda" else ""
    clamp = f", conv_clamp {m.conv_clamp:g}" if m.conv_clamp is not None else ""
    return f"{dtype} in the {m.num_fp16_res} highest resolutions{cpu_note}{clamp}"


def describe(args: argparse.Namespace) -> str:
    cfg, m = args.config, args.config.model
    batch_gpu = f" (batch_gpu {cfg.batch_gpu})" if cfg.batch_gpu not in (None, cfg.batch) else ""
    aug = cfg.aug.pipe + f" p {cfg.aug.p}" if cfg.aug.mode != "noaug" else "none"
    return (f"{'preset ' + args.preset if args.preset else 'reference configuration'}: "
            f"res {args.res}, batch {cfg.batch}{batch_gpu}, channel_base {m.channel_base}, "
            f"channel_max {m.channel_max}, map {m.map_layers}, z_dim {m.z_dim}, w_dim {m.w_dim}, "
            f"mbstd_group {m.mbstd_group}, D {m.d_architecture}, gamma {cfg.loss.r1_gamma:g}, "
            f"pl_weight {cfg.loss.pl_weight:g}, ema_kimg {cfg.optim.ema_kimg:g}, augpipe {aug}, "
            f"{precision_text(cfg, args.device)}{', nhwc' if cfg.nhwc else ''}{', tf32' if cfg.allow_tf32 else ''}"
            f"{', no cudnn benchmark' if cfg.nobench else ''}, compile {'on' if cfg.compile else 'off'}, "
            f"device {args.device}, {args.iters} iterations x {args.rounds} rounds, {args.warmup} warm-up")


def random_images(res: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=[DATASET_IMAGES, 3, res, res], dtype=np.uint8)


class OursRunner:
    """Our Trainer, as `ada train` builds it from `cfg`, on an in-memory dataset of random images."""

    def __init__(self, cfg: TrainConfig, res: int, device: str):
        from ada.build import environment_setup
        from ada.data import ImageDataset
        from ada.distributed import DistContext
        from ada.training import TickStats, Trainer

        environment_setup(cfg)
        images = random_images(res)
        names = [f"{i:08d}.png" for i in range(len(images))]
        dataset = ImageDataset(None, names, rgb=True, resolution=res, labels=None, c_dim=0, mirror=False,
                               name="random", images=images)
        self.trainer = Trainer(cfg, dataset, None, DistContext(device=torch.device(device)), log=lambda msg: None)
        self.tick_stats = TickStats()

    def step(self) -> None:
        self.trainer.train_step(self.tick_stats)


class OfficialRunner:
    """The official training step, driven the way its training_loop drives it, from the same TrainConfig."""

    def __init__(self, cfg: TrainConfig, res: int, device: str, checkout: Path):
        from ada.build import environment_setup, network_kwargs
        from ada.controller import ADA_KIMG

        sys.path.insert(0, str(checkout.resolve()))
        import dnnlib  # noqa: F401  (the official checkout's packages, on the path only in this process)
        from torch_utils import misc, training_stats
        from torch_utils.ops import bias_act, upfirdn2d
        from training.loss import StyleGAN2Loss
        from training.networks import Discriminator, Generator

        environment_setup(cfg)  # the official training loop sets the same cuDNN and TF32 switches
        # Shims: never try to build the CUDA plugins; time the reference ops on every device.
        upfirdn2d._init = lambda: False
        bias_act._init = lambda: False
        self.misc = misc
        self.device = torch.device(device)
        # Our constructor arguments carry the official names, fp32 already applied.
        G_kwargs, D_kwargs = network_kwargs(cfg, res, 3, 0)
        if self.device.type != "cuda":
            # The official blocks compute in float16 wherever asked, a CPU included; ours keep float32
            # there, so both run the same float32 arithmetic (with the same clamping).
            G_kwargs["synthesis_kwargs"]["num_fp16_res"] = D_kwargs["num_fp16_res"] = 0
        self.G = Generator(**G_kwargs).train().requires_grad_(False).to(self.device)
        self.D = Discriminator(**D_kwargs).train().requires_grad_(False).to(self.device)
        self.G_ema = copy.deepcopy(self.G).eval()
        self.augment_pipe = None
        self.ada_stats = None
        if cfg.aug.mode != "noaug":
            from training.augment import AugmentPipe

            from augment import PRESETS

            pipe = AugmentPipe(**dict(PRESETS[cfg.aug.pipe])).train().requires_grad_(False).to(self.device)
            pipe.p.copy_(torch.as_tensor(cfg.aug.p))
            self.augment_pipe = pipe
            if cfg.aug.mode == "ada":
                self.ada_stats = training_stats.Collector(regex="Loss/signs/real")
        lo = cfg.loss
        self.loss = StyleGAN2Loss(device=self.device, G_mapping=self.G.mapping, G_synthesis=self.G.synthesis,
                                  D=self.D, augment_pipe=self.augment_pipe, style_mixing_prob=lo.style_mixing,
                                  r1_gamma=lo.r1_gamma, pl_batch_shrink=lo.pl_batch_shrink, pl_decay=lo.pl_decay,
                                  pl_weight=lo.pl_weight)
        o = cfg.optim
        self.phases = []
        for name, module, interval in (("G", self.G, lo.g_reg_interval), ("D", self.D, lo.d_reg_interval)):
            ratio = interval / (interval + 1)
            opt = torch.optim.Adam(module.parameters(), lr=o.lr * ratio, betas=(o.beta1**ratio, o.beta2**ratio),
                                   eps=o.eps)
            self.phases += [(name + "main", module, opt, 1), (name + "reg", module, opt, interval)]
        self.images = torch.from_numpy(random_images(res))
        self.gen = torch.Generator().manual_seed(0)
        self.batch, self.batch_gpu = cfg.batch, cfg.batch_gpu or cfg.batch
        self.ema_kimg, self.ema_rampup = o.ema_kimg, o.ema_rampup
        self.ada_target, self.ada_interval = cfg.aug.target, cfg.aug.ada_interval
        self.ada_kimg = cfg.aug.ada_kimg or ADA_KIMG
        self.batch_idx = 0
        self.cur_nimg = 0

    def step(self) -> None:
        idx = torch.randint(len(self.images), [self.batch], generator=self.gen)
        real_img = (self.images[idx].to(self.device).to(torch.float32) / 127.5 - 1).split(self.batch_gpu)
        real_c = torch.zeros([self.batch_gpu, 0], device=self.device)
        all_gen_z = torch.randn([len(self.phases) * self.batch, self.G.z_dim], device=self.device)
        rounds = len(real_img)
        for (name, module, opt, interval), gen_z in zip(self.phases, all_gen_z.split(self.batch), strict=True):
            if self.batch_idx % interval != 0:
                continue
            opt.zero_grad(set_to_none=True)
            module.requires_grad_(True)
            for round_idx, (img, z) in enumerate(zip(real_img, gen_z.split(self.batch_gpu), strict=True)):
                self.loss.accumulate_gradients(phase=name, real_img=img, real_c=real_c, gen_z=z, gen_c=real_c,
                                               sync=round_idx == rounds - 1, gain=interval)
            module.requires_grad_(False)
            for param in module.parameters():
                if param.grad is not None:
                    self.misc.nan_to_num(param.grad, nan=0, posinf=1e5, neginf=-1e5, out=param.grad)
            opt.step()
        with torch.no_grad():
            ema_nimg = self.ema_kimg * 1000
            if self.ema_rampup is not None:
                ema_nimg = min(ema_nimg, self.cur_nimg * self.ema_rampup)
            ema_beta = 0.5 ** (self.batch / max(ema_nimg, 1e-8))
            for p_ema, p in zip(self.G_ema.parameters(), self.G.parameters(), strict=True):
                p_ema.copy_(p.lerp(p_ema, ema_beta))
            for b_ema, b in zip(self.G_ema.buffers(), self.G.buffers(), strict=True):
                b_ema.copy_(b)
        self.cur_nimg += self.batch
        self.batch_idx += 1
        if self.ada_stats is not None and self.batch_idx % self.ada_interval == 0:
            self.ada_stats.update()
            sign = np.sign(self.ada_stats["Loss/signs/real"] - self.ada_target)
            adjust = sign * (self.batch * self.ada_interval) / (self.ada_kimg * 1000)
            self.augment_pipe.p.copy_((self.augment_pipe.p + adjust).max(self.misc.constant(0, device=self.device)))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    cfg = args.config
    print(describe(args), flush=True)
    lazy = math.lcm(cfg.loss.g_reg_interval, cfg.loss.d_reg_interval)
    if args.iters % lazy:
        print(f"note: --iters={args.iters} is not a multiple of {lazy}; rounds hold different phase mixes")
    factories = {"ours": partial(OursRunner, cfg, args.res, args.device)}
    if args.official is not None:
        factories["official"] = partial(OfficialRunner, cfg, args.res, args.device, args.official)
        notes = []
        if cfg.compile:
            notes.append("it is not compiled")
        if cfg.bf16:
            notes.append("it has no bf16 (float16 on CUDA)")
        if not cfg.fp32 and torch.device(args.device).type != "cuda":
            notes.append("float32 blocks on this CPU, as ours")
        if notes:
            print(f"note: official side: {'; '.join(notes)}")
    sides = Sides(factories, args.device, args.threads, args.warmup)
    names = list(factories)
    per_kimg = 1000 / (args.iters * cfg.batch)
    times: dict[str, list[float]] = {name: [] for name in names}
    cpu_times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(args.rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            wall, cpu = sides.run(name, args.iters)
            times[name].append(wall * per_kimg)
            cpu_times[name].append(cpu * per_kimg)
        print(f"round {r}: " + ", ".join(f"{name} {times[name][-1]:.2f} s/kimg ({cpu_times[name][-1]:.2f} CPU s/kimg)"
                                         for name in names), flush=True)
    memory = {name: sides.memory(name) for name in names}
    if args.profile:
        for name in names:
            print(f"--- profile of {name}, {args.profile} iterations ---")
            print(sides.profile(name, args.profile))
    sides.close()
    for name in names:
        print(f"{name} peak memory: {memory[name].describe()}")
    median = {name: statistics.median(values) for name, values in times.items()}
    for name in names:
        print(f"{name} CPU seconds/kimg (all threads): {statistics.median(cpu_times[name]):.2f}")
    if "official" in median:
        for label, values in (("", times), (" in CPU time", cpu_times)):
            ratios = [o / f for o, f in zip(values["ours"], values["official"], strict=True)]
            print(f"ratio ours/official{label}: {statistics.median(ratios):.3f} "
                  f"(per round: {', '.join(f'{r:.3f}' for r in ratios)})")
        print(f"official sec/kimg: {median['official']:.2f}")
    print(f"sec/kimg: {median['ours']:.2f}")


if __name__ == "__main__":
    main()
