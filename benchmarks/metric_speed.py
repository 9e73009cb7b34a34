"""Speed and peak memory of the metric machinery, for the metrics named by --metrics.

    python benchmarks/metric_speed.py --batch 64 --resolution 256 --device cuda --metrics fid50k_full,kid50k_full
    python benchmarks/metric_speed.py --batch 8 --resolution 32 --device cpu --batches 3

Feature extraction runs our FID Inception with random weights (speed does not depend on their
values, and nothing is downloaded) on random uint8 images of the given resolution, as a metric
pass does, and reports images per second, with the TF1 resize on its own for reference; `is`
metrics add the class logits. It is timed once for all metrics, as one metric pass shares the
generated-image features between them. Then each metric kind's statistic, on random features:

    fid   tr((S1 S2)^(1/2)) our way (symmetric eigendecompositions) against scipy.linalg.sqrtm
    kid   --kid-subsets of the metric's subsets, scaled to all of them
    pr    the k-NN radii and coverage at --pr-rows rows of each set (the work grows with the
          square of the count; the metric's own size is estimated from that)
    ppl   not timed: it needs an LPIPS network, and none is shipped

Each part prints its peak memory: resident memory (RSS), its rise during that part, and on CUDA
the peak of torch's allocator. The last line is `img/s: X`, the feature extraction rate.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import scipy.linalg
import torch
from harness import Memory, MemoryWindow, sync

import metrics
from metrics import formulas
from metrics.feature_nets import InceptionFeatures
from metrics.inception import FEATURE_DIM, FIDInceptionV3, resize_like_tf1
from metrics.names import MetricSpec


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--metrics", default="fid50k_full",
                        help="comma-separated metric names, e.g. fid50k_full,kid50k_full,pr50k3_full,is50k")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--batches", type=int, default=10, help="timed batches after one warm-up batch")
    parser.add_argument("--dim", type=int, default=FEATURE_DIM,
                        help="feature dimension of the statistics (default: Inception's)")
    parser.add_argument("--fid-repeats", type=int, default=1)
    parser.add_argument("--kid-subsets", type=int, default=5, help="KID subsets timed (scaled to the metric's)")
    parser.add_argument("--pr-rows", type=int, default=1000, help="rows of each set in the PR timing")
    args = parser.parse_args(argv)
    try:
        args.specs = metrics.parse_metric_names(args.metrics)
    except ValueError as exc:
        parser.error(f"--metrics: {exc}")
    if not args.specs:
        parser.error("--metrics names no metric; give e.g. fid50k_full")
    if min(args.batch, args.resolution, args.batches, args.dim, args.fid_repeats, args.kid_subsets) < 1:
        parser.error("--batch, --resolution, --batches, --dim, --fid-repeats and --kid-subsets must be at least 1")
    if args.pr_rows < 2:
        parser.error("--pr-rows must be at least 2")
    return args


def images_per_second(fn: Callable[[torch.Tensor], object], images: torch.Tensor, batches: int) -> float:
    with torch.no_grad():
        fn(images)  # warm-up: allocator, cuDNN algorithm choice
        sync(images.device)
        start = time.perf_counter()
        for _ in range(batches):
            fn(images)
        sync(images.device)
    return batches * images.shape[0] / (time.perf_counter() - start)


def fid_timings(dim: int, repeats: int) -> tuple[float, float, float]:
    """Seconds of our Frechet distance and of the official sqrtm way, and their relative difference."""
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2 * dim, dim)), rng.normal(size=(2 * dim, dim)) * 1.1 + 0.1
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    mu = np.zeros(dim)
    start = time.perf_counter()
    for _ in range(repeats):
        ours = formulas.frechet_distance(mu, s1, mu, s2)
    t_ours = (time.perf_counter() - start) / repeats
    start = time.perf_counter()
    for _ in range(repeats):
        covmean = scipy.linalg.sqrtm(s1 @ s2)
        official = float(np.real(np.trace(s1 + s2 - 2 * covmean)))
    t_scipy = (time.perf_counter() - start) / repeats
    return t_ours, t_scipy, abs(ours - official) / abs(official)


def kid_seconds(spec: MetricSpec, dim: int, subsets: int) -> tuple[float, int]:
    """Seconds of `subsets` of the metric's KID subsets (at most all of them), and the subset size m."""
    m = min(spec.num_gen, spec.max_subset_size)
    rng = np.random.default_rng(0)
    gen, real = rng.normal(size=(m, dim)), rng.normal(size=(m, dim)) + 0.1
    start = time.perf_counter()
    formulas.kernel_inception_distance(gen, real, min(subsets, spec.num_subsets), spec.max_subset_size, rng)
    return time.perf_counter() - start, m


def pr_seconds(spec: MetricSpec, dim: int, rows: int, device: torch.device) -> tuple[float, int]:
    """Seconds of precision and recall with `rows` rows of each set (at most the metric's count)."""
    n = min(rows, spec.num_gen)
    gen = torch.randn(n, dim, generator=torch.Generator().manual_seed(0)).to(device)
    real = torch.randn(n, dim, generator=torch.Generator().manual_seed(1)).to(device) + 0.1
    sync(device)
    start = time.perf_counter()
    formulas.precision_recall(real, gen, spec.nhood_size)
    sync(device)
    return time.perf_counter() - start, n


def print_memory(memory: Memory, peaks: list[Memory]) -> None:
    peaks.append(memory)
    print(f"  peak memory: {memory.describe(start='its start')}", flush=True)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    specs = args.specs
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"threads {torch.get_num_threads()}"
    print(f"metrics {', '.join(s.name for s in specs)}; batch {args.batch} at {args.resolution}px; "
          f"device {device} ({where}); random network weights and features (speed does not depend on their "
          "values; nothing is downloaded)", flush=True)
    peaks: list[Memory] = []
    rate = None
    feature_specs = [s for s in specs if s.uses_features]
    if feature_specs:
        with_logits = any(s.kind == "is" for s in feature_specs)
        window = MemoryWindow(device)
        torch.manual_seed(0)
        net = InceptionFeatures(FIDInceptionV3()).to(device)
        images = torch.randint(0, 256, (args.batch, 3, args.resolution, args.resolution), dtype=torch.uint8,
                               device=device)
        label = "inception features+logits" if with_logits else "inception features"
        rate = images_per_second((lambda x: net.logits(net(x))) if with_logits else net, images, args.batches)
        resize = images_per_second(lambda x: resize_like_tf1(x.float()), images, args.batches)
        print(f"{label:26s} batch {args.batch:4d}  {args.resolution}px -> 299px  {rate:10.1f} img/s")
        print(f"{'tf1 resize alone':26s} batch {args.batch:4d}  {args.resolution}px -> 299px  {resize:10.1f} img/s")
        print_memory(window.read(), peaks)
        del net, images
        num_gen = max(s.num_gen for s in feature_specs)
        print(f"  generated-image features for {', '.join(s.name for s in feature_specs)}: {num_gen} images, "
              f"about {metrics.format_time(num_gen / rate)} at this rate, plus the generator's time "
              "(real-image features are cached after the first run)")
    for spec in specs:
        window = MemoryWindow(device)
        if spec.kind == "fid":
            ours, official, rel = fid_timings(args.dim, args.fid_repeats)
            print(f"{spec.name}: FID at {args.dim}-d: eigendecomposition {ours:.2f} s, scipy sqrtm {official:.2f} s "
                  f"(x{official / ours:.1f}), relative difference {rel:.1e}")
        elif spec.kind == "kid":
            seconds, m = kid_seconds(spec, args.dim, args.kid_subsets)
            timed = min(args.kid_subsets, spec.num_subsets)
            print(f"{spec.name}: KID at {args.dim}-d, {timed} subsets of {m}: {seconds:.3g} s; "
                  f"all {spec.num_subsets} subsets about {metrics.format_time(seconds * spec.num_subsets / timed)}")
        elif spec.kind == "pr":
            seconds, n = pr_seconds(spec, args.dim, args.pr_rows, device)
            estimate = seconds * (spec.num_gen / n) ** 2
            print(f"{spec.name}: precision/recall at {args.dim}-d, k={spec.nhood_size}, {n} real vs {n} generated: "
                  f"{seconds:.3g} s; {spec.num_gen} vs {spec.num_gen} about {metrics.format_time(estimate)} "
                  "(more with a larger real set)")
        elif spec.kind == "is":
            print(f"{spec.name}: the Inception Score's statistic is negligible; its logits are timed above")
            continue
        else:
            print(f"{spec.name}: not timed: PPL runs the generator and an LPIPS network, and none is shipped")
            continue
        print_memory(window.read(), peaks)
    if peaks:
        gpu = [m.gpu_peak for m in peaks if m.gpu_peak is not None]
        print(f"peak memory: RSS {max(m.peak_rss for m in peaks):.0f} MiB"
              + (f", GPU peak allocated {max(gpu):.0f} MiB" if gpu else "") + " (the largest over the parts)")
    if rate is not None:
        print(f"img/s: {rate:.1f}")


if __name__ == "__main__":
    main()
