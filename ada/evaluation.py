"""Metrics for trained networks: during training at every snapshot, and `ada metrics` afterwards.

The maths and feature networks live in the `metrics` package; this module adapts our
datasets and checkpoints to it, decides once per run which metrics can be computed here
(no Inception weights on this machine turns the feature metrics off with one message), and
writes the official `metric-NAME.jsonl` lines.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import torch

import metrics
from ada.data import ImageDataset, open_dataset
from ada.distributed import default_device
from ada.errors import UserError
from ada.files import append_jsonl


class MetricReals:
    """Our dataset as the `metrics` package reads it: index -> (uint8 image, label), with a cache key.

    Always the images without their mirror images: the metrics add those where the official ones
    do (`metrics.evaluate(xflip=...)`).
    """

    def __init__(self, dataset: ImageDataset, source: str):
        dataset = dataset.unmirrored()
        self.dataset = dataset
        digest = hashlib.sha256(str(Path(source).expanduser().resolve()).encode()).hexdigest()[:8]
        self.name = f"{dataset.name}-{digest}-{dataset.resolution}px-{len(dataset.names)}"

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.dataset[index]

    def get_label(self, index: int) -> Any:
        return self.dataset.label(index)


class MetricSuite:
    """The metrics a run computes, with the networks they need, resolved once."""

    def __init__(
        self,
        names: list[str],
        features: str | None,
        ppl_net: str | None,
        device: torch.device,
        say: Callable[[str], None],
        pr_net: str | None = None,
        xflip: bool = False,
    ):
        try:
            specs = metrics.parse_metric_names(",".join(names))
        except ValueError as exc:
            raise UserError(f"--metrics: {exc}") from None
        self.device = device
        self.xflip = xflip
        self.feature_net = self.pr_feature_net = self.ppl_distance = None
        if pr_net is not None and any(s.kind == "pr" for s in specs):
            # A file the user named explicitly: a bad one is an error, not a metric quietly switched off.
            try:
                self.pr_feature_net = metrics.load_torchscript_features(pr_net, device=device, flag="--pr-net")
            except metrics.FeatureNetUnavailable as exc:
                raise UserError(str(exc)) from None
        # PR falls back on the main feature network (Inception) without --pr-net; results name the network.
        on_main_net = [s for s in specs if s.uses_features and not (s.kind == "pr" and self.pr_feature_net)]
        if on_main_net:
            try:
                self.feature_net = metrics.load_feature_net(features, device=device)
            except metrics.FeatureNetUnavailable as exc:
                say(f"{', '.join(s.name for s in on_main_net)} off: {exc}")
                specs = [s for s in specs if s not in on_main_net]
        if any(s.kind == "ppl" for s in specs):
            try:
                self.ppl_distance = metrics.load_ppl_distance(ppl_net, device=device)
            except metrics.FeatureNetUnavailable as exc:
                say(f"{', '.join(s.name for s in specs if s.kind == 'ppl')} off: {exc}")
                specs = [s for s in specs if s.kind != "ppl"]
        self.specs = specs

    def evaluate(self, G: torch.nn.Module, reals: MetricReals, rank: int = 0, world_size: int = 1,
                 progress: bool = True) -> list[metrics.MetricResult]:
        if not self.specs:
            return []
        try:
            return metrics.evaluate(
                self.specs, G, reals, feature_net=self.feature_net, pr_feature_net=self.pr_feature_net,
                ppl_distance=self.ppl_distance, device=self.device, cache_dir=metrics.default_cache_dir(),
                progress=progress and rank == 0, rank=rank, world_size=world_size, xflip=self.xflip,
            )
        except ValueError as exc:
            raise UserError(str(exc)) from None


def write_results(
    results: list[metrics.MetricResult], run_dir: Path, snapshot: str, kimg: float | None
) -> list[dict]:
    """Append each result to run_dir/metric-NAME.jsonl, as the official code does; return the lines."""
    lines = []
    for result in results:
        line = result.record(snapshot_pkl=snapshot, snapshot=snapshot, kimg=kimg)
        append_jsonl(run_dir / f"metric-{result.metric}.jsonl", line)
        lines.append(line)
    return lines


def format_results(results: list[metrics.MetricResult]) -> str:
    """'fid50k_full 12.3 [inception-2015-12-05]  ...': each metric names the network its features came from."""
    parts = []
    for r in results:
        values = " ".join(f"{k} {v:.4g}" for k, v in r.results.items())
        parts.append(f"{values} [{r.feature_net}]" if r.feature_net else values)
    return "  ".join(parts)


@click.command("metrics")
@click.option("--network", required=True, help="Checkpoint, run directory or official network pickle")
@click.option("--data", required=True, help="The real images: folder, zip or built-in name", metavar="PATH")
@click.option("--metrics", "names", default="fid50k_full", show_default=True, help="Comma-separated metrics")
@click.option("--mirror", type=bool, default=False,
              help="The network was trained with x-flips (--mirror=1): the legacy metrics keep them, as official")
@click.option("--features", help="TorchScript feature network to use instead of Inception", metavar="PATH")
@click.option("--pr-net", help="TorchScript feature network for precision/recall (NVIDIA's vgg16.pt)",
              metavar="PATH")
@click.option("--ppl-net", help="TorchScript network for the PPL distance (or $ADA_PPL_NET)", metavar="PATH")
def metrics_command(network: str, data: str, names: str, mirror: bool, features: str | None,
                    pr_net: str | None, ppl_net: str | None) -> None:
    """Compute metrics for a trained network against a dataset."""
    from ada.checkpoint import load_generator, resolve_checkpoint_path

    device = default_device()
    G = load_generator(network, device)
    dataset = open_dataset(data, cond=G.c_dim > 0)

    def refuse(message: str) -> None:
        raise UserError(message)

    suite = MetricSuite([n for n in names.split(",") if n.strip()], features, ppl_net, device, refuse,
                        pr_net=pr_net, xflip=mirror)
    results = suite.evaluate(G, MetricReals(dataset, data))
    path = resolve_checkpoint_path(network)
    if path.parent.joinpath("stats.jsonl").exists():
        # A snapshot of one of our runs: its results join the run's metric files, as during training.
        lines = write_results(results, path.parent, path.name, None)
    else:
        lines = [result.record(snapshot_pkl=path.name) for result in results]
    for line in lines:
        print(json.dumps(line))
