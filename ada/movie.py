"""Frames to a movie file: mp4 through imageio's ffmpeg where it is installed, GIF through Pillow otherwise.

mp4 needs the optional extra `pip install 'ada-gan[video]'` (imageio with its ffmpeg binary). Without
it, an .mp4 asked for is written as a .gif beside it, with one line saying so, so a tool never
fails at its last step for want of an encoder.
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image

from ada.checks import check_finite
from ada.errors import UserError
from ada.files import atomic_write
from ada.images import output_file

SUFFIXES = (".mp4", ".gif")
# GIF delays are in hundredths of a second, and browsers play delays under 20 ms as 100 ms.
_GIF_MIN_DELAY_MS = 20
# The slowest frame rate: a frame every 100 s (a GIF stores at most 655.35 s per frame).
MIN_FPS = 0.01


def check_fps(fps: float) -> None:
    """--fps of every command that writes a movie."""
    check_finite("--fps", fps)
    if fps < MIN_FPS:
        raise UserError(f"--fps={fps:g} must be at least {MIN_FPS:g} (a frame every {1 / MIN_FPS:g} s)")


def ffmpeg_available() -> bool:
    """Whether imageio can encode mp4: imageio with the imageio-ffmpeg binary package."""
    if importlib.util.find_spec("imageio") is None or importlib.util.find_spec("imageio_ffmpeg") is None:
        return False
    import imageio_ffmpeg

    try:
        imageio_ffmpeg.get_ffmpeg_exe()
    except RuntimeError:
        return False
    return True


def movie_path(path: str | Path, option: str = "--out") -> Path:
    """The file that will be written for `path`: an .mp4 becomes a .gif when ffmpeg is missing."""
    path = output_file(path, SUFFIXES, option)
    if path.suffix.lower() == ".mp4" and not ffmpeg_available():
        gif = path.with_suffix(".gif")
        print(f"note: mp4 needs imageio with ffmpeg (pip install 'ada-gan[video]'); writing {gif} instead")
        return gif
    return path


def write_movie(frames: Iterable[np.ndarray], path: Path, fps: float) -> int:
    """Writes uint8 HWC frames (C = 1 or 3) to `path` (from `movie_path`) atomically; returns the frame count."""
    count = 0

    def counted() -> Iterable[np.ndarray]:
        nonlocal count
        for frame in frames:
            count += 1
            yield frame[:, :, 0] if frame.shape[2] == 1 else frame

    if path.suffix.lower() == ".mp4":
        atomic_write(path, lambda f: _write_mp4(counted(), f, fps))
    else:
        atomic_write(path, lambda f: _write_gif(counted(), f, fps))
    return count


def _write_mp4(frames: Iterable[np.ndarray], f: IO[bytes], fps: float) -> None:
    import imageio.v2 as imageio

    # ffmpeg writes to a file name, not to an open file: encode in a scratch folder, then copy.
    with tempfile.TemporaryDirectory() as scratch:
        encoded = Path(scratch) / "movie.mp4"
        # Frame sides are even (powers of two times the grid), as H.264 needs: no resizing to macro blocks.
        with imageio.get_writer(encoded, format="FFMPEG", mode="I", fps=fps, codec="libx264", quality=8,
                                macro_block_size=2) as writer:
            for frame in frames:
                writer.append_data(frame)
        with open(encoded, "rb") as source:
            shutil.copyfileobj(source, f)


def _write_gif(frames: Iterable[np.ndarray], f: IO[bytes], fps: float) -> None:
    images = [Image.fromarray(frame) for frame in frames]
    if not images:
        raise UserError("no frames to write")
    delay = max(_GIF_MIN_DELAY_MS, round(1000 / fps))
    images[0].save(f, format="GIF", save_all=True, append_images=images[1:], duration=delay, loop=0)
