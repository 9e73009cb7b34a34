"""Our checkpoint format: one torch file of plain tensors, numbers, strings, lists and dicts.

It loads with `torch.load(weights_only=True)`, which never runs code from the file, so a
checkpoint from a stranger is safe to open. It holds everything needed to continue a run
exactly: G, D and G_ema (with their constructor arguments), both optimisers, the
augmentation p and controller state, the training progress, RNG states and the resolved
configuration.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from ada.errors import UserError
from ada.files import atomic_write
from ada.networks import Discriminator, Generator

FORMAT = "ada-gan-checkpoint"
VERSION = 1
SNAPSHOT_PATTERN = re.compile(r"network-snapshot-(\d+)(_\d{3})?\.pt$")


def snapshot_tag(run_dir: Path, nimg: int) -> str:
    """How the snapshot (and sample grid) at `nimg` images is named in `run_dir`.

    The official form, the whole kimg reached ('000004' for 4.032 kimg), unless a snapshot of this
    run already has it: then the images beyond it too ('000000_048' for 0.048 kimg), as with ticks
    shorter than 1 kimg. Later snapshots of a run always hold more images, so no name is reused and
    the names sort in training order.
    """
    official = f"{nimg // 1000:06d}"
    if not (run_dir / f"network-snapshot-{official}.pt").exists():
        return official
    return f"{official}_{nimg % 1000:03d}"


def recorded_nimg(path: Path) -> int:
    """The images a snapshot had trained on, read without loading its tensors (they are memory-mapped)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return int(ckpt["progress"]["cur_nimg"])
    except Exception as exc:  # any damage: a cut zip, a foreign file, a missing key
        raise UserError(
            f"{path}: cannot read the progress it recorded ({_first_line(exc)}); move it aside to resume "
            "from the snapshot before it"
        ) from None


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write atomically: a crash mid-write leaves the previous snapshot as it was."""
    payload = {"format": FORMAT, "version": VERSION, **state}
    atomic_write(Path(path), lambda f: torch.save(payload, f))


def latest_snapshot(run_dir: Path) -> Path | None:
    """The snapshot in `run_dir` that had trained on the most images (by its recorded progress)."""
    snaps = [p for p in run_dir.iterdir() if SNAPSHOT_PATTERN.match(p.name)]
    return max(snaps, key=recorded_nimg) if snaps else None


def resolve_checkpoint_path(spec: str) -> Path:
    """A checkpoint file, or a run directory meaning its latest snapshot."""
    path = Path(spec).expanduser()
    if path.is_dir():
        snap = latest_snapshot(path)
        if snap is None:
            raise UserError(f"{spec}: the run directory holds no network-snapshot-*.pt to resume from")
        return snap
    if not path.is_file():
        raise UserError(f"{spec}: no such checkpoint file or run directory")
    return path


def is_our_checkpoint(path: Path) -> bool:
    """torch.save writes zip archives; official network pickles are plain pickles."""
    return zipfile.is_zipfile(path)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _check_torch_archive(path: Path) -> None:
    """A zip that torch.save did not write (a dataset zip, say) is named as such, not by PyTorch's reader."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return  # torch.load reports what is wrong with it
    if not any(name.endswith("/data.pkl") or name == "data.pkl" for name in members):
        raise UserError(
            f"{path} is a zip archive but not a checkpoint (a dataset zip?); give a network-snapshot-*.pt, "
            "a run directory or an official network pickle (.pkl)"
        )


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    _check_torch_archive(path)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise UserError(f"{path}: not a readable checkpoint ({_first_line(exc)})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise UserError(f"{path}: not an ada-gan checkpoint (no '{FORMAT}' marker)")
    if ckpt.get("version") != VERSION:
        raise UserError(f"{path}: checkpoint version {ckpt.get('version')} is not supported (expected {VERSION})")
    return ckpt


def build_generator(kwargs: dict[str, Any], state: dict[str, torch.Tensor], source: str) -> Generator:
    G = Generator(**kwargs)
    load_state(G, state, source, "G")
    return G


def build_discriminator(kwargs: dict[str, Any], state: dict[str, torch.Tensor], source: str) -> Discriminator:
    D = Discriminator(**kwargs)
    load_state(D, state, source, "D")
    return D


# A mismatch means the run's model settings differ from those the network was trained with.
_ARCHITECTURE_HINT = "resume with the --cfg preset (model settings) it was trained with"


def load_state(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str, what: str) -> None:
    """Strict state loading with a one-line message on any name or shape mismatch."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise UserError(f"{source}: {what} does not match this architecture ({detail}); {_ARCHITECTURE_HINT}")
    for name, tensor in state.items():
        if own[name].shape != tensor.shape:
            raise UserError(
                f"{source}: {what}.{name} has shape {tuple(tensor.shape)}, expected {tuple(own[name].shape)}; "
                f"{_ARCHITECTURE_HINT}"
            )
    module.load_state_dict(state)


def load_generator(spec: str, device: torch.device | str = "cpu") -> Generator:
    """G_ema from our checkpoint or from an official network pickle, ready for inference."""
    path = resolve_checkpoint_path(spec)
    if is_our_checkpoint(path):
        ckpt = load_checkpoint(path)
        G = build_generator(ckpt["G_kwargs"], ckpt["G_ema"], str(path))
    else:
        from ada.official import load_official_pickle

        G = load_official_pickle(path).G_ema
    return G.eval().requires_grad_(False).to(device)

