"""`ada generate`: images from a trained network, one PNG per seed plus a grid."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import torch

from ada.checkpoint import load_generator
from ada.checks import MAX_SEED, check_finite
from ada.distributed import default_device
from ada.errors import UserError
from ada.files import read_regular_file
from ada.images import output_dir, save_png, tile, to_uint8

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


def check_truncation(truncation_psi: float) -> None:
    """--trunc of every command that draws from seeds: at nan or inf every image is black."""
    check_finite("--trunc", truncation_psi, " (1 means no truncation)")


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
    check_truncation(truncation_psi)
    device = default_device()
    G = load_generator(network, device)
    c = class_vector(G, class_idx)
    out = output_dir(outdir)
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
    where = f"--projected-w={path}"
    what = "an .npz file with an array 'w', as `ada project` writes"
    raw = read_regular_file(Path(path))
    try:
        loaded = np.load(io.BytesIO(raw), allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):  # a single .npy array
            raise UserError(f"{where}: a single array (.npy), not {what}")
        with loaded:
            ws = loaded["w"]
    except UserError:
        raise
    except Exception as exc:  # untrusted bytes fail in many ways: not a zip, bad CRC, a damaged array header, ...
        raise UserError(f"{where}: not {what} ({type(exc).__name__}: {exc})") from None
    if ws.ndim != 3 or ws.shape[1:] != (num_ws, w_dim):
        raise UserError(f"{where}: w has shape {tuple(ws.shape)}, but the network takes "
                        f"[N, {num_ws}, {w_dim}]; project with this network")
    if ws.dtype.kind not in "fiu":
        raise UserError(f"{where}: w holds {ws.dtype} values, not numbers; project the image again")
    if not np.isfinite(ws).all():  # it would render black images
        raise UserError(f"{where}: w holds NaN or infinite values; project the image again")
    return torch.from_numpy(ws.astype(np.float32))


@torch.no_grad()
def render_projected_w(network: str, projected_w: str, noise_mode: str, outdir: str) -> list[Path]:
    """`ada generate --projected-w`: one PNG per w of an `ada project` result, proj00.png, proj01.png, ..."""
    device = default_device()
    G = load_generator(network, device)
    ws = load_projected_w(projected_w, G.num_ws, G.w_dim).to(device)
    out = output_dir(outdir)
    paths = []
    for idx, w in enumerate(ws):
        path = out / f"proj{idx:02d}.png"
        save_png(to_uint8(G.synthesis(w[None], noise_mode=noise_mode))[0], path)
        paths.append(path)
    print(f"Wrote {len(paths)} images to {out}")
    return paths
