"""`ada video`: a looping interpolation video through W, a grid of cells, as the official gen_video.py makes.

The seeds are dealt out to the cells in order, each cell taking len(seeds) / (columns * rows)
consecutive seeds as its keyframes. Each cell moves through its keyframes' w along a periodic
cubic spline, --frames-per-seed frames from one keyframe to the next, and back from the last to
the first, so the video loops without a jump. Frame 0 shows every cell's first keyframe exactly.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import click
import numpy as np
import torch

from ada.checkpoint import load_unconditional_generator
from ada.distributed import default_device
from ada.errors import UserError
from ada.generate import check_truncation, parse_seeds, seed_to_z
from ada.images import tile, to_uint8
from ada.movie import check_fps, movie_path, write_movie
from ada.networks import Generator


def parse_grid(text: str) -> tuple[int, int]:
    """'4x2' -> (4 columns, 2 rows)."""
    m = re.fullmatch(r"\s*(\d+)\s*x\s*(\d+)\s*", text)
    if not m or int(m.group(1)) < 1 or int(m.group(2)) < 1:
        raise UserError(f"--grid={text}: give columns x rows, e.g. 4x2")
    return int(m.group(1)), int(m.group(2))


def keyframes(seeds: list[int], columns: int, rows: int) -> list[list[int]]:
    """The seeds of each cell, row by row: consecutive runs of len(seeds) / cells seeds."""
    cells = columns * rows
    if len(seeds) % cells:
        raise UserError(f"--seeds: {len(seeds)} seeds do not fill a {columns}x{rows} grid evenly; "
                        f"give a multiple of {cells}")
    per_cell = len(seeds) // cells
    return [seeds[i * per_cell:(i + 1) * per_cell] for i in range(cells)]


def looping_path(ws: np.ndarray) -> Callable[[float], np.ndarray]:
    """A periodic cubic spline through keyframes ws [K, ...] at t = 0, 1, ..., K - 1, back to ws[0] at t = K."""
    import scipy.interpolate  # here: the command line starts faster without it

    closed = np.concatenate([ws, ws[:1]])
    return scipy.interpolate.CubicSpline(np.arange(len(closed)), closed, axis=0, bc_type="periodic")


@torch.no_grad()
def interpolation_frames(
    G: Generator, cells: list[list[int]], columns: int, frames_per_seed: int, truncation_psi: float = 1.0,
    noise_mode: str = "const",
) -> Iterator[np.ndarray]:
    """The frames, uint8 HWC: len(cells[0]) * frames_per_seed of them."""
    device = next(G.parameters()).device
    paths = []
    for cell in cells:
        z = torch.cat([seed_to_z(seed, G.z_dim) for seed in cell]).to(device, torch.float32)
        ws = G.mapping(z, None, truncation_psi=truncation_psi)
        paths.append(looping_path(ws.cpu().double().numpy()))
    rows = len(cells) // columns
    for frame in range(len(cells[0]) * frames_per_seed):
        t = frame / frames_per_seed
        ws = torch.from_numpy(np.stack([path(t) for path in paths])).to(device, torch.float32)
        yield tile(to_uint8(G.synthesis(ws, noise_mode=noise_mode)), columns, rows)


def make_video(network: str, seeds: str, grid: str, frames_per_seed: int, truncation_psi: float, fps: float,
               out: str) -> Path:
    columns, rows = parse_grid(grid)
    cells = keyframes(parse_seeds(seeds), columns, rows)
    if frames_per_seed < 1:
        raise UserError(f"--frames-per-seed={frames_per_seed} must be at least 1")
    check_truncation(truncation_psi)
    check_fps(fps)
    path = movie_path(out)
    device = default_device()
    G = load_unconditional_generator(network, device, "videos work")
    count = write_movie(interpolation_frames(G, cells, columns, frames_per_seed, truncation_psi), path, fps)
    print(f"Wrote {path}: {count} frames, {columns}x{rows} cells of {len(cells[0])} keyframes each")
    return path


@click.command("video")
@click.option("--network", required=True, help="Checkpoint, run directory or official network pickle")
@click.option("--seeds", required=True, help="Keyframe seeds, e.g. 0-31, dealt to the cells in order",
              metavar="LIST")
@click.option("--grid", default="1x1", show_default=True, help="Cells: columns x rows")
@click.option("--frames-per-seed", type=int, default=60, show_default=True, help="Frames from keyframe to keyframe")
@click.option("--trunc", "truncation_psi", type=float, default=1.0, show_default=True, help="Truncation psi")
@click.option("--fps", type=float, default=60, show_default=True, help="Frames per second")
@click.option("--out", required=True, help="The video: .mp4 (needs imageio with ffmpeg) or .gif", metavar="FILE")
def video_command(**options: object) -> None:
    """Render a looping interpolation video through W."""
    make_video(**options)
