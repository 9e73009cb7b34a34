"""`ada dataset`: convert a folder of arbitrary images into a training zip.

Each image is centre-cropped to a square and resized to the requested resolution, then
stored as `NNNNN/imgNNNNNNNN.png` (1000 per folder), the official dataset_tool layout.
A `dataset.json` in the source folder, keyed by the source file names, carries over with the
names rewritten.

The destination is never the source, never inside a source folder, and an existing file is
replaced only with `overwrite`; the zip is written whole or not at all.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from ada.checks import is_supported_resolution
from ada.data import ImageSource, convert_image, has_colour, load_labels, open_image
from ada.errors import UserError
from ada.files import atomic_write
from ada.progress import progress


def centre_crop_resize(img: Image.Image, resolution: int) -> Image.Image:
    side = min(img.width, img.height)
    left, top = (img.width - side) // 2, (img.height - side) // 2
    img = img.crop((left, top, left + side, top + side))
    return img.resize((resolution, resolution), Image.Resampling.LANCZOS)


def check_destination(source: Path, dest: Path, overwrite: bool) -> None:
    """Refuse a destination that would destroy the source, or an existing file, unless asked."""
    if dest.suffix.lower() != ".zip":
        raise UserError(f"--dest={dest} must end in .zip")
    src, out = source.resolve(), dest.resolve()
    if out == src:
        raise UserError(f"--dest={dest} is the source; write the zip to another file")
    if source.is_dir() and out.is_relative_to(src):
        raise UserError(f"--dest={dest} is inside the source folder {source}; write the zip outside it")
    if dest.exists() and not overwrite:
        raise UserError(f"--dest={dest} exists; give --overwrite to replace it, or choose another name")


def convert(source: str, dest: str, resolution: int, channels: int | None = None, overwrite: bool = False) -> Path:
    if not is_supported_resolution(resolution):
        raise UserError(f"--resolution={resolution} must be a power of two in 4..1024")
    src_path = Path(source).expanduser()
    if not src_path.exists():
        raise UserError(f"--source={source}: no such folder or zip")
    dest_path = Path(dest).expanduser()
    check_destination(src_path, dest_path, overwrite)
    src = ImageSource(src_path)
    if not src.names:
        raise UserError(f"--source={source}: no images found")
    images = [open_image(src.read(n), n) for n in src.names]
    if channels is None:
        channels = 3 if any(has_colour(img) for img in images) else 1
    labels = load_labels(src, src.names)
    out_names = [f"{i // 1000:05d}/img{i:08d}.png" for i in range(len(src.names))]

    def write(f):
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED) as zf:
            items = list(zip(src.names, out_names, images, strict=True))
            for name, out_name, img in progress(items, desc="convert", unit="img"):
                img = centre_crop_resize(convert_image(img, "RGB" if channels == 3 else "L", name), resolution)
                buf = io.BytesIO()
                img.save(buf, format="PNG")
                zf.writestr(out_name, buf.getvalue())
            pairs = None if labels is None else [[o, _json_label(v)] for o, v in zip(out_names, labels, strict=True)]
            meta = {"labels": pairs}
            zf.writestr("dataset.json", json.dumps(meta))

    atomic_write(dest_path, write)
    print(f"Wrote {len(out_names)} images ({resolution}x{resolution}, {channels} channels) to {dest_path}")
    return dest_path


def _json_label(label: np.ndarray | np.generic) -> int | list[float]:
    arr = np.asarray(label)
    return int(arr) if arr.ndim == 0 else arr.tolist()
