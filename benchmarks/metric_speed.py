"""Speed of the metric machinery: Inception feature extraction (img/s) and the FID matrix square root.

Feature extraction runs our FID Inception (random weights: speed does not depend on their values)
on random uint8 images of the given resolution, as a metric pass does, and reports images per
second, with the TF1 resize on its own for reference. The FID part times tr((S1 S2)^(1/2)) at 2048-d
our way (symmetric eigendecompositions) against the official scipy.linalg.sqrtm.

    python benchmarks/metric_speed.py --batch 64 --resolution 256 --device cuda
    python benchmarks/metric_speed.py --batch 8 --resolution 32 --device cpu --batches 3
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import scipy.linalg
import torch

from metrics.feature_nets import InceptionFeatures
from metrics.formulas import frechet_distance
from metrics.inception import FIDInceptionV3, resize_like_tf1


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def images_per_second(fn, images: torch.Tensor, batches: int, device: torch.device) -> float:
    with torch.no_grad():
        fn(images)  # warm-up: allocator, cuDNN algorithm choice
        sync(device)
        start = time.perf_counter()
        for _ in range(batches):
            fn(images)
        sync(device)
    return batches * images.shape[0] / (time.perf_counter() - start)


def fid_timings(dim: int, repeats: int) -> tuple[float, float, float]:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2 * dim, dim)), rng.normal(size=(2 * dim, dim)) * 1.1 + 0.1
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    mu = np.zeros(dim)
    start = time.perf_counter()
    for _ in range(repeats):
        ours = frechet_distance(mu, s1, mu, s2)
    t_ours = (time.perf_counter() - start) / repeats
    start = time.perf_counter()
    for _ in range(repeats):
        covmean = scipy.linalg.sqrtm(s1 @ s2)
        official = float(np.real(np.trace(s1 + s2 - 2 * covmean)))
    t_scipy = (time.perf_counter() - start) / repeats
    return t_ours, t_scipy, abs(ours - official) / abs(official)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batches", type=int, default=10, help="timed batches after one warm-up batch")
    parser.add_argument("--fid-dim", type=int, default=2048, help="0 skips the FID timing")
    parser.add_argument("--fid-repeats", type=int, default=1)
    args = parser.parse_args()

    device = torch.device(args.device)
    if device.type == "cpu":
        print(f"torch threads: {torch.get_num_threads()}")
    else:
        print(f"device: {torch.cuda.get_device_name(device)}")
    net = InceptionFeatures(FIDInceptionV3()).to(device)
    images = torch.randint(0, 256, (args.batch, 3, args.resolution, args.resolution), dtype=torch.uint8,
                           device=device)
    rate = images_per_second(net, images, args.batches, device)
    resize = images_per_second(lambda x: resize_like_tf1(x.float()), images, args.batches, device)
    print(f"inception features  batch {args.batch:4d}  {args.resolution}px -> 299px  {rate:10.1f} img/s")
    print(f"tf1 resize alone    batch {args.batch:4d}  {args.resolution}px -> 299px  {resize:10.1f} img/s")

    if args.fid_dim:
        ours, official, rel = fid_timings(args.fid_dim, args.fid_repeats)
        print(f"FID at {args.fid_dim}-d: eigendecomposition {ours:.2f} s, scipy sqrtm {official:.2f} s "
              f"(x{official / ours:.1f}), relative difference {rel:.1e}")


if __name__ == "__main__":
    main()
