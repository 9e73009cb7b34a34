"""Image grids and PNG files for samples."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ada.errors import UserError
from ada.files import atomic_write


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[-1, 1] float NCHW -> uint8 NHWC, rounded as the official generate.py does."""
    return (images.detach().float().permute(0, 2, 3, 1) * 127.5 + 128).clamp(0, 255).to(torch.uint8).cpu().numpy()


def grid_shape(resolution: int, available: int) -> tuple[int, int]:
    """Columns and rows of a sample grid: about 1280x720 pixels, at least 4x4 images when there are enough."""
    gw = int(np.clip(1280 // resolution, 4, 16))
    gh = int(np.clip(720 // resolution, 4, 9))
    return gw, max(1, min(gh, -(-available // gw)))


def tile(images: np.ndarray, gw: int, gh: int) -> np.ndarray:
    """uint8 NHWC -> one uint8 HWC image with the first gw*gh images row by row; empty cells black."""
    n, h, w, c = images.shape
    canvas = np.zeros([gh * h, gw * w, c], dtype=np.uint8)
    for i in range(min(n, gw * gh)):
        y, x = divmod(i, gw)
        canvas[y * h : (y + 1) * h, x * w : (x + 1) * w] = images[i]
    return canvas


def save_png(array: np.ndarray, path: Path) -> None:
    """uint8 HWC (C = 1 or 3) -> PNG, written atomically."""
    img = Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array, mode="L" if array.shape[2] == 1 else "RGB")
    atomic_write(Path(path), lambda f: img.save(f, format="PNG"))


def save_grid(images: torch.Tensor | np.ndarray, path: Path, gw: int, gh: int) -> None:
    """Float [-1, 1] NCHW tensor or uint8 NCHW array -> a gw x gh grid PNG."""
    if isinstance(images, torch.Tensor):
        array = to_uint8(images)
    else:
        array = np.asarray(images).transpose(0, 2, 3, 1)
    save_png(tile(array, gw, gh), path)


def side_by_side(left: np.ndarray, right: np.ndarray, resolution: int, gap: int = 8) -> np.ndarray:
    """Two uint8 HWC grids next to each other on a grey band, enlarged so that each image of
    `resolution` pixels shows at 64 pixels or more (small images are unreadable at their size)."""
    factor = max(1, 64 // resolution)
    height = max(left.shape[0], right.shape[0])
    band = np.full([height, gap, left.shape[2]], 128, dtype=np.uint8)
    padded = [np.pad(g, [(0, height - g.shape[0]), (0, 0), (0, 0)], constant_values=128) for g in (left, right)]
    both = np.concatenate([padded[0], band, padded[1]], axis=1)
    return both.repeat(factor, axis=0).repeat(factor, axis=1)


def output_dir(outdir: str | Path, option: str = "--outdir") -> Path:
    """The folder a tool writes into, made before any work."""
    out = Path(outdir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{option}={outdir}: cannot create it ({exc.strerror})") from None
    return out


def output_file(out: str | Path, suffixes: tuple[str, ...], option: str = "--out") -> Path:
    """The file a tool writes, checked before any work: a known suffix, and its folder made."""
    path = Path(out)
    if path.suffix.lower() not in suffixes:
        raise UserError(f"{option}={out}: write it as {' or '.join(suffixes)}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{option}={out}: cannot create its folder ({exc.strerror})") from None
    return path


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host-to-GPU copy that does not make the host wait for the GPU to finish its queue."""
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def to_float_images(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    return to_device(images, device).to(torch.float32) / 127.5 - 1
