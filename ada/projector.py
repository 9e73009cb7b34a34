"""`ada project`: find the w whose image is closest to a target image, as the official projector does.

One w, shared by every layer, starts at the average w and is optimised with Adam together with the
per-layer noise inputs:

- the distance is perceptual: the squared L2 distance of LPIPS-style embeddings of the two images
  (`metrics.lpips_style_embedding`) of a TorchScript network the user gives (`--lpips-net`;
  NVIDIA's vgg16.pt gives the official LPIPS), or by default the mean squared pixel difference,
  which needs no download;
- while the learning rate ramps up over the first 5% of the steps and down (cosine) over the last
  25%, gaussian noise of decreasing strength (5% of the spread of w, to zero at 75%) is added to w,
  so the search does not stick in the first local minimum;
- the noise inputs are kept unit-variance and, through a penalty on the correlation of
  neighbouring pixels at every scale, white: otherwise they learn to draw the target themselves.

Written to the output folder: target.png (the cropped and resized target), proj.png (the image of
the projected w), projected_w.npz (`w`, [1, num_ws, w_dim], which `ada generate --projected-w`
renders) and, with --save-video, proj.mp4: target and projection side by side, step by step.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ada.checkpoint import load_unconditional_generator
from ada.checks import check_seed
from ada.data import convert_image, open_image
from ada.distributed import default_device
from ada.errors import UserError
from ada.files import atomic_write, read_regular_file
from ada.images import output_dir, save_png, to_uint8
from ada.movie import movie_path, write_movie
from ada.networks import Generator
from metrics.feature_nets import Embedding

# The distance network sees at most this size, as in the official projector.
MAX_DISTANCE_SIZE = 256


@dataclass(frozen=True)
class Schedule:
    """The official projector's settings."""

    steps: int = 1000
    w_avg_samples: int = 10_000
    initial_learning_rate: float = 0.1
    initial_noise_factor: float = 0.05
    lr_rampdown_length: float = 0.25
    lr_rampup_length: float = 0.05
    noise_ramp_length: float = 0.75
    regularize_noise_weight: float = 1e5

    def learning_rate(self, t: float) -> float:
        """At progress t in [0, 1): a linear ramp up, then a cosine ramp down to 0."""
        down = min(1.0, (1.0 - t) / self.lr_rampdown_length)
        ramp = (0.5 - 0.5 * math.cos(down * math.pi)) * min(1.0, t / self.lr_rampup_length)
        return self.initial_learning_rate * ramp

    def w_noise_scale(self, t: float, w_std: float) -> float:
        return w_std * self.initial_noise_factor * max(0.0, 1.0 - t / self.noise_ramp_length) ** 2


def pixel_embedding(images: torch.Tensor) -> torch.Tensor:
    """The default distance's embedding: images in [0, 255] -> vectors whose squared distance is the mean
    squared difference of the pixels in [0, 1]."""
    flat = images.flatten(1) / 255
    return flat / flat.shape[1] ** 0.5


def load_target(path: str | Path, resolution: int, channels: int) -> np.ndarray:
    """The target image, centre-cropped to a square and resized to G's resolution: uint8 [C, H, W].

    Read as training images are (`ada.data`): a regular file only, its size checked before decoding,
    16 bits scaled to 8.
    """
    name = f"--target={path}"
    image = convert_image(open_image(read_regular_file(Path(path)), name), "RGB" if channels == 3 else "L", name)
    w, h = image.size
    s = min(w, h)
    image = image.crop(((w - s) // 2, (h - s) // 2, (w + s) // 2, (h + s) // 2))
    image = image.resize((resolution, resolution), Image.Resampling.LANCZOS)
    array = np.array(image, dtype=np.uint8)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def w_statistics(G: Generator, samples: int, device: torch.device) -> tuple[torch.Tensor, float]:
    """Mean w [1, 1, w_dim] and the root-mean-square distance of w from it, over `samples` random z."""
    z = torch.from_numpy(np.random.RandomState(123).randn(samples, G.z_dim)).to(device, torch.float32)
    with torch.no_grad():
        w = G.mapping(z, None, update_w_avg=False)[:, :1]
    w_avg = w.mean(dim=0, keepdim=True)
    return w_avg, float((w - w_avg).square().sum() / samples) ** 0.5


def noise_buffers(G: Generator) -> list[torch.Tensor]:
    return [buf for name, buf in G.synthesis.named_buffers() if name.endswith("noise_const")]


def noise_regularisation(buffers: list[torch.Tensor]) -> torch.Tensor:
    """Squared autocorrelation of neighbouring pixels, over every 2x downsampling down to 8x8."""
    total = torch.zeros([], device=buffers[0].device) if buffers else torch.zeros([])
    for buf in buffers:
        noise = buf[None, None]
        while True:
            total = total + (noise * torch.roll(noise, shifts=1, dims=3)).mean() ** 2
            total = total + (noise * torch.roll(noise, shifts=1, dims=2)).mean() ** 2
            if noise.shape[2] <= 8:
                break
            noise = F.avg_pool2d(noise, kernel_size=2)
    return total


def distance_input(images: torch.Tensor) -> torch.Tensor:
    """G's output in [-1, 1] -> what the distance sees: [0, 255], 3 channels, at most 256 px."""
    images = (images + 1) * (255 / 2)
    if images.shape[2] > MAX_DISTANCE_SIZE:
        images = F.interpolate(images, size=(MAX_DISTANCE_SIZE, MAX_DISTANCE_SIZE), mode="area")
    return images.repeat(1, 3, 1, 1) if images.shape[1] == 1 else images


@dataclass
class Projection:
    ws: torch.Tensor  # [steps, num_ws, w_dim], the w after each step
    losses: list[float]  # the distance at each step


def project(
    G: Generator,
    target: np.ndarray,
    embed: Embedding = pixel_embedding,
    schedule: Schedule | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: Callable[[int, float], None] | None = None,
) -> Projection:
    """Projects `target` (uint8 [C, H, W] at G's resolution) into W. G is not modified: the noise
    inputs are optimised on a copy and, as in the official projector, the result is rendered with G's own."""
    schedule = schedule or Schedule()
    device = torch.device(device)
    G = copy.deepcopy(G).eval().requires_grad_(False).to(device)
    rng = torch.Generator(device=device).manual_seed(seed)
    w_avg, w_std = w_statistics(G, schedule.w_avg_samples, device)
    target_images = torch.from_numpy(target).to(device, torch.float32)[None] / 127.5 - 1
    with torch.no_grad():
        target_embedding = embed(distance_input(target_images))

    w_opt = w_avg.clone().requires_grad_(True)
    buffers = noise_buffers(G)
    for buf in buffers:
        buf.copy_(torch.randn(buf.shape, generator=rng, device=device))
        buf.requires_grad_(True)
    optimizer = torch.optim.Adam([w_opt, *buffers], betas=(0.9, 0.999), lr=schedule.initial_learning_rate)

    ws, losses = [], []
    for step in range(schedule.steps):
        t = step / schedule.steps
        for group in optimizer.param_groups:
            group["lr"] = schedule.learning_rate(t)
        w_noise = torch.randn(w_opt.shape, generator=rng, device=device) * schedule.w_noise_scale(t, w_std)
        images = G.synthesis((w_opt + w_noise).repeat(1, G.num_ws, 1), noise_mode="const")
        dist = (embed(distance_input(images)) - target_embedding).square().sum()
        loss = dist + schedule.regularize_noise_weight * noise_regularisation(buffers)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        ws.append(w_opt.detach()[0].repeat(G.num_ws, 1))
        losses.append(float(dist.detach()))
        with torch.no_grad():  # unit variance, zero mean: the scale belongs to the learned noise strengths
            for buf in buffers:
                buf -= buf.mean()
                buf *= buf.square().mean().rsqrt()
        if progress is not None:
            progress(step, losses[-1])
    return Projection(torch.stack(ws), losses)


def save_projected_w(path: Path, ws: torch.Tensor) -> None:
    """ws [N, num_ws, w_dim] as projected_w.npz with the array `w`, the official layout."""
    atomic_write(path, lambda f: np.savez(f, w=ws.cpu().numpy().astype(np.float32)))


def run_projection(
    network: str,
    target: str,
    outdir: str,
    steps: int = 1000,
    seed: int = 0,
    save_video: bool = False,
    lpips_net: str | None = None,
) -> Path:
    """`ada project`: writes target.png, proj.png, projected_w.npz (and proj.mp4) into outdir."""
    if steps < 1:
        raise UserError(f"--steps={steps} must be at least 1")
    check_seed("--seed", seed)
    device = default_device()
    G = load_unconditional_generator(network, device, "projection works")
    embed = pixel_embedding
    if lpips_net is not None:
        import metrics

        try:
            embed = metrics.load_lpips_embedding(lpips_net, device=device)
        except metrics.FeatureNetUnavailable as exc:
            raise UserError(str(exc)) from None
    target_uint8 = load_target(target, G.img_resolution, G.img_channels)
    out = output_dir(outdir)
    video = movie_path(out / "proj.mp4", "--save-video") if save_video else None

    def report(step: int, dist: float) -> None:
        if step % 100 == 0 or step == steps - 1:
            print(f"step {step + 1:>5d}/{steps}: dist {dist:<8.4g}", flush=True)

    result = project(G, target_uint8, embed, Schedule(steps=steps), seed=seed, device=device, progress=report)
    save_png(target_uint8.transpose(1, 2, 0), out / "target.png")
    final = result.ws[-1:]
    with torch.no_grad():
        save_png(to_uint8(G.synthesis(final, noise_mode="const"))[0], out / "proj.png")
    save_projected_w(out / "projected_w.npz", final)
    if video is not None:
        frames = (np.concatenate([target_uint8.transpose(1, 2, 0), frame], axis=1)
                  for frame in _step_images(G, result.ws))
        write_movie(frames, video, fps=10)
    print(f"Wrote target.png, proj.png, projected_w.npz{' and ' + video.name if video else ''} to {out}")
    return out / "projected_w.npz"


def _step_images(G: Generator, ws: torch.Tensor) -> Iterator[np.ndarray]:
    with torch.no_grad():
        for w in ws:
            yield to_uint8(G.synthesis(w[None], noise_mode="const"))[0]


@click.command("project")
@click.option("--network", required=True, help="Checkpoint, run directory or official network pickle")
@click.option("--target", required=True, help="The image to project (cropped to a square, resized)",
              metavar="FILE")
@click.option("--outdir", required=True, help="Where to write the results", metavar="DIR")
@click.option("--steps", type=int, default=1000, show_default=True, help="Optimisation steps")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed")
@click.option("--save-video", type=bool, default=False, show_default=True, metavar="BOOL",
              help="Also write proj.mp4: target and projection, step by step")
@click.option("--lpips-net", help="TorchScript network for the distance (NVIDIA's vgg16.pt: LPIPS) "
              "[default: pixel distance]", metavar="PATH")
def project_command(**options: object) -> None:
    """Project an image into W: find the w whose image is closest to it."""
    run_projection(**options)
