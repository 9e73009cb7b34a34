"""`ada dataset`: convert a folder of arbitrary images into a training zip.

Each image is centre-cropped to a square and resized to the requested resolution, then
stored as `NNNNN/imgNNNNNNNN.png` (1000 per folder), the official dataset_tool layout.
A `dataset.json` in the source folder, keyed by the source file names, carries over with the
names rewritten.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from ada.data import ImageSource, load_labels, open_image
from ada.errors import UserError
from ada.files import atomic_write
from ada.progress import progress


def centre_crop_resize(img: Image.Image, resolution: int) -> Image.Image:
    side = min(img.width, img.height)
    left, top = (img.width - side) // 2, (img.height - side) // 2
    img = img.crop((left, top, left + side, top + side))
    return img.resize((resolution, resolution), Image.Resampling.LANCZOS)


def convert(source: str, dest: str, resolution: int, channels: int | None = None) -> Path:
    if resolution < 4 or resolution > 1024 or resolution & (resolution - 1):
        raise UserError(f"--resolution={resolution} must be a power of two in 4..1024")
    src_path = Path(source).expanduser()
    if not src_path.exists():
        raise UserError(f"--source={source}: no such folder or zip")
    src = ImageSource(src_path)
    if not src.names:
        raise UserError(f"--source={source}: no images found")
    images = [open_image(src.read(n), n) for n in src.names]
    if channels is None:
        channels = 3 if any(img.mode not in ("1", "L", "LA", "I", "I;16", "F") for img in images) else 1
    labels = load_labels(src, src.names)
    out_names = [f"{i // 1000:05d}/img{i:08d}.png" for i in range(len(src.names))]
    dest_path = Path(dest)
    if dest_path.suffix.lower() != ".zip":
        raise UserError(f"--dest={dest} must end in .zip")

    def write(f):
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED) as zf:
            items = list(zip(src.names, out_names, images, strict=True))
            for name, out_name, img in progress(items, desc="convert", unit="img"):
                try:
                    img = centre_crop_resize(img.convert("RGB" if channels == 3 else "L"), resolution)
                except OSError as exc:
                    raise UserError(f"{name}: the image is corrupt ({exc}); remove or replace it") from None
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
