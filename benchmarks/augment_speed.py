"""Throughput of the augmentation pipeline, forward and backward with respect to the images.

    python benchmarks/augment_speed.py --res 32 --batch 32 --preset bgc --p 0.6 --iters 20
    python benchmarks/augment_speed.py ... --official /work/official/stylegan2-ada-pytorch

With --official, NVIDIA's AugmentPipe from that checkout (not part of this repository) is timed
with the same settings in the same run, alternating with ours, and the ratio is printed. Other
processes share the machine, so compare ratios, not absolute figures from different runs.
The last line is always `img/s: X` for our pipeline (median over the repeats).
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from augment import PRESETS, AugmentPipe


def load_official(checkout: Path, strengths: dict[str, float]) -> torch.nn.Module:
    """Builds the official AugmentPipe from a checkout; its code is imported, never copied or edited."""
    if not (checkout / "training" / "augment.py").is_file():
        raise SystemExit(f"--official: {checkout} has no training/augment.py; "
                         "pass a checkout of NVlabs/stylegan2-ada-pytorch")
    sys.path.insert(0, str(checkout))
    from training.augment import AugmentPipe as OfficialPipe  # noqa: PLC0415 (path known only at run time)

    return OfficialPipe(**strengths)


def time_pipe(pipe: torch.nn.Module, images: torch.Tensor, weights: torch.Tensor, iters: int) -> float:
    """Images per second over `iters` forward+backward passes."""

    def sync() -> None:
        if images.device.type == "cuda":
            torch.cuda.synchronize(images.device)

    sync()
    start = time.perf_counter()
    for _ in range(iters):
        images.grad = None
        (pipe(images) * weights).sum().backward()
    sync()
    return iters * images.shape[0] / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--res", type=int, default=32, help="image height and width")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--preset", default="bgc", choices=list(PRESETS))
    parser.add_argument("--p", type=float, default=0.6, help="augmentation probability")
    parser.add_argument("--iters", type=int, default=20, help="timed passes per repeat")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats (the median is reported)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--official", type=Path, default=None,
                        help="checkout of NVlabs/stylegan2-ada-pytorch to time alongside")
    args = parser.parse_args()
    if not 0 <= args.p <= 1:
        raise SystemExit(f"--p must be in [0, 1], got {args.p}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    device = torch.device(args.device)
    shape = (args.batch, args.channels, args.res, args.res)
    images = (torch.rand(shape, device=device) * 2 - 1).requires_grad_()
    weights = torch.randn_like(images)
    pipes = {"ours": AugmentPipe(args.preset, p=args.p).to(device)}
    if args.official is not None:
        official = load_official(args.official, dict(PRESETS[args.preset])).to(device)
        official.p.copy_(torch.tensor(args.p))
        pipes["official"] = official

    print(f"preset {args.preset}, p {args.p}, batch {args.batch}x{args.channels}x{args.res}x{args.res}, "
          f"device {device}, threads {torch.get_num_threads()}, {args.iters} passes x {args.repeats} repeats")
    for pipe in pipes.values():
        time_pipe(pipe, images, weights, 2)  # warm-up
    rates: dict[str, list[float]] = {name: [] for name in pipes}
    for repeat in range(args.repeats):
        for name, pipe in pipes.items():
            rates[name].append(time_pipe(pipe, images, weights, args.iters))
        print(f"repeat {repeat}: " + ", ".join(f"{name} {rates[name][-1]:.1f} img/s" for name in pipes))
    median = {name: statistics.median(values) for name, values in rates.items()}
    if "official" in median:
        ratios = [ours / official for ours, official in zip(rates["ours"], rates["official"], strict=True)]
        print(f"official img/s: {median['official']:.1f}")
        print(f"ratio ours/official: {median['ours'] / median['official']:.2f} "
              f"(per repeat: {', '.join(f'{r:.2f}' for r in ratios)})")
    print(f"img/s: {median['ours']:.1f}")


if __name__ == "__main__":
    main()
