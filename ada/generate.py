"""`ada generate`: images from a trained network, one PNG per seed plus a grid."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import torch

from ada.checkpoint import load_generator
from ada.errors import UserError
from ada.images import save_png, tile, to_uint8

# np.random.RandomState, which turns a seed into z as the official generate.py does, takes 32-bit seeds.
MAX_SEED = 2**32 - 1
# Seeds per call: every image is also kept for the grid (3 MB each at 1024 px).
MAX_SEEDS = 1000


def parse_seeds(text: str) -> list[int]:
    """'0-3,7' -> [0, 1, 2, 3, 7]."""
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise UserError(f"--seeds: {part!r} is not a seed or a range like 0-15")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo:
            raise UserError(f"--seeds: the range {part} is empty")
        if hi > MAX_SEED:
            raise UserError(f"--seeds: {hi} is outside 0..{MAX_SEED}, the seeds numpy's RandomState takes")
        if len(seeds) + hi - lo + 1 > MAX_SEEDS:
            raise UserError(
                f"--seeds={text} selects more than {MAX_SEEDS} seeds; generate them in several calls "
                f"(e.g. --seeds {lo}-{lo + MAX_SEEDS - 1}, then the next range)"
            )
        seeds.extend(range(lo, hi + 1))
    return seeds


def seed_to_z(seed: int, z_dim: int) -> torch.Tensor:
    """The latent of a seed, drawn exactly as the official generate.py draws it."""
    return torch.from_numpy(np.random.RandomState(seed).randn(1, z_dim))


def class_vector(G: torch.nn.Module, class_idx: int | None) -> torch.Tensor | None:
    if G.c_dim == 0:
        if class_idx is not None:
            print("warning: --class is ignored: the network is unconditional")
        return None
    if class_idx is None:
        raise UserError(f"the network is conditional ({G.c_dim} classes): give --class")
    if not 0 <= class_idx < G.c_dim:
        raise UserError(f"--class={class_idx} is out of range; the network has classes 0..{G.c_dim - 1}")
    c = torch.zeros([1, G.c_dim])
    c[0, class_idx] = 1
    return c


@torch.no_grad()
def generate(
    network: str, seeds: str, truncation_psi: float, class_idx: int | None, noise_mode: str, outdir: str
) -> list[Path]:
    seed_list = parse_seeds(seeds)
    if not math.isfinite(truncation_psi):
        raise UserError(f"--trunc={truncation_psi} must be a finite number (1 means no truncation)")
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    G = load_generator(network, device)
    c = class_vector(G, class_idx)
    out = Path(outdir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--outdir={outdir}: cannot create it ({exc.strerror})") from None
    images = []
    paths = []
    for seed in seed_list:
        z = seed_to_z(seed, G.z_dim).to(device, torch.float32)
        img = G(z, None if c is None else c.to(device), truncation_psi=truncation_psi, noise_mode=noise_mode)
        images.append(to_uint8(img)[0])
        path = out / f"seed{seed:04d}.png"
        save_png(images[-1], path)
        paths.append(path)
    gw = int(np.ceil(np.sqrt(len(seed_list))))
    save_png(tile(np.stack(images), gw, int(np.ceil(len(seed_list) / gw))), out / "grid.png")
    print(f"Wrote {len(paths)} images and grid.png to {out}")
    return paths


def load_projected_w(path: str | Path, num_ws: int, w_dim: int) -> torch.Tensor:
    """The `w` array [N, num_ws, w_dim] of a projected_w.npz, checked against the network."""
    try:
        with np.load(path, allow_pickle=False) as data:
            ws = data["w"]
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"--projected-w={path}: not a projected_w.npz with an array 'w' ({exc})") from None
    if ws.ndim != 3 or ws.shape[1:] != (num_ws, w_dim):
        raise UserError(f"--projected-w={path}: w has shape {tuple(ws.shape)}, but the network takes "
                        f"[N, {num_ws}, {w_dim}]; project with this network")
    return torch.from_numpy(ws.astype(np.float32))


@torch.no_grad()
def render_projected_w(network: str, projected_w: str, noise_mode: str, outdir: str) -> list[Path]:
    """`ada generate --projected-w`: one PNG per w of an `ada project` result, proj00.png, proj01.png, ..."""
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    G = load_generator(network, device)
    ws = load_projected_w(projected_w, G.num_ws, G.w_dim).to(device)
    out = Path(outdir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--outdir={outdir}: cannot create it ({exc.strerror})") from None
    paths = []
    for idx, w in enumerate(ws):
        path = out / f"proj{idx:02d}.png"
        save_png(to_uint8(G.synthesis(w[None], noise_mode=noise_mode))[0], path)
        paths.append(path)
    print(f"Wrote {len(paths)} images to {out}")
    return paths
