"""Perceptual path length (StyleGAN, Karras et al. 2019; the StyleGAN2 variant is ppl2_wend).

For each sample: two latents, an interpolation point t, and a second point t + eps; both images
are generated with the same noise, and their perceptual distance divided by eps^2 is one sample of
the squared path length. PPL is the mean after dropping samples outside the 1st..99th percentiles.

The official distance is LPIPS with VGG16 (NVIDIA's vgg16.pt). The distance here is injectable;
see :func:`metrics.feature_nets.lpips_style_distance` for what a network without LPIPS weights gives.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .data import Generator, LabelSampler
from .feature_nets import PPLDistance
from .features import eval_copy, gather_rows, progress_bar, seeded_global_rng, to_rgb
from .names import MetricSpec


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between the directions of a and b (rows), t in [0, 1], unit-norm result."""
    a = a / a.norm(dim=-1, keepdim=True)
    b = b / b.norm(dim=-1, keepdim=True)
    d = (a * b).sum(dim=-1, keepdim=True)
    p = t * torch.acos(d)
    c = b - d * a
    c = c / c.norm(dim=-1, keepdim=True)
    out = a * torch.cos(p) + c * torch.sin(p)
    return out / out.norm(dim=-1, keepdim=True)


def ppl_images(images: torch.Tensor, crop: bool, resolution: int) -> torch.Tensor:
    """G's output -> what the distance network sees: optional face crop, box-downsampled to at most
    256 px, scaled from [-1, 1] to [0, 255], grayscale repeated to 3 channels."""
    if crop:
        c = images.shape[2] // 8
        images = images[:, :, c * 3:c * 7, c * 2:c * 6]
    factor = resolution // 256
    if factor > 1:
        n, ch, h, w = images.shape
        images = images.reshape(n, ch, h // factor, factor, w // factor, factor).mean(dim=(3, 5))
    return to_rgb((images + 1) * (255 / 2))


@torch.no_grad()
def path_lengths(
    generator: Generator,
    distance: PPLDistance,
    spec: MetricSpec,
    *,
    labels: LabelSampler,
    rng: torch.Generator,
    device: torch.device,
    batch_size: int = 2,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = False,
) -> np.ndarray:
    """``spec.num_gen`` samples of the squared path length (before percentile filtering)."""
    G = eval_copy(generator, device)
    # Both images of a pair must share their noise; fresh noise per batch, as the official code.
    noise = [buf for name, buf in G.named_buffers() if name.endswith("noise_const")]
    eps = spec.epsilon
    out = []
    per_rank = math.ceil(spec.num_gen / world_size)
    with progress_bar(spec.num_gen, f"{spec.name} samples", progress and rank == 0) as bar, \
            seeded_global_rng(rng, device):
        for start in range(0, per_rank, batch_size):
            b = min(batch_size, per_rank - start)
            t = torch.rand([b], generator=rng) * (1.0 if spec.sampling == "full" else 0.0)
            z0, z1 = torch.randn([2 * b, G.z_dim], generator=rng).chunk(2)
            c = labels(b)
            for buf in noise:
                buf.copy_(torch.randn(buf.shape, generator=rng))
            t, z0, z1, c = t.to(device), z0.to(device), z1.to(device), c.to(device)
            cc = torch.cat([c, c])
            if spec.space == "w":
                w0, w1 = G.mapping(torch.cat([z0, z1]), cc).chunk(2)
                tw = t[:, None, None]
                ws = torch.cat([w0.lerp(w1, tw), w0.lerp(w1, tw + eps)])
            else:
                tz = t[:, None]
                ws = G.mapping(torch.cat([slerp(z0, z1, tz), slerp(z0, z1, tz + eps)]), cc)
            # float32 throughout, as the official force_fp32: float16 rounding is far above eps-sized steps.
            images = ppl_images(G.synthesis(ws, noise_mode="const", force_fp32=True), spec.crop, G.img_resolution)
            first, second = images.chunk(2)
            dist = distance(first, second) / eps**2
            out.append(gather_rows(dist.to(torch.float64), world_size))
            bar.update(min(b * world_size, spec.num_gen - bar.n))
    return torch.cat(out)[: spec.num_gen].cpu().numpy()
