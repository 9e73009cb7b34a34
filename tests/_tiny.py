"""Tiny real networks and checkpoints for the tools' tests (seconds on a CPU)."""

from __future__ import annotations

from pathlib import Path

import torch

from ada.checkpoint import save_checkpoint
from ada.networks import Generator


def tiny_generator(res: int = 16, channels: int = 3, seed: int = 0, **synthesis: object) -> Generator:
    """A StyleGAN2 G of a few thousand weights, w_avg set as training would leave it, in eval mode.

    Its images stay within [-1, 1] (std about 0.25), as a trained G's do: saving them as uint8 loses
    nothing but rounding.
    """
    torch.manual_seed(seed)
    G = Generator(z_dim=8, c_dim=0, w_dim=8, img_resolution=res, img_channels=channels,
                  mapping_kwargs=dict(num_layers=2),
                  synthesis_kwargs=dict(channel_base=16 * res, channel_max=16, **synthesis))
    with torch.no_grad():
        for name, weight in G.synthesis.named_parameters():
            if ".torgb." in f".{name}" and name.endswith("weight"):
                weight.mul_(0.25)
        G.mapping.w_avg.copy_(G.mapping(torch.randn(256, 8), None, update_w_avg=False)[:, 0].mean(0))
    return G.eval().requires_grad_(False)


def save_generator(G: Generator, path: Path) -> Path:
    """G as the G_ema of one of our checkpoints (what `ada generate --network` reads)."""
    save_checkpoint(path, {"G_kwargs": G.init_kwargs, "G_ema": G.state_dict()})
    return path
