"""Training data: image folders and dataset zips, labels, checked and decoded (`ada.loader` feeds them to the loop).

A dataset is
- a folder of images, searched recursively (png, jpg, jpeg, webp, bmp),
- a zip of images in the official dataset_tool layout (`00000/img00000000.png`, ...), or
- the name of a built-in dataset (`ada.builtin`),
each with optional labels in `dataset.json`: {"labels": [["00000/img00000000.png", 6], ...]}.

Images must be square with a power-of-two side, all the same size (`ada dataset` converts
anything else). Grayscale data trains a one-channel model; if any image has colour, all are
read as RGB. Everything is checked when the dataset opens, so a bad file fails the run
before training starts, with its name in the message.

Data is decoded once and held as uint8 in memory when it fits `cache_bytes`; larger
datasets decode per batch in `--workers` loader processes.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from PIL import Image

from ada.checks import is_finite, is_supported_resolution
from ada.errors import UserError
from ada.files import check_regular_file, read_regular_file

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
# Images larger than this are refused before decoding: a decompression bomb, or not training data.
MAX_PIXELS = 128 * 1024 * 1024
# A zip member is read whole into memory, so its size is checked first: no image file we would
# decode is larger than its pixels uncompressed (RGBA) ...
MAX_MEMBER_BYTES = 4 * MAX_PIXELS
# ... and image files are compressed already: a large member that inflates more than this from
# its stored size is a zip bomb, not an image.
MAX_COMPRESSION_RATIO = 100
RATIO_CHECK_BYTES = 16 * 2**20
# Class ids index one-hot labels and embedding layers of this many rows: larger ids are a mistake.
MAX_CLASSES = 2**16
DEFAULT_CACHE_BYTES = 2 * 1024**3
# What PIL opens 16-bit greyscale PNGs as; its convert("L") clips these to 255 instead of scaling.
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def check_zip_member(name: str, archive: str) -> None:
    """Refuse members that would point outside the archive's own tree."""
    path = PurePosixPath(name)
    if name.startswith(("/", "\\")) or path.is_absolute() or ".." in path.parts or ":" in path.parts[0]:
        raise UserError(f"{archive}: refusing unsafe zip entry {name!r} (absolute path or '..')")


def check_zip_member_readable(info: zipfile.ZipInfo, archive: str) -> None:
    """Refuse, before reading, a member that would not fit in memory, could not be read, or is a zip bomb."""
    where = f"{archive}: member {info.filename}"
    if info.flag_bits & 0x1:
        raise UserError(f"{where} is encrypted; repack the zip without a password")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA):
        raise UserError(
            f"{where} uses compression method {info.compress_type}, which cannot be read; "
            "repack the zip with deflate or no compression"
        )
    if info.file_size > MAX_MEMBER_BYTES:
        raise UserError(
            f"{where} inflates to {info.file_size / 2**20:.0f} MB, more than any image may "
            f"({MAX_MEMBER_BYTES // 2**20} MB); refusing to read it"
        )
    if info.file_size > RATIO_CHECK_BYTES and info.file_size > MAX_COMPRESSION_RATIO * info.compress_size:
        raise UserError(
            f"{where} inflates {info.file_size // max(info.compress_size, 1)}-fold "
            f"({info.compress_size} to {info.file_size} bytes), as a zip bomb does; refusing to read it"
        )


def printable_path(path: Path) -> str:
    """A path for a message; bytes of a file name that are not UTF-8 shown as \\xNN escapes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def resolve_listed_file(path: Path) -> Path:
    """Where a listed file really is; a name that is not UTF-8 and a broken symlink are refused."""
    shown = printable_path(path)
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        raise UserError(f"{shown}: the file name is not valid UTF-8; rename it") from None
    try:
        return path.resolve(strict=True)
    except (OSError, RuntimeError):  # a missing target; a loop is RuntimeError before Python 3.13
        raise UserError(
            f"{shown}: a broken symbolic link (its target is missing, or it loops); remove or fix it"
        ) from None


def list_folder_images(root: Path) -> list[str]:
    """Image paths under `root`, relative, '/'-separated, sorted; never leaving `root` through a symlink.

    Only regular files: a FIFO named .png would block its reader forever.
    """
    root_real = root.resolve()
    names = []
    for dirpath, _dirnames, filenames in os.walk(root, followlinks=False):
        for filename in filenames:
            if not is_image_name(filename):
                continue
            path = Path(dirpath) / filename
            target = resolve_listed_file(path)
            if not target.is_relative_to(root_real):
                continue
            check_regular_file(target, printable_path(path))
            names.append(path.relative_to(root).as_posix())
    return sorted(names)


class ImageSource:
    """Reads raw image files by name from a folder or a zip."""

    def __init__(self, path: Path):
        self.path = path
        self.is_zip = path.is_file()
        self._zip: zipfile.ZipFile | None = None
        if self.is_zip:
            try:
                with zipfile.ZipFile(path) as zf:
                    infos = zf.infolist()
            except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
                raise UserError(f"{path}: not a readable zip archive ({exc})") from None
            members = [info.filename for info in infos]
            for name in members:
                check_zip_member(name, str(path))
            for info in infos:
                if is_image_name(info.filename) or info.filename == "dataset.json":
                    check_zip_member_readable(info, str(path))
            self.names = sorted(n for n in members if is_image_name(n))
            self._members = set(members)
        else:
            self.names = list_folder_images(path)

    def read(self, name: str) -> bytes:
        if not self.is_zip:
            return read_regular_file(self.path / name)
        try:
            if self._zip is None:
                self._zip = zipfile.ZipFile(self.path)
            return self._zip.read(name)
        except Exception as exc:  # untrusted bytes fail in many ways: bad CRC, bad deflate data, EOF, ...
            raise UserError(
                f"{self.path}: member {name} is damaged ({type(exc).__name__}: {exc}); repack the zip"
            ) from None

    def has(self, name: str) -> bool:
        return name in self._members if self.is_zip else (self.path / name).is_file()

    def __getstate__(self) -> dict:
        # Loader worker processes open their own zip handle.
        return {**self.__dict__, "_zip": None}


def open_image(data: bytes, name: str) -> Image.Image:
    """Open an encoded image, checking its size before any pixel is decoded."""
    too_big = f"{name}: the image exceeds the {MAX_PIXELS // 2**20} megapixel limit; refusing to decode it"
    try:
        with warnings.catch_warnings():
            # PIL warns from 89 megapixels and refuses from 179; our own limit below decides, in one line.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise UserError(too_big) from None
    except Exception as exc:
        raise UserError(f"{name}: not a readable image ({type(exc).__name__}); remove or replace it") from None
    if img.width * img.height > MAX_PIXELS:
        raise UserError(f"{too_big} ({img.width}x{img.height})")
    return img


def convert_image(img: Image.Image, mode: str, name: str) -> Image.Image:
    """The pixels of an opened image, decoded in `mode` ('L' or 'RGB'); 16 bits scale to 8."""
    try:
        if img.mode in SIXTEEN_BIT_MODES:
            sixteen = np.asarray(img, dtype=np.float64)
            img = Image.fromarray(np.clip(np.rint(sixteen / 257), 0, 255).astype(np.uint8), mode="L")
        img = img.convert(mode)
        img.load()
    except Exception as exc:
        raise UserError(f"{name}: the image is corrupt ({type(exc).__name__}: {exc}); remove or replace it") from None
    return img


def decode(data: bytes, name: str, rgb: bool) -> np.ndarray:
    """Encoded bytes -> uint8 array [C, H, W], C = 3 if `rgb` else 1."""
    arr = np.asarray(convert_image(open_image(data, name), "RGB" if rgb else "L", name), dtype=np.uint8)
    return arr.transpose(2, 0, 1) if arr.ndim == 3 else arr[None]


def has_colour(img: Image.Image) -> bool:
    """Whether PIL's mode holds colour; the greyscale modes, 16-bit and float ones too, do not."""
    return img.mode not in ("1", "L", "LA", "I", "I;16", "F")


def load_labels(source: ImageSource, names: list[str]) -> np.ndarray | None:
    """Labels from dataset.json, in the order of `names`: int class ids or float vectors; None if absent."""
    if not source.has("dataset.json"):
        return None
    where = f"{source.path}/dataset.json"
    try:
        meta = json.loads(source.read("dataset.json"))
    except (ValueError, RecursionError) as exc:
        raise UserError(f"{where}: not valid JSON ({exc})") from None
    entries = meta.get("labels") if isinstance(meta, dict) else None
    if entries is None:
        return None
    if not isinstance(entries, list) or not all(
        isinstance(e, list) and len(e) == 2 and isinstance(e[0], str) for e in entries
    ):
        raise UserError(f'{where}: "labels" must be a list of [file name, label] pairs')
    table = dict(entries)
    missing = [n for n in names if n not in table]
    if missing:
        raise UserError(f"{where}: no label for {missing[0]} ({len(missing)} images unlabelled)")
    return label_array([table[n] for n in names], where)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def label_array(labels: list, where: str) -> np.ndarray:
    """Labels as read from dataset.json -> class ids int64 [N], or float32 vectors [N, D].

    A label per image is a class id (a whole number; 2.0 is class 2, as the official loader casts
    it) or a list of numbers, the same length for every image. Anything else is refused.
    """
    if all(_is_number(v) for v in labels):
        for v in labels:
            if isinstance(v, float) and not v.is_integer():  # also nan and inf
                raise UserError(
                    f"{where}: class id {v!r} is not a whole number; give class ids 0, 1, 2, ... "
                    "(or a list of numbers per image for continuous labels)"
                )
            if not 0 <= v < MAX_CLASSES:
                raise UserError(f"{where}: class id {v!r} is outside 0..{MAX_CLASSES - 1}; number the classes from 0")
        return np.array([int(v) for v in labels], dtype=np.int64)
    if not all(isinstance(v, list) and all(_is_number(x) for x in v) for v in labels):
        raise UserError(
            f"{where}: each label must be a class id (a whole number) or a list of numbers, "
            "one kind for all images"
        )
    lengths = sorted({len(v) for v in labels})
    if len(lengths) > 1:
        raise UserError(f"{where}: label lists have different lengths ({lengths[0]} and {lengths[-1]}); "
                        "give every image a list of the same length")
    if not all(is_finite(x) for v in labels for x in v):
        raise UserError(f"{where}: labels hold NaN or infinite values")
    with np.errstate(over="ignore"):
        vectors = np.array(labels, dtype=np.float32).reshape(len(labels), -1)
    if not np.isfinite(vectors).all():
        raise UserError(f"{where}: labels hold values beyond the float32 range")
    return vectors


@dataclass
class DatasetInfo:
    name: str
    resolution: int
    channels: int
    c_dim: int
    num_images: int
    # Identifies the images (names, size, labels, pixels): resuming on the same fingerprint continues
    # the run, on another one it is a transfer.
    fingerprint: str = ""


class ImageDataset(torch.utils.data.Dataset):
    """Images (uint8 [C, H, W]) and labels (float [c_dim]) by index; index >= N is the mirror of index - N."""

    def __init__(
        self,
        source: ImageSource,
        names: list[str],
        rgb: bool,
        resolution: int,
        labels: np.ndarray | None,
        c_dim: int,
        mirror: bool,
        name: str,
        images: np.ndarray | None = None,
    ):
        self.source = source
        self.names = names
        self.rgb = rgb
        self.resolution = resolution
        self.labels = labels
        self.c_dim = c_dim
        self.mirror = mirror
        self.name = name
        self.images = images

    @property
    def channels(self) -> int:
        return 3 if self.rgb else 1

    @functools.cached_property
    def info(self) -> DatasetInfo:
        """Computed once: hashing every held pixel takes long on a large set, and runs read it at each snapshot.
        The fields it depends on are fixed when the dataset is made (`subset` makes another)."""
        digest = hashlib.sha256("\n".join(self.names).encode())
        digest.update(f"{self.resolution}/{self.channels}/{self.c_dim}".encode())
        if self.labels is not None:
            digest.update(np.ascontiguousarray(self.labels).tobytes())
        # The pixels, where they are in memory: the same file names can hold other images.
        if self.images is not None:
            digest.update(np.ascontiguousarray(self.images).tobytes())
        else:
            digest.update(self.name.encode())
        return DatasetInfo(
            self.name, self.resolution, self.channels, self.c_dim, len(self.names), digest.hexdigest()[:16]
        )

    def __len__(self) -> int:
        return len(self.names) * (2 if self.mirror else 1)

    def image(self, index: int) -> np.ndarray:
        i = index % len(self.names)
        if self.images is not None:
            img = self.images[i]
        else:
            img = decode(self.source.read(self.names[i]), self.names[i], self.rgb)
        return img[:, :, ::-1] if index >= len(self.names) else img

    def label(self, index: int) -> np.ndarray:
        i = index % len(self.names)
        if self.labels is None or self.c_dim == 0:
            return np.zeros([self.c_dim], dtype=np.float32)
        if self.labels.ndim == 1:
            onehot = np.zeros([self.c_dim], dtype=np.float32)
            onehot[self.labels[i]] = 1
            return onehot
        return self.labels[i]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(np.ascontiguousarray(self.image(index))), torch.from_numpy(self.label(index))

    def batch(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch of (uint8 images, float labels); held images are gathered without a per-image loop."""
        idx = np.asarray(indices)
        base = idx % len(self.names)
        if self.images is None:
            images = np.stack([self.image(i) for i in idx])
        else:
            images = self.images[base]
            flip = idx >= len(self.names)
            if flip.any():
                images[flip] = images[flip][..., ::-1]
        return torch.from_numpy(images), self.labels_of(indices)

    def labels_of(self, indices: list[int]) -> torch.Tensor:
        """Float labels [len(indices), c_dim] (one-hot for class ids), without touching any image."""
        base = np.asarray(indices, dtype=np.int64) % len(self.names)
        if self.labels is None or self.c_dim == 0:
            labels = np.zeros([len(base), self.c_dim], dtype=np.float32)
        elif self.labels.ndim == 1:  # one-hot rows: n * c_dim floats, never a c_dim x c_dim identity
            labels = np.zeros([len(base), self.c_dim], dtype=np.float32)
            labels[np.arange(len(base)), self.labels[base]] = 1
        else:
            labels = self.labels[base]
        return torch.from_numpy(labels)

    def subset(self, indices: list[int], name: str | None = None, mirror: bool | None = None) -> ImageDataset:
        """A dataset of some of these images (indices into the un-mirrored list), x-flipped as this one
        unless `mirror` says otherwise."""
        return ImageDataset(
            self.source, [self.names[i] for i in indices], self.rgb, self.resolution,
            None if self.labels is None else self.labels[indices], self.c_dim,
            self.mirror if mirror is None else mirror, name or self.name,
            None if self.images is None else self.images[indices],
        )

    def unmirrored(self) -> ImageDataset:
        """Every image once, without the x-flips (as metrics and r_v read the reals)."""
        return self.subset(list(range(len(self.names))), mirror=False) if self.mirror else self


def scan_images(source: ImageSource, display: str) -> tuple[bool, int]:
    """Check every image (readable, square, power of two, one size); return (rgb, resolution)."""
    if not source.names:
        raise UserError(f"{display}: no images found (looked for {', '.join(IMAGE_EXTENSIONS)})")
    rgb = False
    size = None
    for name in source.names:
        img = open_image(source.read(name), name)
        if img.width != img.height:
            raise UserError(
                f"{name}: image is {img.width}x{img.height}, not square; convert the folder with "
                "`ada dataset --source DIR --dest OUT.zip --resolution R`"
            )
        if size is None:
            size = img.width
        elif img.width != size:
            raise UserError(
                f"{name}: image is {img.width}x{img.width} but earlier images are {size}x{size}; "
                "all images must share one size (convert with `ada dataset --resolution R`)"
            )
        rgb = rgb or has_colour(img)
    if not is_supported_resolution(size):
        raise UserError(
            f"{display}: images are {size}x{size}; the side must be a power of two in 4..1024 "
            "(convert with `ada dataset --resolution R`)"
        )
    return rgb, size


def open_dataset(
    spec: str,
    cond: bool = False,
    mirror: bool = False,
    cache_bytes: int = DEFAULT_CACHE_BYTES,
) -> ImageDataset:
    """Open and check a dataset given as a folder, a zip or a built-in name."""
    from ada import builtin

    if builtin.is_builtin(spec):
        return builtin.open_builtin(spec, cond=cond, mirror=mirror)
    path = Path(spec).expanduser()
    if not path.exists():
        raise UserError(f"--data={spec}: no such file or folder (built-in datasets: {', '.join(builtin.NAMES)})")
    source = ImageSource(path)
    rgb, resolution = scan_images(source, spec)
    labels = load_labels(source, source.names)
    c_dim = 0
    if cond:
        if labels is None:
            raise UserError(f"--cond needs labels, but {spec} has no dataset.json with \"labels\"")
        c_dim = int(labels.max()) + 1 if labels.ndim == 1 else labels.shape[1]
        if c_dim == 0:
            raise UserError(f"--cond needs labels, but the labels in {spec}'s dataset.json are empty lists")
    channels = 3 if rgb else 1
    images = None
    if len(source.names) * channels * resolution**2 <= cache_bytes:
        images = np.stack([decode(source.read(n), n, rgb) for n in source.names])
    else:
        # Too big to hold: still decode everything once, so a corrupt file fails now, not at hour 30.
        for n in source.names:
            decode(source.read(n), n, rgb)
    name = path.stem if source.is_zip else path.resolve().name
    return ImageDataset(source, source.names, rgb, resolution, labels, c_dim, mirror, name, images)
