"""Compute a list of metrics for one generator, sharing the expensive passes between them.

The official code runs a fresh generator pass for every metric. Here each feature network sees one
generator pass (as many images as the largest metric needs; smaller metrics use its first rows) and
one pass per distinct number of real images, so fid50k_full + kid50k_full cost one 50k pass, not two.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import formulas
from .data import Generator, MirroredImages, RealImages, image_of, label_sampler
from .feature_nets import FeatureNet, FeatureNetUnavailable, PPLDistance, ppl_unavailable_message
from .features import FeatureStats, eval_copy, generated_features, real_features
from .names import MetricSpec, parse_metric_name, parse_metric_names
from .ppl import path_lengths


def format_duration(seconds: float, parts: int = 2) -> str:
    """Seconds in the `parts` largest units from the first non-zero one: '42s', '3m 05s', '2h 07m' with 2
    parts; '2h 05m 09s', '1d 03h 20m' with 3 (the official ``total_time_str`` style)."""
    s = max(0, int(round(seconds)))
    values = (s // 86400, s // 3600 % 24, s // 60 % 60, s % 60)
    first = next((i for i, v in enumerate(values) if v), len(values) - 1)
    shown = list(zip(values, "dhms", strict=True))[first : first + parts]
    return " ".join(f"{v}{unit}" if i == 0 else f"{v:02d}{unit}" for i, (v, unit) in enumerate(shown))


def format_time(seconds: float) -> str:
    """A metric's total time as the official ``total_time_str`` writes it: 12s, 3m 04s, 2h 05m 09s, 1d 03h 20m."""
    return format_duration(seconds, parts=3)


@dataclass
class MetricResult:
    """One metric's numbers (keys as the official code names them) and how long it took."""

    metric: str
    results: dict[str, float]
    total_time: float
    num_gpus: int = 1
    feature_net: str | None = None

    def record(self, snapshot_pkl: str | None = None, **extra: object) -> dict:
        """The official metric-NAME.jsonl line as a dict, plus ``feature_net`` and any ``extra`` keys."""
        return dict(results=dict(self.results), metric=self.metric, total_time=self.total_time,
                    total_time_str=format_time(self.total_time), num_gpus=self.num_gpus,
                    feature_net=self.feature_net, snapshot_pkl=snapshot_pkl, timestamp=time.time(), **extra)


@dataclass
class _Run:
    """The shared state of one evaluate() call: inputs and the passes computed so far."""

    generator: Generator
    reals: RealImages | None
    device: torch.device
    batch_size: int
    cache_dir: Path | None
    progress: bool
    rank: int
    world_size: int
    seed: int
    noise_mode: str
    num_workers: int
    xflip: bool
    gen_counts: dict[str, int]
    real_capture_all: dict[tuple[str, str, int], bool]
    gen_done: dict[str, FeatureStats] = field(default_factory=dict)
    real_done: dict[tuple[str, str, int], FeatureStats] = field(default_factory=dict)

    def rng(self) -> torch.Generator:
        # Every pass starts from the same seed, so every network sees the same generated images.
        return torch.Generator().manual_seed(self.seed * 1_000_003 + self.rank)

    def gen(self, net: FeatureNet) -> FeatureStats:
        if net.name not in self.gen_done:
            rng = self.rng()
            self.gen_done[net.name] = generated_features(
                self.generator, net, num_items=self.gen_counts[net.name],
                labels=label_sampler(self.generator, self.reals, rng), rng=rng, device=self.device,
                batch_size=self.batch_size, noise_mode=self.noise_mode, rank=self.rank,
                world_size=self.world_size, progress=self.progress)
        return self.gen_done[net.name]

    def real(self, net: FeatureNet, spec: MetricSpec) -> FeatureStats:
        reals = _reals_for(spec, self.reals, self.xflip)
        key = (net.name, reals.name, _num_real(spec, reals))
        if key not in self.real_done:
            self.real_done[key] = real_features(
                reals, net, max_items=key[2], capture_all=self.real_capture_all[key], device=self.device,
                batch_size=self.batch_size, cache_dir=self.cache_dir, rank=self.rank,
                world_size=self.world_size, num_workers=self.num_workers, progress=self.progress)
        return self.real_done[key]


def _reals_for(spec: MetricSpec, reals: RealImages, xflip: bool) -> RealImages:
    """The real images a metric compares against: with their mirror images for the legacy metrics of
    x-flipped training data."""
    return MirroredImages(reals) if xflip and spec.keeps_xflips else reals


def _num_real(spec: MetricSpec, reals: RealImages) -> int:
    return len(reals) if spec.max_real is None else min(len(reals), spec.max_real)


def _net_for(
    spec: MetricSpec, feature_net: FeatureNet | None, pr_feature_net: FeatureNet | None
) -> FeatureNet:
    net = pr_feature_net if spec.kind == "pr" and pr_feature_net is not None else feature_net
    if net is None:
        raise FeatureNetUnavailable(f"{spec.name} needs a feature network and none was given "
                                    "(load one with metrics.load_feature_net)")
    return net


def _check_inputs(specs: Sequence[MetricSpec], generator: Generator, reals: RealImages | None,
                  nets: dict[str, FeatureNet], ppl_distance: PPLDistance | None) -> None:
    for spec in specs:
        if spec.kind == "is" and not nets[spec.name].has_logits:
            raise FeatureNetUnavailable(nets[spec.name].no_logits_message())
        if spec.kind == "ppl" and ppl_distance is None:
            raise FeatureNetUnavailable(ppl_unavailable_message())
    needs_reals = any(s.kind in ("fid", "kid", "pr") for s in specs) or generator.c_dim > 0
    if not needs_reals:
        return
    if reals is None:
        raise ValueError("these metrics compare against real images, but no dataset was given")
    if len(reals) == 0:
        raise ValueError(f"the dataset {reals.name!r} is empty: metrics need real images")
    c, h, w = image_of(reals[0]).shape
    g = generator.img_resolution
    if (h, w) != (g, g) or c != generator.img_channels:
        raise ValueError(
            f"the checkpoint makes {generator.img_channels}x{g}x{g} images but the dataset {reals.name!r} "
            f"holds {c}x{h}x{w} images: evaluate against data at the checkpoint's resolution"
        )


def _compute(
    spec: MetricSpec, net: FeatureNet | None, run: _Run, ppl_distance: PPLDistance | None
) -> list[float]:
    if spec.kind == "ppl":
        rng = run.rng()
        dist = path_lengths(
            run.generator, ppl_distance, spec, labels=label_sampler(run.generator, run.reals, rng), rng=rng,
            device=run.device, batch_size=run.batch_size, rank=run.rank, world_size=run.world_size,
            progress=run.progress)
        return [formulas.filtered_mean(dist, 1, 99)]
    gen = run.gen(net)
    n = spec.num_gen
    if spec.kind == "is":
        rows = torch.from_numpy(gen.all()[:n])
        logits = torch.cat([net.logits(x.to(run.device)).cpu() for x in rows.split(10_000)])
        return list(formulas.inception_score(logits.numpy(), spec.num_splits))
    real = run.real(net, spec)
    if spec.kind == "fid":
        mu_g, sigma_g = gen.mean_cov() if n == gen.num_items else formulas.mean_cov(gen.all()[:n])
        mu_r, sigma_r = real.mean_cov()
        return [formulas.frechet_distance(mu_g, sigma_g, mu_r, sigma_r)]
    if spec.kind == "kid":
        rng = np.random.default_rng(run.seed)
        return [formulas.kernel_inception_distance(gen.all()[:n], real.all(), spec.num_subsets,
                                                   spec.max_subset_size, rng)]
    precision, recall = formulas.precision_recall(torch.from_numpy(real.all()).to(run.device),
                                                  torch.from_numpy(gen.all()[:n]).to(run.device),
                                                  spec.nhood_size)
    return [precision, recall]


@torch.no_grad()
def evaluate(
    metrics: str | Sequence[str] | Sequence[MetricSpec],
    generator: Generator,
    reals: RealImages | None = None,
    *,
    feature_net: FeatureNet | None = None,
    pr_feature_net: FeatureNet | None = None,
    ppl_distance: PPLDistance | None = None,
    device: str | torch.device = "cpu",
    batch_size: int = 64,
    cache_dir: str | Path | None = None,
    progress: bool = False,
    rank: int = 0,
    world_size: int = 1,
    seed: int = 0,
    noise_mode: str = "random",
    num_workers: int = 0,
    xflip: bool = False,
) -> list[MetricResult]:
    """Compute ``metrics`` for ``generator`` against ``reals``; one :class:`MetricResult` per metric.

    ``xflip``: G was trained on ``reals`` and their mirror images (``--mirror``). Give the reals
    without mirror images: the legacy metrics (fid{N}, kid{N}, pr{N}) add them, the others do not,
    as in the official code.

    With several ranks (``torch.distributed`` initialised by the caller), every rank calls this with
    its ``rank`` and gets the same results; ``cache_dir`` must then be on a file system all ranks see.
    Every input is checked before any work starts: a missing feature network or PPL distance raises
    :class:`FeatureNetUnavailable`, bad data (none, empty, wrong resolution or channels, missing
    labels for a conditional G) raises ValueError, each with a one-line message.
    """
    if isinstance(metrics, str):
        specs = parse_metric_names(metrics)
    else:
        specs = [m if isinstance(m, MetricSpec) else parse_metric_name(m) for m in metrics]
    nets = {s.name: _net_for(s, feature_net, pr_feature_net) for s in specs if s.uses_features}
    _check_inputs(specs, generator, reals, nets, ppl_distance)
    device = torch.device(device)
    gen_counts: dict[str, int] = {}
    real_capture_all: dict[tuple[str, str, int], bool] = {}
    for s in specs:
        if s.uses_features:
            name = nets[s.name].name
            gen_counts[name] = max(gen_counts.get(name, 0), s.num_gen)
            if s.kind in ("fid", "kid", "pr"):
                chosen = _reals_for(s, reals, xflip)
                key = (name, chosen.name, _num_real(s, chosen))
                real_capture_all[key] = real_capture_all.get(key, False) or s.kind != "fid"
    run = _Run(eval_copy(generator, device), reals, device, batch_size,
               Path(cache_dir) if cache_dir is not None else None, progress, rank, world_size, seed,
               noise_mode, num_workers, xflip, gen_counts, real_capture_all)
    results = []
    for spec in specs:
        start = time.perf_counter()
        net = nets.get(spec.name)
        values = _compute(spec, net, run, ppl_distance)
        results.append(MetricResult(spec.name, dict(zip(spec.result_keys, values, strict=True)),
                                    time.perf_counter() - start, world_size, net.name if net else None))
    return results
