"""`ada style-mixing`: the style-mixing figure of the StyleGAN papers, as the official style_mixing.py draws it.

The top row holds the images of the column seeds, the left column those of the row seeds. The cell
in row r and column c is row seed r's w with the layers in --styles taken from column seed c: with
the coarse layers (0-6 at 1024 px), a cell has the column's pose and shape and the row's colours
and fine detail.
"""

from __future__ import annotations

import re
from pathlib import Path

import click
import numpy as np
import torch

from ada.checkpoint import load_unconditional_generator
from ada.distributed import default_device
from ada.errors import UserError
from ada.generate import check_truncation, parse_seeds, seed_to_z
from ada.images import output_file, save_png, tile, to_uint8
from ada.networks import Generator


def parse_styles(text: str, num_ws: int) -> list[int]:
    """'0-6' or '0,2,4' -> the layer indices, each in 0..num_ws-1."""
    styles: list[int] = []
    for part in text.split(","):
        m = re.fullmatch(r"\s*(\d+)(?:-(\d+))?\s*", part)
        if not m:
            raise UserError(f"--styles: {part.strip()!r} is not a layer or a range like 0-6")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo or hi >= num_ws:
            raise UserError(f"--styles: {part.strip()} is outside the network's layers 0..{num_ws - 1}")
        styles.extend(range(lo, hi + 1))
    return sorted(set(styles))


def mix(row_w: torch.Tensor, col_w: torch.Tensor, styles: list[int]) -> torch.Tensor:
    """row_w [num_ws, w_dim] with the layers `styles` taken from col_w."""
    w = row_w.clone()
    w[styles] = col_w[styles]
    return w


@torch.no_grad()
def mixing_grid(
    G: Generator, row_seeds: list[int], col_seeds: list[int], styles: list[int], truncation_psi: float = 1.0,
    noise_mode: str = "const",
) -> np.ndarray:
    """The figure as uint8 HWC: (rows + 1) x (cols + 1) images, the top-left corner black."""
    device = next(G.parameters()).device
    seeds = sorted(set(row_seeds + col_seeds))
    z = torch.cat([seed_to_z(seed, G.z_dim) for seed in seeds]).to(device, torch.float32)
    ws = dict(zip(seeds, G.mapping(z, None, truncation_psi=truncation_psi), strict=True))

    def image(w: torch.Tensor) -> np.ndarray:
        return to_uint8(G.synthesis(w[None], noise_mode=noise_mode))[0]

    res, channels = G.img_resolution, G.img_channels
    cells = [np.zeros([res, res, channels], dtype=np.uint8)]
    cells += [image(ws[seed]) for seed in col_seeds]
    for row in row_seeds:
        cells.append(image(ws[row]))
        cells += [image(mix(ws[row], ws[col], styles)) for col in col_seeds]
    return tile(np.stack(cells), len(col_seeds) + 1, len(row_seeds) + 1)


def style_mixing(network: str, rows: str, cols: str, styles: str | None, truncation_psi: float, noise_mode: str,
                 out: str) -> Path:
    row_seeds, col_seeds = parse_seeds(rows), parse_seeds(cols)
    check_truncation(truncation_psi)
    path = output_file(out, (".png",))
    device = default_device()
    G = load_unconditional_generator(network, device, "style mixing works")
    if styles is None:  # the official default, on a small network as many of those layers as it has
        styles = f"0-{min(6, G.num_ws - 1)}"
    grid = mixing_grid(G, row_seeds, col_seeds, parse_styles(styles, G.num_ws), truncation_psi, noise_mode)
    save_png(grid, path)
    print(f"Wrote {path}: {len(row_seeds)} rows x {len(col_seeds)} columns, styles {styles} from the columns")
    return path


@click.command("style-mixing")
@click.option("--network", required=True, help="Checkpoint, run directory or official network pickle")
@click.option("--rows", required=True, help="Row seeds, e.g. 85,100,75", metavar="LIST")
@click.option("--cols", required=True, help="Column seeds, e.g. 55,821,1789", metavar="LIST")
@click.option("--styles", help="Layers taken from the column seeds [default: 0-6, or as many as the network has]",
              metavar="LIST")
@click.option("--trunc", "truncation_psi", type=float, default=1.0, show_default=True, help="Truncation psi")
@click.option("--noise-mode", type=click.Choice(["const", "random", "none"]), default="const", show_default=True)
@click.option("--out", required=True, help="The figure (.png)", metavar="FILE")
def style_mixing_command(**options: object) -> None:
    """Draw the style-mixing figure: column seeds' coarse styles on row seeds."""
    style_mixing(**options)
