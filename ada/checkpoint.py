"""Our checkpoint format: one torch file of plain tensors, numbers, strings, lists and dicts.

It loads with `torch.load(weights_only=True)`, which never runs code from the file, so a
checkpoint from a stranger is safe to open. It holds everything needed to continue a run
exactly: G, D and G_ema (with their constructor arguments), both optimisers, the
augmentation p and controller state (and APA's, and the LeCam anchors, where the run uses them),
the training progress, RNG states and the resolved configuration.

A file that is not such a checkpoint, or one damaged on disk, is refused before any network is
built: its structure (keys, types, network arguments, tensor shapes, finite values) is checked
first, and the message names the file and the previous snapshot to use instead. A resume checks
everything it restores (`load_checkpoint`); the tools that only run the generator check only
G_kwargs and G_ema (`load_generator`), so a generator-only export serves them too.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from ada.checkpoint_checks import checkpoint_problem, generator_problem, optimizer_problem
from ada.discriminator import Discriminator
from ada.errors import UserError, one_line
from ada.files import atomic_write
from ada.networks import Generator

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


def snapshot_order(path: Path) -> tuple[int, int]:
    """Where a snapshot's name puts it in its run: whole kimg, then the images beyond it ('000004' was
    written before '000004_512'). The names of one run sort in training order (`snapshot_tag`)."""
    match = SNAPSHOT_PATTERN.match(path.name)
    if match is None:
        raise ValueError(f"{path.name} is not a snapshot name")
    return int(match[1]), int(match[2][1:]) if match[2] else -1


def recorded_nimg(path: Path) -> int | None:
    """The images a snapshot had trained on, read without loading its tensors (they are memory-mapped).

    None where it records no progress (a generator-only export named like a snapshot); the loader that
    reads it decides whether that is enough. A file that cannot be read at all is damaged.
    """
    _check_regular(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # any damage: a cut zip, a foreign file, an object that is not data
        raise damaged(path, f"cannot read the progress it recorded: {one_line(exc, 'sentence')}") from None
    progress = ckpt.get("progress") if isinstance(ckpt, dict) else None
    if not isinstance(progress, dict) or "cur_nimg" not in progress:
        return None
    try:
        return int(progress["cur_nimg"])
    except (TypeError, ValueError, OverflowError) as exc:
        raise damaged(path, f"cannot read the progress it recorded: {one_line(exc, 'sentence')}") from None


def _named_nimg(path: Path) -> int:
    """The images a snapshot's name says it had trained on, at least ('000004' is 4 kimg or a little more)."""
    kimg, beyond = snapshot_order(path)
    return kimg * 1000 + max(beyond, 0)


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write atomically: a crash mid-write leaves the previous snapshot as it was."""
    payload = {"format": FORMAT, "version": VERSION, **state}
    atomic_write(Path(path), lambda f: torch.save(payload, f))


def latest_snapshot(run_dir: Path) -> Path | None:
    """The snapshot in `run_dir` that had trained on the most images (by its recorded progress, or by its
    name where it records none; between equal ones, the later name). A snapshot that cannot be read
    is refused as damaged."""
    snaps = [p for p in run_dir.iterdir() if SNAPSHOT_PATTERN.match(p.name)]

    def newness(path: Path) -> tuple[int, tuple[int, int]]:
        nimg = recorded_nimg(path)
        return (_named_nimg(path) if nimg is None else nimg), snapshot_order(path)

    return max(snaps, key=newness) if snaps else None


def previous_snapshot(path: Path) -> Path | None:
    """The snapshot written before `path` in its run directory, if there is one (by name: a damaged
    file's recorded progress may be unreadable, and the names of a run sort in training order)."""
    if not SNAPSHOT_PATTERN.match(path.name):
        return None
    try:
        earlier = [p for p in path.parent.iterdir()
                   if SNAPSHOT_PATTERN.match(p.name) and snapshot_order(p) < snapshot_order(path)]
    except OSError:
        return None
    return max((p for p in earlier if p.is_file()), key=snapshot_order, default=None)


def _check_regular(path: Path) -> None:
    if not path.is_file():  # a FIFO would block its reader forever
        raise damaged(path, "not a regular file: a pipe, socket or device")


def damaged(path: Path, detail: str) -> UserError:
    """The error for a checkpoint that cannot be used: what is wrong, and which snapshot to use instead."""
    previous = previous_snapshot(path)
    hint = (
        f"use the previous snapshot {previous} (move the damaged file aside to resume the run directory)"
        if previous else "there is no earlier snapshot next to it"
    )
    return UserError(f"{path} is a damaged checkpoint ({detail}); {hint}")


def resolve_checkpoint_path(spec: str) -> Path:
    """A checkpoint file, or a run directory meaning its latest snapshot; a regular file either way."""
    if not spec.strip():
        raise UserError("the checkpoint path is empty; give a checkpoint, a run directory or an official pickle")
    path = Path(spec).expanduser()
    if path.is_dir():
        snap = latest_snapshot(path)
        if snap is None:
            raise UserError(f"{spec}: the run directory holds no network-snapshot-*.pt to resume from")
        path = snap
    elif not path.exists():
        raise UserError(f"{spec}: no such checkpoint file or run directory")
    _check_regular(path)
    return path


def is_our_checkpoint(path: Path) -> bool:
    """torch.save writes zip archives; official network pickles are plain pickles. A damaged (cut)
    zip is still ours: it starts like one, or carries our snapshot name."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"PK\x03\x04" or bool(SNAPSHOT_PATTERN.match(path.name))
    except OSError as exc:
        raise UserError(f"{path}: cannot read it ({exc.strerror})") from None


def _check_torch_archive(path: Path) -> None:
    """A zip that torch.save did not write (a dataset zip, say) is named as such, not by PyTorch's reader."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.namelist()
    except Exception:  # a cut or damaged zip, in any of many ways: torch.load reports it as damaged
        return
    if not any(name.endswith("/data.pkl") or name == "data.pkl" for name in members):
        raise UserError(
            f"{path} is a zip archive but not a checkpoint (a dataset zip?); give a network-snapshot-*.pt, "
            "a run directory or an official network pickle (.pkl)"
        )


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Our checkpoint with everything a resume restores, its structure checked (`checkpoint_problem`);
    never runs code from the file."""
    ckpt = _read_checkpoint(path, map_location)
    problem = checkpoint_problem(ckpt)
    if problem:
        raise damaged(path, problem)
    return ckpt


def load_generator_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Our checkpoint as the tools read it: only G_kwargs and G_ema are needed, and only they are checked
    (`generator_problem`), so a generator-only export loads and damage elsewhere does not matter."""
    ckpt = _read_checkpoint(path, map_location)
    problem = generator_problem(ckpt)
    if problem:
        raise damaged(path, problem)
    return ckpt


def _read_checkpoint(path: Path, map_location: str | torch.device) -> dict[str, Any]:
    """The dict a file of our format holds, unchecked beyond its format marker and version."""
    _check_torch_archive(path)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except OSError as exc:
        raise UserError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    except pickle.UnpicklingError as exc:
        refused = re.search(r"GLOBAL (\S+)", str(exc))
        if refused is None:
            raise damaged(path, one_line(exc, 'sentence')) from None
        raise UserError(
            f"refused to load {path}: it holds the Python object {refused.group(1)}, which a checkpoint "
            "never contains (nothing of it was run)"
        ) from None
    except Exception as exc:  # untrusted bytes fail in many ways: a cut zip, bad records, ...
        raise damaged(path, one_line(exc, 'sentence')) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise UserError(f"{path}: not an ada-gan checkpoint (no '{FORMAT}' marker)")
    if ckpt.get("version") != VERSION:
        raise UserError(f"{path}: checkpoint version {ckpt.get('version')} is not supported (expected {VERSION})")
    return ckpt


def check_optimizer_state(path: Path, saved: dict[str, Any], opt: torch.optim.Optimizer, what: str) -> None:
    """Refuse Adam state that does not fit `opt`'s parameters: loaded as it is, it would fail (or
    train on wrong moments) steps later, far from the file that caused it."""
    problem = optimizer_problem(saved, [group["params"] for group in opt.param_groups])
    if problem:
        raise damaged(path, f"{what}: {problem}")


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


def load_unconditional_generator(spec: str, device: torch.device | str, needs: str) -> Generator:
    """G_ema for a tool that draws no labels: a conditional network is refused, saying that `needs`
    ("videos work") only with unconditional ones."""
    G = load_generator(spec, device)
    if G.c_dim > 0:
        raise UserError(f"{spec}: the network is conditional; {needs} with unconditional networks")
    return G


def load_generator(spec: str, device: torch.device | str = "cpu") -> Generator:
    """G_ema from our checkpoint or from an official network pickle, ready for inference."""
    path = resolve_checkpoint_path(spec)
    if is_our_checkpoint(path):
        ckpt = load_generator_checkpoint(path)
        G = build_generator(ckpt["G_kwargs"], ckpt["G_ema"], str(path))
    else:
        from ada.official import load_official_pickle

        G = load_official_pickle(path).G_ema
    return G.eval().requires_grad_(False).to(device)

