"""Seconds per thousand training images of full StyleGAN2-ADA iterations, on random data.

    python benchmarks/train_speed.py --res 16 --batch 32 --cbase 1024 --cmax 512 --map 2 --z-dim 512
    python benchmarks/train_speed.py ... --augpipe bgc --p 0.6 --official /path/to/stylegan2-ada-pytorch

One iteration is what `ada.training.Trainer.train_step` does: the phases Gmain, Dmain every
step, Greg every 4th and Dreg every 16th (lazy regularisation), Adam steps, the G_ema update
and the ADA controller. Timing runs our real trainer on an in-memory dataset of random
images, so the figure is what a user gets; use `--iters` a multiple of 16 so every round
holds the same mix of phases.

With `--official DIR` (a checkout of NVlabs/stylegan2-ada-pytorch, kept outside this
repository and never copied into it), the official training step is timed at the same
configuration: its StyleGAN2Loss.accumulate_gradients phases, Adam, the G_ema update and
its ADA adjustment, with its reference (non-CUDA) ops in float32. Each side runs in its
own process (so their peak memory is their own), and the two take turns round by round,
the other one idle, so both see the same machine load. Compare ratios from one run, never
absolute figures from different runs or days.

The last line is always `sec/kimg: X` for our trainer (median over the rounds).
"""

from __future__ import annotations

import argparse
import copy
import multiprocessing as mp
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

LAZY_INTERVALS = 16  # lcm of the G (4) and D (16) regularisation intervals
DATASET_IMAGES = 256


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--res", type=int, default=16, help="image resolution (a power of two)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--cbase", type=int, default=1024, help="channel_base")
    parser.add_argument("--cmax", type=int, default=512, help="channel_max")
    parser.add_argument("--map", type=int, default=2, help="mapping network layers")
    parser.add_argument("--z-dim", type=int, default=512)
    parser.add_argument("--w-dim", type=int, default=None, help="default: --z-dim")
    parser.add_argument("--gamma", type=float, default=None, help="R1 weight (default: 0.0002 res^2 / batch)")
    parser.add_argument("--augpipe", default="none", help="augmentation preset, or 'none'")
    parser.add_argument("--p", type=float, default=0.6, help="augmentation probability (ADA starts here)")
    parser.add_argument("--iters", type=int, default=16, help="timed iterations per round (a multiple of 16)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per side; medians are reported")
    parser.add_argument("--warmup", type=int, default=4, help="untimed iterations before the first round")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    precision = parser.add_mutually_exclusive_group()
    precision.add_argument("--fp32", action="store_true", help="float32 everywhere (the default)")
    precision.add_argument("--bf16", action="store_true", help="bfloat16 in the 4 highest resolutions")
    parser.add_argument("--nhwc", action="store_true", help="channels-last memory format in those resolutions")
    parser.add_argument("--official", type=Path, default=None, help="a checkout of NVlabs/stylegan2-ada-pytorch")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="after timing, profile N iterations of each side and print the top operators")
    args = parser.parse_args(argv)
    args.w_dim = args.w_dim or args.z_dim
    if args.gamma is None:
        args.gamma = 0.0002 * args.res**2 / args.batch
    if args.res < 4 or args.res & (args.res - 1):
        parser.error(f"--res={args.res} is not a power of two >= 4")
    if not 0 <= args.p <= 1:
        parser.error(f"--p={args.p} must lie in [0, 1]")
    if min(args.iters, args.rounds, args.batch) < 1 or args.warmup < 0:
        parser.error("--iters, --rounds and --batch must be at least 1, --warmup at least 0")
    if args.batch % min(args.batch, 4):
        parser.error(f"--batch={args.batch} must be a multiple of the minibatch-stddev group 4")
    if args.official is not None and not (args.official / "training" / "loss.py").is_file():
        parser.error(f"--official={args.official} has no training/loss.py; "
                     "pass a checkout of NVlabs/stylegan2-ada-pytorch")
    if args.augpipe != "none":
        try:
            from augment import PRESETS
        except ImportError as exc:
            parser.error(f"--augpipe={args.augpipe} needs the augment package ({exc}); use --augpipe none")
        if args.augpipe not in PRESETS:
            parser.error(f"--augpipe={args.augpipe} is not one of none, {', '.join(PRESETS)}")
    return args


def random_images(args: argparse.Namespace) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=[DATASET_IMAGES, 3, args.res, args.res], dtype=np.uint8)


class OursRunner:
    """Our Trainer, exactly as `ada train` builds it, on an in-memory dataset of random images."""

    def __init__(self, args: argparse.Namespace, device: torch.device):
        from ada.config import TrainConfig
        from ada.data import ImageDataset
        from ada.distributed import DistContext
        from ada.training import TickStats, Trainer

        cfg = TrainConfig(data="random", batch=args.batch, workers=0, seed=0, fp32=not args.bf16, bf16=args.bf16,
                          nhwc=args.nhwc)
        m = cfg.model
        m.z_dim, m.w_dim, m.map_layers = args.z_dim, args.w_dim, args.map
        m.channel_base, m.channel_max, m.mbstd_group = args.cbase, args.cmax, min(args.batch, 4)
        cfg.loss.r1_gamma = args.gamma
        cfg.optim.ema_kimg, cfg.optim.ema_rampup = args.batch * 10 / 32, 0.05
        if args.augpipe == "none":
            cfg.aug.mode = "noaug"
        else:
            cfg.aug.mode, cfg.aug.pipe, cfg.aug.p = "ada", args.augpipe, args.p
        images = random_images(args)
        names = [f"{i:08d}.png" for i in range(len(images))]
        dataset = ImageDataset(None, names, rgb=True, resolution=args.res, labels=None, c_dim=0, mirror=False,
                               name="random", images=images)
        self.trainer = Trainer(cfg, dataset, None, DistContext(device=device), log=lambda msg: None)
        self.tick_stats = TickStats()

    def step(self) -> None:
        self.trainer.train_step(self.tick_stats)


class OfficialRunner:
    """The official training step, driven the way its training_loop drives it, at the same configuration."""

    def __init__(self, args: argparse.Namespace, device: torch.device):
        sys.path.insert(0, str(args.official.resolve()))
        import dnnlib  # noqa: F401  (the official checkout's packages, on the path only in this process)
        from torch_utils import misc, training_stats
        from torch_utils.ops import bias_act, upfirdn2d
        from training.loss import StyleGAN2Loss
        from training.networks import Discriminator, Generator

        # Shims: never try to build the CUDA plugins; time the reference ops on every device.
        upfirdn2d._init = lambda: False
        bias_act._init = lambda: False
        self.misc = misc
        self.device = device
        self.batch = args.batch
        G = Generator(z_dim=args.z_dim, c_dim=0, w_dim=args.w_dim, img_resolution=args.res, img_channels=3,
                      mapping_kwargs=dict(num_layers=args.map),
                      synthesis_kwargs=dict(channel_base=args.cbase, channel_max=args.cmax, num_fp16_res=0,
                                            conv_clamp=None))
        D = Discriminator(c_dim=0, img_resolution=args.res, img_channels=3, architecture="resnet",
                          channel_base=args.cbase, channel_max=args.cmax, num_fp16_res=0, conv_clamp=None,
                          epilogue_kwargs=dict(mbstd_group_size=min(args.batch, 4)))
        self.G = G.train().requires_grad_(False).to(device)
        self.D = D.train().requires_grad_(False).to(device)
        self.G_ema = copy.deepcopy(self.G).eval()
        self.augment_pipe = None
        self.ada_stats = None
        if args.augpipe != "none":
            from training.augment import AugmentPipe

            from augment import PRESETS

            pipe = AugmentPipe(**dict(PRESETS[args.augpipe])).train().requires_grad_(False).to(device)
            pipe.p.copy_(torch.as_tensor(args.p))
            self.augment_pipe = pipe
            self.ada_stats = training_stats.Collector(regex="Loss/signs/real")
        self.loss = StyleGAN2Loss(device=device, G_mapping=self.G.mapping, G_synthesis=self.G.synthesis, D=self.D,
                                  augment_pipe=self.augment_pipe, r1_gamma=args.gamma)
        self.phases = []
        for name, module, interval in (("G", self.G, 4), ("D", self.D, 16)):
            ratio = interval / (interval + 1)
            opt = torch.optim.Adam(module.parameters(), lr=0.0025 * ratio, betas=(0.0**ratio, 0.99**ratio), eps=1e-8)
            self.phases += [(name + "main", module, opt, 1), (name + "reg", module, opt, interval)]
        self.images = torch.from_numpy(random_images(args))
        self.gen = torch.Generator().manual_seed(0)
        self.batch_idx = 0
        self.cur_nimg = 0
        self.ema_kimg = args.batch * 10 / 32

    def step(self) -> None:
        idx = torch.randint(len(self.images), [self.batch], generator=self.gen)
        real_img = self.images[idx].to(self.device).to(torch.float32) / 127.5 - 1
        real_c = torch.zeros([self.batch, 0], device=self.device)
        all_gen_z = torch.randn([len(self.phases), self.batch, self.G.z_dim], device=self.device)
        for (name, module, opt, interval), gen_z in zip(self.phases, all_gen_z, strict=True):
            if self.batch_idx % interval != 0:
                continue
            opt.zero_grad(set_to_none=True)
            module.requires_grad_(True)
            self.loss.accumulate_gradients(phase=name, real_img=real_img, real_c=real_c, gen_z=gen_z,
                                           gen_c=real_c, sync=True, gain=interval)
            module.requires_grad_(False)
            for param in module.parameters():
                if param.grad is not None:
                    self.misc.nan_to_num(param.grad, nan=0, posinf=1e5, neginf=-1e5, out=param.grad)
            opt.step()
        with torch.no_grad():
            ema_beta = 0.5 ** (self.batch / max(min(self.ema_kimg * 1000, self.cur_nimg * 0.05), 1e-8))
            for p_ema, p in zip(self.G_ema.parameters(), self.G.parameters(), strict=True):
                p_ema.copy_(p.lerp(p_ema, ema_beta))
            for b_ema, b in zip(self.G_ema.buffers(), self.G.buffers(), strict=True):
                b_ema.copy_(b)
        self.cur_nimg += self.batch
        self.batch_idx += 1
        if self.ada_stats is not None and self.batch_idx % 4 == 0:
            self.ada_stats.update()
            adjust = np.sign(self.ada_stats["Loss/signs/real"] - 0.6) * (self.batch * 4) / (500 * 1000)
            self.augment_pipe.p.copy_((self.augment_pipe.p + adjust).max(self.misc.constant(0, device=self.device)))


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(kind: str, args: argparse.Namespace, conn: Any) -> None:
    """One side of the comparison, in its own process: builds, warms up, then runs what it is asked."""
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    runner = (OursRunner if kind == "ours" else OfficialRunner)(args, device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    baseline = rss_mib()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(args.warmup):
        runner.step()
    sync()
    conn.send("ready")
    while True:
        try:
            command, n = conn.recv()
        except EOFError:  # the parent is gone
            return
        if command == "run":
            sync()
            start, start_cpu = time.perf_counter(), time.process_time()
            for _ in range(n):
                runner.step()
            sync()
            conn.send((time.perf_counter() - start, time.process_time() - start_cpu))
        elif command == "memory":
            peak = peak_rss_mib()
            gpu = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
            conn.send({"peak_rss": peak, "above_setup": peak - baseline, "gpu": gpu})
        elif command == "profile":
            from torch.profiler import ProfilerActivity, profile

            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
            with profile(activities=activities) as prof:
                for _ in range(n):
                    runner.step()
                sync()
            sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
            conn.send(prof.key_averages().table(sort_by=sort, row_limit=20, max_name_column_width=40))
        else:
            conn.close()
            return


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    sides = ["ours"] + (["official"] if args.official is not None else [])
    print(f"res {args.res}, batch {args.batch}, channel_base {args.cbase}, channel_max {args.cmax}, "
          f"map {args.map}, z_dim {args.z_dim}, w_dim {args.w_dim}, gamma {args.gamma:g}, augpipe {args.augpipe}"
          + (f" p {args.p}" if args.augpipe != "none" else "")
          + f", {'bf16' if args.bf16 else 'fp32'}{', nhwc' if args.nhwc else ''}, device {args.device}, "
          f"{args.iters} iterations x {args.rounds} rounds, {args.warmup} warm-up", flush=True)
    if args.iters % LAZY_INTERVALS:
        print(f"note: --iters={args.iters} is not a multiple of {LAZY_INTERVALS}; rounds hold different phase mixes")
    ctx = mp.get_context("spawn")
    conns = {}
    procs = []
    for kind in sides:
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=worker, args=(kind, args, child), daemon=True)
        proc.start()
        child.close()  # so that a worker that dies shows as EOF here instead of a hang
        conns[kind] = parent
        procs.append(proc)
        # Build and warm up one side at a time, so neither is timed while the other starts.
        try:
            parent.recv()
        except EOFError:
            raise SystemExit(f"the {kind} worker failed to start (its error is above)") from None
    per_kimg = 1000 / (args.iters * args.batch)
    times: dict[str, list[float]] = {kind: [] for kind in sides}
    cpu_times: dict[str, list[float]] = {kind: [] for kind in sides}
    for r in range(args.rounds):
        order = sides if r % 2 == 0 else sides[::-1]
        for kind in order:
            conns[kind].send(("run", args.iters))
            wall, cpu = conns[kind].recv()
            times[kind].append(wall * per_kimg)
            cpu_times[kind].append(cpu * per_kimg)
        print(f"round {r}: " + ", ".join(f"{kind} {times[kind][-1]:.2f} s/kimg ({cpu_times[kind][-1]:.2f} CPU s/kimg)"
                                         for kind in sides), flush=True)
    memory = {}
    for kind in sides:
        conns[kind].send(("memory", 0))
        memory[kind] = conns[kind].recv()
    if args.profile:
        for kind in sides:
            conns[kind].send(("profile", args.profile))
            print(f"--- profile of {kind}, {args.profile} iterations ---")
            print(conns[kind].recv())
    for kind in sides:
        conns[kind].send(("stop", 0))
    for proc in procs:
        proc.join(timeout=30)
    for kind in sides:
        m = memory[kind]
        gpu = f", GPU peak allocated {m['gpu']:.0f} MiB" if m["gpu"] is not None else ""
        print(f"{kind} peak memory: RSS {m['peak_rss']:.0f} MiB ({m['above_setup']:.0f} MiB above setup){gpu}")
    median = {kind: statistics.median(values) for kind, values in times.items()}
    for kind in sides:
        print(f"{kind} CPU seconds/kimg (all threads): {statistics.median(cpu_times[kind]):.2f}")
    if "official" in median:
        for label, values in (("", times), (" in CPU time", cpu_times)):
            ratios = [o / f for o, f in zip(values["ours"], values["official"], strict=True)]
            print(f"ratio ours/official{label}: {statistics.median(ratios):.3f} "
                  f"(per round: {', '.join(f'{r:.3f}' for r in ratios)})")
        print(f"official sec/kimg: {median['official']:.2f}")
    print(f"sec/kimg: {median['ours']:.2f}")


if __name__ == "__main__":
    main()
