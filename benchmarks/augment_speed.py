"""Throughput and peak memory of the augmentation pipeline, forward and backward with respect to the images.

    python benchmarks/augment_speed.py --res 32 --batch 32 --preset bgc --p 0.6 --iters 20
    python benchmarks/augment_speed.py ... --official /work/official/stylegan2-ada-pytorch

With --official, NVIDIA's AugmentPipe from that checkout (not part of this repository) is timed
with the same settings in the same run, taking turns with ours, and the ratio is printed.

With --compare-warp, ours is timed a second time with the grid sampling of the geometric warp
(`augment.geometric.warp_bilinear`: kornia's warp_affine) replaced by torch's affine_grid and
grid_sample, and the ratio and the largest difference between the two warps are printed: the
measurement behind the choice of kornia's. Each
pipeline runs in its own process on the same images, so the peak memory printed is its own.
Other processes share the machine, so compare ratios, not absolute figures from different runs.
The last line is always `img/s: X` for our pipeline (median over the repeats).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from functools import partial
from pathlib import Path

import torch
from harness import Sides

from augment import PRESETS, AugmentPipe, geometric


def build_pipe(preset: str, p: float, official: Path | None) -> torch.nn.Module:
    """Ours, or with `official` the checkout's AugmentPipe (its code is imported, never copied or edited)."""
    if official is None:
        return AugmentPipe(preset, p=p)
    sys.path.insert(0, str(official.resolve()))
    from training.augment import AugmentPipe as OfficialPipe  # the checkout's, on the path only in this process

    pipe = OfficialPipe(**dict(PRESETS[preset]))
    pipe.p.copy_(torch.tensor(p))
    return pipe


def torch_warp_bilinear(images: torch.Tensor, source_from_output: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """`augment.geometric.warp_bilinear` with torch's affine_grid and grid_sample instead of kornia's warp_affine."""
    n, c, height, width = images.shape
    # affine_grid works in [-1, 1] units of each image's extent (align_corners=False: the outer pixel edges).
    to_unit = torch.tensor([[2 / width, 0, 1 / width - 1], [0, 2 / height, 1 / height - 1], [0, 0, 1]],
                           dtype=images.dtype, device=images.device)
    from_unit = torch.tensor([[size[1] / 2, 0, (size[1] - 1) / 2], [0, size[0] / 2, (size[0] - 1) / 2], [0, 0, 1]],
                             dtype=images.dtype, device=images.device)
    theta = (to_unit @ source_from_output @ from_unit)[:, :2, :]
    grid = torch.nn.functional.affine_grid(theta, [n, c, *size], align_corners=False)
    return torch.nn.functional.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def warp_difference(shape: tuple[int, ...], device: str) -> float:
    """The largest difference between the two warps on random images and random maps (float32)."""
    gen = torch.Generator().manual_seed(0)
    n, c, height, width = shape
    images = (torch.rand(shape, generator=gen) * 2 - 1).to(device)
    maps = torch.eye(3).repeat(n, 1, 1)
    maps[:, :2, :2] += 0.3 * torch.randn(n, 2, 2, generator=gen)
    maps[:, :2, 2] = torch.randn(n, 2, generator=gen) * 3
    maps = maps.to(device)
    ours = geometric.warp_bilinear(images, maps, (height, width))
    return float((ours - torch_warp_bilinear(images, maps, (height, width))).abs().max())


class PipeRunner:
    """One step: a forward and backward pass of a pipeline over a fixed batch of random images."""

    def __init__(self, preset: str, p: float, official: Path | None, shape: tuple[int, ...], device: str,
                 torch_warp: bool = False):
        if torch_warp:  # this side runs in its own process: the substitution stays there
            geometric.warp_bilinear = torch_warp_bilinear
        # The worker seeds torch before building, so both sides see the same images and weights.
        self.images = (torch.rand(shape, device=device) * 2 - 1).requires_grad_()
        self.weights = torch.randn_like(self.images)
        self.pipe = build_pipe(preset, p, official).to(device)

    def step(self) -> None:
        self.images.grad = None
        (self.pipe(self.images) * self.weights).sum().backward()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--res", type=int, default=32, help="image height and width")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--preset", default="bgc", choices=list(PRESETS))
    parser.add_argument("--p", type=float, default=0.6, help="augmentation probability")
    parser.add_argument("--iters", type=int, default=20, help="timed passes per repeat")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats (the median is reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed passes before the first repeat")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--official", type=Path, default=None,
                        help="checkout of NVlabs/stylegan2-ada-pytorch to time alongside")
    parser.add_argument("--compare-warp", action="store_true",
                        help="also time ours with torch's affine_grid and grid_sample in place of kornia's warp_affine")
    args = parser.parse_args(argv)
    if not 0 <= args.p <= 1:
        parser.error(f"--p={args.p} must lie in [0, 1]")
    if min(args.res, args.batch, args.channels, args.iters, args.repeats) < 1 or args.warmup < 0:
        parser.error("--res, --batch, --channels, --iters and --repeats must be at least 1, --warmup at least 0")
    if args.official is not None and not (args.official / "training" / "augment.py").is_file():
        parser.error(f"--official={args.official} has no training/augment.py; "
                     "pass a checkout of NVlabs/stylegan2-ada-pytorch")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    shape = (args.batch, args.channels, args.res, args.res)
    factories = {"ours": partial(PipeRunner, args.preset, args.p, None, shape, args.device)}
    if args.official is not None:
        factories["official"] = partial(PipeRunner, args.preset, args.p, args.official, shape, args.device)
    if args.compare_warp:
        factories["torch-warp"] = partial(PipeRunner, args.preset, args.p, None, shape, args.device, True)
    threads = args.threads if args.threads is not None else torch.get_num_threads()
    print(f"preset {args.preset}, p {args.p}, batch {args.batch}x{args.channels}x{args.res}x{args.res}, "
          f"device {args.device}, threads {threads}, {args.iters} passes x {args.repeats} repeats, "
          f"{args.warmup} warm-up, each pipeline in its own process", flush=True)
    sides = Sides(factories, args.device, args.threads, args.warmup)
    names = list(factories)
    rates: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    for repeat in range(args.repeats):
        for name in names if repeat % 2 == 0 else names[::-1]:
            wall, cpu_seconds = sides.run(name, args.iters)
            rates[name].append(args.iters * args.batch / wall)
            cpu[name].append(cpu_seconds)
        print(f"repeat {repeat}: " + ", ".join(f"{name} {rates[name][-1]:.1f} img/s" for name in names), flush=True)
    memory = {name: sides.memory(name) for name in names}
    sides.close()
    for name in names:
        print(f"{name} peak memory: {memory[name].describe()}")
    median = {name: statistics.median(values) for name, values in rates.items()}
    if "official" in median:
        ratios = [ours / official for ours, official in zip(rates["ours"], rates["official"], strict=True)]
        print(f"official img/s: {median['official']:.1f}")
        print(f"ratio ours/official: {median['ours'] / median['official']:.2f} "
              f"(per repeat: {', '.join(f'{r:.2f}' for r in ratios)})")
    if "torch-warp" in median:
        ratios = [ours / other for ours, other in zip(rates["ours"], rates["torch-warp"], strict=True)]
        print(f"torch-warp img/s: {median['torch-warp']:.1f}")
        print(f"ratio ours/torch-warp: {median['ours'] / median['torch-warp']:.3f} "
              f"(per repeat: {', '.join(f'{r:.3f}' for r in ratios)}); CPU-time ratio ours/torch-warp: "
              f"{sum(cpu['ours']) / sum(cpu['torch-warp']):.3f}")
        print(f"largest difference between the warps: {warp_difference(shape, args.device):.2e}")
    print(f"img/s: {median['ours']:.1f}")


if __name__ == "__main__":
    main()
