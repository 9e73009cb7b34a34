"""`ada augment`: real images as D sees them at a given p, to judge an augmentation pipeline before training.

One row per p (`--p 0,0.2,0.4,0.6,0.8`), the same --count real images in every row, each row
augmented with its own draw. The p = 0 row is the real images themselves. `--aug-extra` adds
kornia stages as `ada train --aug-extra` does.
"""

from __future__ import annotations

import re
from pathlib import Path

import click
import numpy as np
import torch

from ada.checks import check_seed
from ada.data import ImageDataset, open_dataset
from ada.errors import UserError
from ada.images import output_file, save_png, tile, to_uint8


def parse_probabilities(text: str) -> list[float]:
    """'0,0.2,0.6' -> [0.0, 0.2, 0.6], each in [0, 1]."""
    values = []
    for part in text.split(","):
        part = part.strip()
        if not re.fullmatch(r"\d*\.?\d+", part) or not 0 <= float(part) <= 1:
            raise UserError(f"--p: {part!r} is not a probability in [0, 1]")
        values.append(float(part))
    return values


def preview_grid(
    dataset: ImageDataset, pipe: torch.nn.Module, ps: list[float], count: int, seed: int = 0
) -> np.ndarray:
    """uint8 HWC: len(ps) rows of the same `count` images (chosen with `seed`), augmented at each p."""
    count = min(count, len(dataset))
    chosen = np.random.RandomState(seed).choice(len(dataset), count, replace=False)
    reals, _ = dataset.batch(sorted(chosen.tolist()))
    images = reals.to(torch.float32) / 127.5 - 1
    generator = torch.Generator().manual_seed(seed)
    rows = []
    with torch.no_grad():
        for p in ps:
            pipe.p = p
            rows.append(to_uint8(pipe(images, generator=generator)))
    return tile(np.concatenate(rows), count, len(ps))


def augment_preview(data: str, augpipe: str, p: str, out: str, count: int, seed: int,
                    aug_extra: str | None = None) -> Path:
    # Imported here: kornia slows the start of every command.
    from augment import PRESETS, AugmentPipe
    from augment.extra_stages import parse_extra

    ps = parse_probabilities(p)
    if augpipe not in PRESETS:
        raise UserError(f"--augpipe={augpipe} is not one of {', '.join(PRESETS)}")
    try:
        extra = parse_extra(aug_extra)
    except ValueError as exc:
        raise UserError(f"--aug-extra: {exc}") from None
    if count < 1:
        raise UserError(f"--count={count} must be at least 1")
    check_seed("--seed", seed)
    path = output_file(out, (".png",))
    dataset = open_dataset(data)
    if dataset.resolution < 8:
        raise UserError(f"the augmentation pipeline needs images of at least 8x8 (the data is "
                        f"{dataset.resolution}x{dataset.resolution})")
    save_png(preview_grid(dataset, AugmentPipe(augpipe, extra=extra), ps, count, seed), path)
    print(f"Wrote {path}: rows at p = {', '.join(f'{v:g}' for v in ps)}, {min(count, len(dataset))} images each")
    return path


@click.command("augment")
@click.option("--data", required=True, help="Image folder, dataset zip, or built-in name", metavar="PATH")
@click.option("--augpipe", default="bgc", show_default=True, help="Augmentation pipeline preset")
@click.option("--p", default="0.6", show_default=True, help="p, or several for one row each: 0,0.2,0.4",
              metavar="LIST")
@click.option("--aug-extra", help="Kornia stages after the pipeline, as for ada train: perspective:0.3,blur",
              metavar="LIST")
@click.option("--count", type=int, default=8, show_default=True, help="Images per row")
@click.option("--seed", type=int, default=0, show_default=True, help="Chooses the images and the draws")
@click.option("--out", required=True, help="The grid (.png)", metavar="FILE")
def augment_command(**options: object) -> None:
    """Preview the augmentations: real images as D sees them at p."""
    augment_preview(**options)
