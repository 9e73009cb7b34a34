"""Shared test fixtures: tiny image folders and a tiny training configuration."""

from __future__ import annotations

import os
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
# Metric statistics caches go to a scratch folder, never the user's ~/.cache.
os.environ["ADA_CACHE_DIR"] = tempfile.mkdtemp(prefix="ada-test-cache-")

REPO = Path(__file__).resolve().parent.parent


def write_images(
    folder: Path, count: int, size: int | tuple[int, int] = 16, mode: str = "L", seed: int = 0
) -> list[Path]:
    """`count` smooth random images (blurred noise, so they compress and look like something)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(seed)
    w, h = (size, size) if isinstance(size, int) else size
    paths = []
    for i in range(count):
        channels = 3 if mode == "RGB" else 1
        base = rng.rand(max(h // 4, 1), max(w // 4, 1), channels)
        pixels = (base * 255).astype(np.uint8)
        img = Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels)
        img = img.resize((w, h), Image.Resampling.BILINEAR)
        path = folder / f"img{i:04d}.png"
        img.save(path)
        paths.append(path)
    return paths


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width x height pixels and holds none: what a decompression bomb looks like to a header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    write_images(folder, 24, 16)
    return folder


@pytest.fixture
def official_names(monkeypatch):
    """Stand-in modules under the official names, so that pickle writes those global names."""
    from tests._official_fixture import install_official_names

    return install_official_names(monkeypatch)


@pytest.fixture(scope="session")
def small_checkpoint(tmp_path_factory) -> Path:
    """A complete checkpoint of our format for a tiny 8 px network after one step: quick to load, copy
    and damage. Named as a snapshot, alone in its folder."""
    from ada.distributed import DistContext
    from ada.launch import resolve_config, split_dataset
    from ada.training import TickStats, Trainer

    folder = tmp_path_factory.mktemp("small-checkpoint")
    write_images(folder / "data", 8, 8)
    model = {"z_dim": 8, "w_dim": 8, "channel_base": 64, "channel_max": 16}
    cfg, dataset = resolve_config(
        "tiny", {"data": str(folder / "data"), "aug": {"mode": "noaug"}, "batch": 4, "model": model, "val": 0.0}
    )
    train_set, val_set = split_dataset(cfg, dataset)
    trainer = Trainer(cfg, train_set, val_set, DistContext(), log=lambda message: None)
    trainer.train_step(TickStats())  # Adam moments and counters that are not zero
    path = folder / "run" / "network-snapshot-000000.pt"
    path.parent.mkdir()
    trainer.save_snapshot(path)
    return path
